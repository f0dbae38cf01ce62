"""Sampling the next token of many sequences at once, each with its own settings and random stream."""

import torch

from .engine import SamplingParams
from .inverse_transform import draw, wide_dtype


def truncate(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """One row of (temperature-scaled) logits with the tokens outside ``top_k`` / ``top_p`` set to -inf."""
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1:
        ordered, order = torch.sort(logits, descending=True)
        probs = torch.softmax(ordered, -1)
        beyond = probs.cumsum(-1) - probs >= params.top_p  # keeps the token that crosses top_p
        logits = logits.scatter(0, order[beyond], float("-inf"))
    return logits


def sample_tokens(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]) -> list[int]:
    """One token per row of ``logits``: the argmax at temperature 0; else a draw from the row's softmax at its
    temperature (truncated as its ``top_k`` / ``top_p`` ask), by inverse-transform sampling with one uniform
    number from the row's own generator (so a seed fixes a row's draws whatever else is in the batch)."""
    temperatures = torch.tensor([p.temperature for p in params], device=logits.device, dtype=logits.dtype)
    scaled = logits / temperatures.clamp(min=1e-5)[:, None]
    for row, p in enumerate(params):
        if p.temperature > 0 and (p.top_k or (p.top_p is not None and p.top_p < 1)):
            scaled[row] = truncate(scaled[row], p)
    uniform = torch.stack([torch.rand((), generator=g, device=g.device, dtype=wide_dtype(g.device))
                           for g in generators])
    tokens = torch.where(temperatures == 0, logits.argmax(-1), draw(torch.softmax(scaled, -1), uniform))
    return tokens.tolist()


__all__ = ["sample_tokens", "truncate"]
