"""Training rows from token shards: fixed windows, document-aware positions, a seeded order that is a
pure function of the step (so a resumed run reads exactly what an uninterrupted one would)."""

import math

import numpy as np
import torch

from ..data.shards import TokenShards


def document_positions(tokens: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Positions restarting at 0 after every EOS (rows of shape (batch, seq)), so packed documents
    do not attend to each other."""
    after_eos = torch.zeros_like(tokens, dtype=torch.bool)
    after_eos[:, 1:] = tokens[:, :-1] == eos_token_id
    index = torch.arange(tokens.shape[1]).expand_as(tokens)
    starts = torch.where(after_eos, index, torch.zeros_like(index))
    return index - torch.cummax(starts, dim=1).values


def windows(shards: TokenShards, seq_len: int) -> list[tuple[int, int]]:
    """(shard, start) of every non-overlapping window of ``seq_len + 1`` tokens."""
    return [(shard, start) for shard, array in enumerate(shards.arrays)
            for start in range(0, len(array) - seq_len - 1, seq_len)]


class WindowSampler:
    """Non-overlapping windows of ``seq_len + 1`` tokens over every shard, shuffled per epoch.

    Batch ``k`` of rank ``r`` is a deterministic function of (seed, k, r, world_size).
    """

    def __init__(self, shards: TokenShards, seq_len: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        self.shards, self.seq_len, self.batch_size = shards, seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.windows = windows(shards, seq_len)
        per_batch = batch_size * world_size
        if len(self.windows) < per_batch:
            raise ValueError(f"{shards.folder} ({shards.split}): {len(self.windows)} windows of {seq_len + 1} tokens, "
                             f"fewer than one global batch ({per_batch}); use more data or shorter rows")
        self.batches_per_epoch = len(self.windows) // per_batch
        self._epoch, self._order = None, None

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))
        return self._order

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        """The ``index``-th batch of this rank: ``input_ids``, ``position_ids`` and next-token ``labels``."""
        epoch, within = divmod(index, self.batches_per_epoch)
        order = self._epoch_order(epoch)
        first = (within * self.world_size + self.rank) * self.batch_size
        rows = [self._window(order[i]) for i in range(first, first + self.batch_size)]
        tokens = torch.from_numpy(np.stack(rows).astype(np.int64))
        inputs = tokens[:, :-1]
        return {"input_ids": inputs, "position_ids": document_positions(inputs, self.shards.meta["eos_token_id"]),
                "labels": tokens[:, 1:]}

    def _window(self, window: int) -> np.ndarray:
        shard, start = self.windows[window]
        return self.shards.arrays[shard][start:start + self.seq_len + 1]


def validation_batches(shards: TokenShards, seq_len: int, batch_size: int, max_batches: int, tokenizer):
    """The first windows of the validation split as fixed batches, each with the UTF-8 byte count of its
    targets (for bits per byte)."""
    starts = windows(shards, seq_len)
    n_batches = min(max_batches, math.floor(len(starts) / batch_size))
    if n_batches == 0:
        raise ValueError(f"{shards.folder} (val): too few tokens for one batch of {batch_size} x {seq_len + 1}")
    batches = []
    eos = shards.meta["eos_token_id"]
    for b in range(n_batches):
        rows = np.stack([shards.arrays[s][start:start + seq_len + 1]
                         for s, start in starts[b * batch_size:(b + 1) * batch_size]]).astype(np.int64)
        tokens = torch.from_numpy(rows)
        targets = tokens[:, 1:]
        n_bytes = sum(len(tokenizer.decode(row, skip_special_tokens=True).encode("utf-8")) for row in targets.tolist())
        batches.append({"input_ids": tokens[:, :-1], "position_ids": document_positions(tokens[:, :-1], eos),
                        "labels": targets, "bytes": n_bytes})
    return batches
