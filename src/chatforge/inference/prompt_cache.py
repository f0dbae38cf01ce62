"""Running each distinct prompt of a batch once.

Sampling several continuations of a prompt (GRPO's generations, pass@k, the knowledge probe's samples) batches the
prompt once per continuation, and ``generate`` runs every row's prompt through the model. :func:`prefilled_cache`
runs each distinct prompt but its last token once and repeats its keys and values to its rows: ``generate`` then
runs only every row's last prompt token before sampling on, and decodes what it would have decoded.
"""

from dataclasses import dataclass

import torch
from transformers import DynamicCache, GenerationConfig

from .growing_cache import fits_generation, growing


@dataclass
class SharedPrompts:
    """Which rows of a batch of left-padded prompts (and right-padded continuations) hold the same prompt."""

    distinct: torch.Tensor  # (prompts,): a row holding each distinct prompt
    of_row: torch.Tensor  # (batch,): which of ``distinct`` each row holds

    def cells(self, prompt_width: int, continuation_width: int) -> int:
        """Positions a model runs for each distinct prompt once and each row's continuation, at their widths."""
        return len(self.distinct) * prompt_width + len(self.of_row) * continuation_width


def find_shared_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        continuation_width: int = 0) -> SharedPrompts:
    """The distinct prompts of ``input_ids``: the columns before the last ``continuation_width``, padding included
    (a prompt's padding is the same wherever it appears, since every prompt is padded to the same width)."""
    width = input_ids.size(1) - continuation_width
    prompts = torch.cat([input_ids[:, :width] * attention_mask[:, :width], attention_mask[:, :width]], dim=1)
    _, of_row = torch.unique(prompts, dim=0, return_inverse=True)
    rows = torch.arange(len(of_row), device=of_row.device)
    distinct = torch.empty(int(of_row.max()) + 1, dtype=torch.long, device=of_row.device)
    return SharedPrompts(distinct=distinct.scatter_(0, of_row.flip(0), rows.flip(0)), of_row=of_row)


def run_prompts_once(model, config, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                     shared: SharedPrompts) -> tuple[torch.Tensor, DynamicCache]:
    """Each distinct prompt of left-padded ``prompt_ids`` run through ``model`` once (``config``: its
    configuration, the cache's layer layout): the logits at its last position, ``(batch, 1, vocab)``, and its keys
    and values in a cache, each repeated to the rows that hold it. Under autograd both keep their history."""
    mask = prompt_mask[shared.distinct]
    cache = DynamicCache(config=config)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # from 0 at each first real token; padding is never attended to
    output = model(input_ids=prompt_ids[shared.distinct], attention_mask=mask, position_ids=positions, cache=cache,
                   use_cache=True, logits_to_keep=1)
    cache.batch_select_indices(shared.of_row)
    return output.logits[shared.of_row], cache


def prefilled_cache(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    generation_config: GenerationConfig | None = None) -> DynamicCache | None:
    """For ``model.generate(input_ids, attention_mask, cache=...)`` of left-padded prompts: the keys and values of
    every row's prompt but its last token, each distinct prompt run once and repeated to its rows, in layers that
    decode steps fill in place (:mod:`.growing_cache`). None where the generation settings (``generation_config``,
    else the model's) ask for a cache of another kind or several sequences a row, or the prompts are one token
    wide. Rows whose prompts all differ are prefilled too (the same
    work as ``generate``'s own prefill), so that processes generating in step (ZeRO-3, FSDP) run the same forward
    passes whatever their prompts."""
    if not fits_generation(generation_config or model.generation_config) or input_ids.size(1) < 2:
        return None
    with torch.no_grad():
        _, cache = run_prompts_once(model, model.config, input_ids[:, :-1], attention_mask[:, :-1],
                                    find_shared_prompts(input_ids, attention_mask))
    return growing(cache)


__all__ = ["SharedPrompts", "find_shared_prompts", "prefilled_cache", "run_prompts_once"]
