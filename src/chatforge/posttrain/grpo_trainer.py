"""The GRPO trainer of the recipes: completions scored on packed rows or after their distinct prompts
(:class:`PackedGRPOTrainer`) and, where transformers generates them, sampled by inverse transform from each
distinct prompt's cache.

TRL samples each batch's completions with one ``model.generate(do_sample=True)``, whose ``torch.multinomial``
spends an exponential random number per vocabulary entry and row at every step. Here that call decodes greedily
with :class:`~chatforge.inference.inverse_transform.InverseTransformSampler` as its last logits processor, which
applies the same temperature and truncation and draws from the same distribution with one uniform number per row;
and it starts from a cache of each distinct prompt run once, not from every row's prompt run again.
"""

import contextlib

import torch
from transformers import LogitsProcessorList
from trl import GRPOTrainer

from ..errors import InvalidValue
from ..inference.inverse_transform import as_greedy_with_sampler
from ..inference.packed_linear import packed_linears
from ..inference.prompt_cache import find_shared_prompts, prefilled_cache
from .packed_scoring import on_grid, pack_completions, packed_logits, scored_logps_and_entropies
from .shared_prompts import completion_logits


@contextlib.contextmanager
def generating_with(model, processors: LogitsProcessorList):
    """Inside, ``model.generate`` is given ``processors`` as its ``logits_processor``, and left-padded prompts
    that repeat (GRPO's generations of each prompt) start from a cache of each distinct prompt run once
    (:func:`~chatforge.inference.prompt_cache.prefilled_cache`)."""
    own = vars(model).get("generate")
    generate = model.generate

    def generate_from_shared_prompts(input_ids=None, attention_mask=None, generation_config=None, **kwargs):
        if input_ids is not None and attention_mask is not None and kwargs.get("cache") is None:
            kwargs["cache"] = prefilled_cache(model, input_ids, attention_mask, generation_config)
        return generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config,
                        logits_processor=processors, **kwargs)

    model.generate = generate_from_shared_prompts
    try:
        with packed_linears(model):
            yield
    finally:
        if own is None:
            del model.generate
        else:
            model.generate = own


class PackedGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer scoring text completions without padding's or repeated prompts' work (multimodal inputs and
    MoE auxiliary losses take TRL's path). Each chunk of the batch is scored whichever way runs fewer positions:
    each distinct prompt once and the completions after it (:mod:`.shared_prompts`; not under gradient
    checkpointing, which drops the cache; in several processes, only where every one of them would), or every
    prompt and completion packed end to end in one row
    (:mod:`.packed_scoring`: the model must take ``position_ids`` that restart per sequence as document
    boundaries, as ChatForge and transformers' Llama-family models do). Tokens that sampling suppresses
    (``generation_kwargs["suppress_tokens"]``) get no probability in the scores either: trained on the scores of
    the unsuppressed policy, their logits drift where no sample ever holds them (after 400 steps of the tiny recipe
    a tool-call token came first in most chat replies)."""

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **media):
        suppressed = (self.args.generation_kwargs or {}).get("suppress_tokens")
        if compute_aux_loss or any(value is not None for value in media.values()):
            if suppressed:
                raise InvalidValue("suppress_tokens is scored on packed text completions only: multimodal inputs and "
                                   "MoE auxiliary losses cannot take it")
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **media)
        batch_size = batch_size or input_ids.size(0)
        entropy_requires_grad = compute_entropy and self._entropy_bonus_enabled and torch.is_grad_enabled()
        chunks = []
        for start in range(0, input_ids.size(0), batch_size):
            ids, mask = input_ids[start:start + batch_size], attention_mask[start:start + batch_size]
            scored = mask[:, -logits_to_keep:].bool()
            with self.accelerator.autocast():
                logits, targets = self._scored_logits(model, ids, mask, logits_to_keep, scored)
                scores = scored_logps_and_entropies(logits, targets, self.temperature, entropy_requires_grad,
                                                    suppressed)
            chunks.append([on_grid(values, scored) for values in scores])
        logps, entropies = (torch.cat(parts) for parts in zip(*chunks))
        return logps, (entropies if compute_entropy else None), None

    def _scored_logits(self, model, input_ids, attention_mask, logits_to_keep, scored):
        """The logits that predict the ``scored`` completion tokens, and those tokens."""
        unwrapped = self.accelerator.unwrap_model(model)
        shared = find_shared_prompts(input_ids, attention_mask, logits_to_keep)
        checkpointing = getattr(unwrapped, "is_activation_checkpointing", False) and torch.is_grad_enabled()
        prompt_width = input_ids.size(1) - logits_to_keep
        share = not checkpointing and shared.cells(prompt_width, logits_to_keep) < attention_mask.sum()
        if self.accelerator.num_processes > 1:  # the same forward passes in every process (DDP, FSDP, ZeRO-3)
            share = bool(self.accelerator.gather(torch.tensor([int(share)], device=input_ids.device)).all())
        if share:
            logits = completion_logits(model, unwrapped.config, input_ids, attention_mask, logits_to_keep, shared)
            return logits[scored], input_ids[:, -logits_to_keep:][scored]
        packed = pack_completions(input_ids, attention_mask, logits_to_keep)
        return packed_logits(model, packed.rows, packed.predicting), packed.targets


class ChatForgeGRPOTrainer(PackedGRPOTrainer):
    """:class:`PackedGRPOTrainer`, its transformers rollouts drawn by inverse transform after each distinct prompt
    ran once (vLLM and continuous batching sample as TRL has them)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rollout_processors = LogitsProcessorList()
        if not (self.use_vllm or self.use_transformers_continuous_batching):
            self.generation_config, self.rollout_processors = as_greedy_with_sampler(self.generation_config)

    def _generate_single_turn(self, *args, **kwargs):
        with generating_with(self.accelerator.unwrap_model(self.model_wrapped), self.rollout_processors):
            return super()._generate_single_turn(*args, **kwargs)


__all__ = ["ChatForgeGRPOTrainer", "PackedGRPOTrainer", "generating_with"]
