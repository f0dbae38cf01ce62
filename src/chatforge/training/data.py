"""Training rows from token shards: fixed windows, document-aware positions, a seeded order that is a
pure function of the step (so a resumed run reads exactly what an uninterrupted one would)."""

import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..data.shards import TokenShards
from ..errors import InvalidValue


def document_positions(tokens: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Positions restarting at 0 after every EOS (rows of shape (batch, seq)), so packed documents
    do not attend to each other."""
    after_eos = torch.zeros_like(tokens, dtype=torch.bool)
    after_eos[:, 1:] = tokens[:, :-1] == eos_token_id
    index = torch.arange(tokens.shape[1]).expand_as(tokens)
    starts = torch.where(after_eos, index, torch.zeros_like(index))
    return index - torch.cummax(starts, dim=1).values


def _window_starts(tokens: int, seq_len: int) -> range:
    return range(0, tokens - seq_len - 1, seq_len)


def windows(shards: TokenShards, seq_len: int) -> list[tuple[int, int]]:
    """(shard, start) of every non-overlapping window of ``seq_len + 1`` tokens."""
    return [(shard, start) for shard, array in enumerate(shards.arrays)
            for start in _window_starts(len(array), seq_len)]


def window_count(shard_tokens: Iterable[int], seq_len: int) -> int:
    """How many windows :func:`windows` cuts from shards holding ``shard_tokens`` tokens each."""
    return sum(len(_window_starts(tokens, seq_len)) for tokens in shard_tokens)


def rows_to_batch(rows: list[np.ndarray], eos_token_id: int) -> dict[str, torch.Tensor]:
    """Windows of ``seq_len + 1`` tokens -> ``input_ids``, document-aware ``position_ids``, next-token ``labels``."""
    tokens = torch.from_numpy(np.stack(rows).astype(np.int64))
    inputs = tokens[:, :-1]
    return {"input_ids": inputs, "position_ids": document_positions(inputs, eos_token_id), "labels": tokens[:, 1:]}


def with_byte_counts(batches: list[dict], tokenizer) -> list[dict]:
    """Add to each batch the UTF-8 bytes its targets stand for (for bits per byte)."""
    for batch in batches:
        batch["bytes"] = sum(len(tokenizer.decode(row, skip_special_tokens=True).encode("utf-8"))
                             for row in batch["labels"].tolist())
    return batches


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
            raise InvalidValue(f"{shards.folder} ({shards.split}): {len(self.windows)} windows of {seq_len + 1} "
                               f"tokens, fewer than one global batch ({per_batch}); use more data or shorter rows")
        self.batches_per_epoch = len(self.windows) // per_batch
        self._epoch, self._order = None, None

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))
        return self._order

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        """The ``index``-th batch of this rank."""
        epoch, within = divmod(index, self.batches_per_epoch)
        order = self._epoch_order(epoch)
        first = (within * self.world_size + self.rank) * self.batch_size
        rows = [self._window(order[i]) for i in range(first, first + self.batch_size)]
        return rows_to_batch(rows, self.shards.meta["eos_token_id"])

    def _window(self, window: int) -> np.ndarray:
        shard, start = self.windows[window]
        return self.shards.arrays[shard][start:start + self.seq_len + 1]


def split_batches(config, processes: int, shard_tokens: dict[str, list[int]], where: str) -> dict[str, int]:
    """The batches each split of ``shard_tokens`` (split -> tokens per shard) gives a pretraining ``config`` run on
    ``processes`` processes: train batches per epoch, validation batches per evaluation. Raises InvalidValue,
    naming ``where`` (the shards, or the plan that makes them), where a split gives none."""
    seq_len, batch_size = config.max_seq_length, config.per_device_train_batch_size
    batches = {}
    if "train" in shard_tokens:
        windows_in = window_count(shard_tokens["train"], seq_len)
        batches["train"] = windows_in // (batch_size * processes)
        if batches["train"] == 0:
            raise InvalidValue(f"{where} (train): {windows_in} windows of {seq_len + 1} tokens, fewer than one "
                               f"global batch of {batch_size} rows x {processes} processes; use more data, shorter "
                               "rows or a smaller per_device_train_batch_size")
    if "val" in shard_tokens:
        batches["val"] = min(config.eval_batches, window_count(shard_tokens["val"], seq_len) // batch_size)
        if batches["val"] == 0:
            raise InvalidValue(f"{where} (val): {sum(shard_tokens['val']):,} tokens, too few for one evaluation "
                               f"batch of {batch_size} x {seq_len + 1} (eval_batches={config.eval_batches} take "
                               f"{config.eval_batches * batch_size * seq_len + 1:,}); hold out more validation text")
    return batches


def validation_batches(shards: TokenShards, seq_len: int, batch_size: int, max_batches: int, tokenizer):
    """The first windows of the validation split as fixed batches, with byte counts for bits per byte."""
    starts = windows(shards, seq_len)
    n_batches = min(max_batches, math.floor(len(starts) / batch_size))
    if n_batches == 0:
        raise InvalidValue(f"{shards.folder} (val): too few tokens for one batch of {batch_size} x {seq_len + 1}")
    eos = shards.meta["eos_token_id"]
    batches = [rows_to_batch([shards.arrays[s][start:start + seq_len + 1]
                              for s, start in starts[b * batch_size:(b + 1) * batch_size]], eos)
               for b in range(n_batches)]
    return with_byte_counts(batches, tokenizer)


class StreamingWindows:
    """Windows packed on the fly from a text dataset (a Hub dataset streamed, or local files): documents are
    tokenized in order with EOS after each and cut into windows of ``seq_len + 1`` tokens.

    The first ``holdout_batches`` batches of windows are held out for validation; training batch ``k`` of rank
    ``r`` is the ``k * world_size + r``-th batch after them. The stream is read in order, so a resumed run
    re-reads (and skips) what was consumed; every rank reads the whole stream and keeps its own windows.
    """

    def __init__(self, sources: list[str], tokenizer, seq_len: int, batch_size: int, holdout_batches: int,
                 text_field: str = "text", rank: int = 0, world_size: int = 1):
        if tokenizer.eos_token_id is None:
            raise InvalidValue("the tokenizer has no EOS token to separate streamed documents")
        self.sources, self.tokenizer, self.text_field = sources, tokenizer, text_field
        self.seq_len, self.batch_size, self.holdout = seq_len, batch_size, holdout_batches
        self.rank, self.world_size = rank, world_size
        self._stream, self._next_batch = None, 0

    def _window_stream(self):
        from ..data.text_sources import iter_documents

        buffer: list[int] = []
        for text in iter_documents(self.sources, self.text_field):
            buffer.extend(self.tokenizer.encode(text, add_special_tokens=False, verbose=False))
            buffer.append(self.tokenizer.eos_token_id)
            while len(buffer) >= self.seq_len + 1:
                yield np.asarray(buffer[:self.seq_len + 1])
                del buffer[:self.seq_len]

    def _stream_batch(self, global_index: int) -> dict[str, torch.Tensor]:
        if self._stream is None or global_index < self._next_batch:
            self._stream, self._next_batch = self._window_stream(), 0
        while True:
            rows = [next(self._stream, None) for _ in range(self.batch_size)]
            if rows[-1] is None:
                raise InvalidValue(f"{self.sources}: the stream ended after {self._next_batch} batches")
            self._next_batch += 1
            if self._next_batch - 1 == global_index:
                return rows_to_batch(rows, self.tokenizer.eos_token_id)

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        return self._stream_batch(self.holdout + index * self.world_size + self.rank)

    def validation_batches(self) -> list[dict]:
        batches = [self._stream_batch(index) for index in range(self.holdout)]
        self._stream = None  # training starts its own pass after the held-out windows
        return with_byte_counts(batches, self.tokenizer)


class BatchPrefetcher:
    """A batch source (``batch(index)``) whose next batch is built on a background thread while the accelerator
    computes, in page-locked memory when ``pin`` (so that copying it to a GPU does not block). Batches are taken
    in order of index, as the training loop takes them."""

    def __init__(self, source, pin: bool):
        self.source, self.pin = source, pin
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches")
        self._ahead = None

    def _build(self, index: int) -> dict[str, torch.Tensor]:
        batch = self.source.batch(index)
        return {key: value.pin_memory() for key, value in batch.items()} if self.pin else batch

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        ahead, self._ahead = self._ahead, None
        batch = ahead[1].result() if ahead is not None and ahead[0] == index else self._build(index)
        self._ahead = (index + 1, self._pool.submit(self._build, index + 1))
        return batch
