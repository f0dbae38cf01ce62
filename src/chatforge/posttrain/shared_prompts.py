"""Scoring GRPO's completions with each distinct prompt run through the model once.

GRPO samples ``num_generations`` completions of every prompt. Scored as separate sequences (TRL's padded grid, or
chatforge's packed rows), each prompt runs through the model once per completion: at the tiny recipe's shapes (16
completions of about 28 tokens after a prompt of about 40) most of the tokens run are a prompt again. Here each
distinct prompt of the batch runs once, its keys and values kept in a cache with their autograd history; the
cache is repeated to one row per completion and the completions run after it, attending to their prompt through
it. Every completion's gradient reaches its prompt's tokens through the shared keys and values, so the
log-probabilities, entropies and gradients are those of each sequence scored whole.
"""

import torch

from ..inference.prompt_cache import SharedPrompts, run_prompts_once


def completion_logits(model, config, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                      shared: SharedPrompts) -> torch.Tensor:
    """The logits that predict each cell of the completions' grid, ``(batch, logits_to_keep, vocab)``: the first
    from the last position of the row's prompt, run once per distinct prompt; the others from the completion run
    after its prompt's cached keys and values. ``model`` is a transformers causal LM (possibly wrapped) that takes
    a ``cache`` and ``logits_to_keep``; ``config`` its configuration (the cache's layer layout)."""
    width = input_ids.size(1) - logits_to_keep
    first, cache = run_prompts_once(model, config, input_ids[:, :width], attention_mask[:, :width], shared)
    if logits_to_keep == 1:
        return first
    prompt_lengths = attention_mask[:, :width].sum(-1, keepdim=True)
    predicting = torch.arange(logits_to_keep - 1, device=input_ids.device)
    completions = model(input_ids=input_ids[:, width:], attention_mask=attention_mask,
                        position_ids=prompt_lengths + torch.arange(logits_to_keep, device=input_ids.device),
                        cache=cache, use_cache=True, logits_to_keep=predicting)
    return torch.cat([first, completions.logits], dim=1)


__all__ = ["completion_logits"]
