"""Scoring GRPO's completions with each distinct prompt run through the model once.

GRPO samples ``num_generations`` completions of every prompt. Scored as separate sequences (TRL's padded grid, or
chatforge's packed rows), each prompt runs through the model once per completion: at the tiny recipe's shapes (16
completions of about 28 tokens after a prompt of about 40) most of the tokens run are a prompt again. Here each
distinct prompt of the batch runs once, its keys and values kept in a cache with their autograd history; the
cache is repeated to one row per completion and the completions run after it, attending to their prompt through
it. Every completion's gradient reaches its prompt's tokens through the shared keys and values, so the
log-probabilities, entropies and gradients are those of each sequence scored whole. Sampling the completions
starts the same way (:func:`prefilled_cache`): each distinct prompt but its last token runs once, and ``generate``
continues every row from the repeated cache.
"""

from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class SharedPrompts:
    """Which rows of a GRPO batch (prompts left-padded, completions right-padded) continue the same prompt."""

    distinct: torch.Tensor  # (prompts,): a row holding each distinct prompt
    of_row: torch.Tensor  # (batch,): which of ``distinct`` each row continues

    def cells(self, prompt_width: int, completion_width: int) -> int:
        """Positions the model runs: each distinct prompt at the prompts' width, each completion at the
        completions' width."""
        return len(self.distinct) * prompt_width + len(self.of_row) * completion_width


def find_shared_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        logits_to_keep: int = 0) -> SharedPrompts:
    """The distinct prompts of ``input_ids``: the columns before the last ``logits_to_keep``, padding included (a
    prompt's padding is the same wherever it appears, since every prompt is padded to the same width)."""
    width = input_ids.size(1) - logits_to_keep
    prompts = torch.cat([input_ids[:, :width] * attention_mask[:, :width], attention_mask[:, :width]], dim=1)
    _, of_row = torch.unique(prompts, dim=0, return_inverse=True)
    rows = torch.arange(len(of_row), device=of_row.device)
    distinct = torch.empty(int(of_row.max()) + 1, dtype=torch.long, device=of_row.device)
    return SharedPrompts(distinct=distinct.scatter_(0, of_row.flip(0), rows.flip(0)), of_row=of_row)


def _prompt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions of left-padded prompts: from 0 at each first real token (padding's are never attended to)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def prefilled_cache(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> DynamicCache | None:
    """For ``model.generate(input_ids, attention_mask, cache=...)`` of left-padded prompts: the keys and values of
    every row's prompt but its last token, each distinct prompt run once and repeated to its rows (``generate``
    then runs the last token of every row and samples on). None where no prompt repeats."""
    shared = find_shared_prompts(input_ids, attention_mask)
    if len(shared.distinct) == len(input_ids) or input_ids.size(1) < 2:
        return None
    mask = attention_mask[shared.distinct, :-1]
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=input_ids[shared.distinct, :-1], attention_mask=mask, position_ids=_prompt_positions(mask),
              cache=cache, use_cache=True, logits_to_keep=1)
    cache.batch_select_indices(shared.of_row)
    return cache


def completion_logits(model, config, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                      shared: SharedPrompts) -> torch.Tensor:
    """The logits that predict each cell of the completions' grid, ``(batch, logits_to_keep, vocab)``: the first
    from the last position of the row's prompt, run once per distinct prompt; the others from the completion run
    after its prompt's cached keys and values. ``model`` is a transformers causal LM (possibly wrapped) that takes
    a ``cache`` and ``logits_to_keep``; ``config`` its configuration (the cache's layer layout)."""
    width = input_ids.size(1) - logits_to_keep
    prompt_mask = attention_mask[shared.distinct, :width]
    cache = DynamicCache(config=config)
    prompts = model(input_ids=input_ids[shared.distinct, :width], attention_mask=prompt_mask,
                    position_ids=_prompt_positions(prompt_mask), cache=cache, use_cache=True,
                    logits_to_keep=1)
    first = prompts.logits[shared.of_row]
    if logits_to_keep == 1:
        return first
    cache.batch_select_indices(shared.of_row)
    prompt_lengths = attention_mask[:, :width].sum(-1, keepdim=True)
    predicting = torch.arange(logits_to_keep - 1, device=input_ids.device)
    completions = model(input_ids=input_ids[:, width:], attention_mask=attention_mask,
                        position_ids=prompt_lengths + torch.arange(logits_to_keep, device=input_ids.device),
                        cache=cache, use_cache=True, logits_to_keep=predicting)
    return torch.cat([first, completions.logits], dim=1)


__all__ = ["SharedPrompts", "completion_logits", "find_shared_prompts", "prefilled_cache"]
