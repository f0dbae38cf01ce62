"""Drawing the next token by inverse-transform sampling inside ``model.generate``.

``generate(do_sample=True)`` draws with ``torch.multinomial``, which spends an exponential random number on every
vocabulary entry of every row (on a CPU, 7 ms a step for 64 rows of 4,096 tokens: a fifth of a small model's
decoding). One uniform number per row against the cumulative distribution draws from the same distribution at
a fraction of the cost. :func:`as_greedy_with_sampler` turns a sampling ``GenerationConfig`` into a greedy one
plus an :class:`InverseTransformSampler` that applies transformers' own warpers and makes the draw, so greedy
decoding emits the drawn token.
"""

import copy

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


def wide_dtype(device: torch.device) -> torch.dtype:
    """The dtype of :func:`draw`'s cumulative sums and uniform numbers: float64, so that over a large vocabulary
    no token of small probability is lost to rounding, where the device has it (Apple's MPS has not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def draw(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs`` (batch, vocab; unnormalized is fine): the first index whose cumulative
    probability exceeds the row's ``uniform`` number in [0, 1) times the row's total. A token of probability 0 is
    never drawn."""
    cdf = probs.to(wide_dtype(probs.device)).cumsum(-1)
    drawn = torch.searchsorted(cdf, (uniform.to(cdf) * cdf[:, -1])[:, None], side="right").squeeze(-1)
    return drawn.clamp(max=probs.shape[-1] - 1)


class InverseTransformSampler(LogitsProcessor):
    """The last logits processor of a greedy ``generate``: warps the scores, draws one token per row from their
    softmax with :func:`draw` (uniform numbers from the global random stream), and returns scores that are -inf except
    at the drawn token, which holds its log-probability under the warped distribution. So greedy decoding emits
    the draw, and ``output_scores`` records each drawn token's log-probability (read it with ``gather``, not
    ``log_softmax``)."""

    def __init__(self, warpers: LogitsProcessorList):
        self.warpers = warpers

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        log_probs = torch.log_softmax(self.warpers(input_ids, scores).float(), -1)
        uniform = torch.rand(len(scores), device=scores.device, dtype=wide_dtype(scores.device))
        drawn = draw(log_probs.exp(), uniform)[:, None]
        return torch.full_like(scores, float("-inf")).scatter_(1, drawn, log_probs.gather(1, drawn).to(scores.dtype))


def _warpers(config: GenerationConfig) -> LogitsProcessorList | None:
    """transformers' warpers for ``config``'s sampling settings, in ``generate``'s order; None where it asks for
    one not mapped here (typical, epsilon, eta, top-h)."""
    unmapped = ((config.typical_p is not None and config.typical_p < 1)
                or (config.epsilon_cutoff is not None and 0 < config.epsilon_cutoff < 1)
                or (config.eta_cutoff is not None and 0 < config.eta_cutoff < 1)
                or getattr(config, "top_h", None) is not None)
    if unmapped:
        return None
    warpers = LogitsProcessorList()
    if config.temperature is not None and config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k:
        warpers.append(TopKLogitsWarper(config.top_k))
    if config.top_p is not None and config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(config.top_p))
    if config.min_p:
        warpers.append(MinPLogitsWarper(config.min_p))
    return warpers


def as_greedy_with_sampler(config: GenerationConfig) -> tuple[GenerationConfig, LogitsProcessorList]:
    """``config`` as greedy decoding plus the processor that samples as ``config`` asks (pass it to ``generate``
    as ``logits_processor``, after any other). A config that does not sample one sequence per row with the
    warpers :func:`_warpers` maps (beam search, several return sequences, typical / epsilon / eta / top-h) comes
    back unchanged with no processor."""
    warpers = _warpers(config) if config.do_sample else None
    if warpers is None or (config.num_beams or 1) > 1 or (config.num_return_sequences or 1) > 1:
        return config, LogitsProcessorList()
    greedy = copy.deepcopy(config)
    greedy.do_sample = False
    greedy.temperature = greedy.top_k = greedy.top_p = greedy.min_p = None
    return greedy, LogitsProcessorList([InverseTransformSampler(warpers)])


__all__ = ["InverseTransformSampler", "as_greedy_with_sampler", "draw", "wide_dtype"]
