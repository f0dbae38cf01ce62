"""Scoring sampled completions on rows packed without padding, the head applied only where a token is scored.

GRPO scores each batch as prompts left-padded to the longest and completions right-padded to the longest, and
TRL's fused head projects every position of that grid where Triton is missing (CPUs): at the tiny recipe's
shapes about 40% of the positions are padding and the prompt's positions are projected for nothing. Here the
real tokens of every row are laid end to end in one row whose positions restart at each sequence (document
masking keeps the sequences apart, as in packed SFT), and the head projects only the positions that predict a
completion token. The log-probabilities and entropies are those of the padded grid. PPO scores its right-padded
rollouts the same way (:func:`pack_rows`, :func:`packed_logits`).
"""

from dataclasses import dataclass

import torch
from trl.trainer.utils import selective_log_softmax_and_entropy


@dataclass
class PackedRows:
    """The real tokens of a padded (batch, width) grid laid end to end in one row."""

    input_ids: torch.Tensor  # (tokens,): the real tokens, row after row
    position_ids: torch.Tensor  # (tokens,): each token's position in its own sequence
    index: torch.Tensor  # (batch, width): where each real cell of the grid lands in the packed row
    bounds: torch.Tensor  # (batch + 1,) int32: where each sequence starts in the packed row, then its length

    def model_inputs(self) -> dict:
        """Keyword arguments that give a model the packed row: its tokens, the positions restarting at each
        sequence, the sequences' bounds, and no cache."""
        longest = int((self.bounds[1:] - self.bounds[:-1]).max())
        return {"input_ids": self.input_ids[None], "position_ids": self.position_ids[None],
                "cu_seq_lens_q": self.bounds, "cu_seq_lens_k": self.bounds, "max_length_q": longest,
                "max_length_k": longest, "use_cache": False}


def pack_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PackedRows:
    """Pack ``input_ids`` without the cells where ``attention_mask`` is 0 (padding on either side)."""
    real = attention_mask.bool()
    lengths = real.sum(-1, dtype=torch.int32)
    return PackedRows(input_ids=input_ids[real], position_ids=(real.cumsum(-1) - 1)[real],
                      index=real.flatten().cumsum(0).view_as(real) - 1,
                      bounds=torch.cat([lengths.new_zeros(1), lengths.cumsum(0, dtype=torch.int32)]))


def packed_logits(model, rows: PackedRows, predicting: torch.Tensor) -> torch.Tensor:
    """The logits at the packed row's ``predicting`` positions only, ``(len(predicting), vocab)``."""
    return model(**rows.model_inputs(), logits_to_keep=predicting).logits[0]


def without_suppressed(logits: torch.Tensor, suppressed: list[int] | None) -> torch.Tensor:
    """``logits`` with the ``suppressed`` token ids (vocabulary, last axis) at the dtype's lowest value: no
    probability, as when the sampler suppresses them, no gradient, and finite entropies."""
    if not suppressed:
        return logits
    return logits.index_fill(-1, torch.tensor(suppressed, device=logits.device), torch.finfo(logits.dtype).min)


@dataclass
class PackedCompletions:
    """A GRPO batch packed, and what to score in it."""

    rows: PackedRows
    predicting: torch.Tensor  # (scored,): index into the packed row of the logit that predicts each scored token
    scored: torch.Tensor  # (batch, logits_to_keep) bool: the completion cells that hold a token
    targets: torch.Tensor  # (scored,): the scored tokens


def pack_completions(input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int) -> PackedCompletions:
    """Pack ``input_ids`` into one row; the scored tokens are the real ones among the last ``logits_to_keep``
    columns, each predicted by the real token just before it."""
    real = attention_mask.bool()
    width = input_ids.size(1)
    scored = real[:, width - logits_to_keep:]
    predictors = slice(width - logits_to_keep - 1, width - 1)
    if not real[:, predictors][scored].all():
        raise ValueError("a scored completion token follows padding: prompts must be left-padded and completions "
                         "right-padded, with no gap between them")
    rows = pack_rows(input_ids, attention_mask)
    return PackedCompletions(rows=rows, predicting=rows.index[:, predictors][scored], scored=scored,
                             targets=input_ids[:, width - logits_to_keep:][scored])


def scored_logps_and_entropies(logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                               entropy_requires_grad: bool, suppressed: list[int] | None = None,
                               rows: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of ``targets`` and entropies (at ``temperature``) from ``logits`` (scored tokens, vocab),
    the ``suppressed`` token ids given no probability, as in sampling that suppresses them: the policy scored is
    the one that sampled, and their logits get no gradient. ``rows`` at a time, each chunk handed to TRL as one
    sequence (TRL's CPU path takes one log-sum-exp per leading index: per token, given a flat batch)."""
    logits = without_suppressed(logits.float() / temperature, suppressed)
    parts = [selective_log_softmax_and_entropy(chunk[None], wanted[None], entropy_requires_grad=entropy_requires_grad)
             for chunk, wanted in zip(logits.split(rows), targets.split(rows))]
    return tuple(torch.cat([part[0] for part in values]) for values in zip(*parts))


def on_grid(values: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """``values`` of the scored cells laid on the (batch, logits_to_keep) grid of ``scored``, zeros elsewhere."""
    return values.new_zeros(scored.shape).masked_scatter(scored, values)


def completion_logps_and_entropies(model, packed: PackedCompletions, temperature: float, entropy_requires_grad: bool,
                                   suppressed: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities and entropies of the scored tokens (:func:`scored_logps_and_entropies`), laid
    back on the (batch, logits_to_keep) grid with zeros elsewhere."""
    scores = scored_logps_and_entropies(packed_logits(model, packed.rows, packed.predicting), packed.targets,
                                        temperature, entropy_requires_grad, suppressed)
    return tuple(on_grid(values, packed.scored) for values in scores)
