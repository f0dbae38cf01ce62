"""lm-evaluation-harness's in-process ``hf`` model, with the prompt prefix that a batch of requests shares run
through the model once: a benchmark's few-shot examples (GSM8K's eight worked problems, TruthfulQA's six
questions) and a question's context across its choices. The harness builds every prompt, batches, filters and
scores as it does with ``HFLM``; only the forward passes change.

A batch's longest common token prefix is run once (continuing from the previous batch's where the two agree),
its key/value cache is copied to every row, and the rows' remaining tokens run on top of it. Log-likelihood
batches get the prefix's logits in front of their own; generation continues from the copied cache, each row's
own tokens left-padded after the prefix (positions and attention follow the attention mask), in a cache
allocated once for the whole generation."""

import copy

import torch
from lm_eval.models.huggingface import HFLM
from transformers import DynamicCache, StaticCache

#: Shorter common prefixes are not worth a cache copy: the batch runs as the harness runs it.
MIN_SHARED_TOKENS = 16


def common_prefix_length(rows: list[torch.Tensor]) -> int:
    """How many leading tokens all ``rows`` (1-D, any lengths) share."""
    width = min(len(row) for row in rows)
    same = (torch.stack([row[:width] for row in rows]) == rows[0][:width]).all(dim=0)
    return int(same.long().cumprod(dim=0).sum())


class SharedPrefixHFLM(HFLM):
    """``HFLM`` for causal language models whose batches run their shared prompt prefix once (module docstring).
    Takes ``HFLM``'s arguments."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._prefix: tuple[torch.Tensor, DynamicCache, torch.Tensor] | None = None  # tokens, cache, logits

    def _forward(self, input_ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        dtype = self.mixed_precision_dtype
        with torch.no_grad(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            return self.model(input_ids=input_ids, cache=cache, use_cache=True).logits

    def _prefix_state(self, tokens: torch.Tensor) -> tuple[DynamicCache, torch.Tensor]:
        """The cache and logits of ``tokens`` (1-D), reusing the last prefix's as far as the two agree."""
        kept = 0
        if self._prefix is not None:
            last_tokens, cache, logits = self._prefix
            kept = common_prefix_length([last_tokens, tokens])
        if kept == 0:
            cache, logits = DynamicCache(config=self.model.config), None
        else:
            cache.crop(kept - cache.get_seq_length())  # a negative count of tokens to drop
            logits = logits[:, :kept]
        if kept < len(tokens):
            new_logits = self._forward(tokens[None, kept:], cache)
            logits = new_logits if logits is None else torch.cat([logits, new_logits], dim=1)
        self._prefix = (tokens, cache, logits)
        return cache, logits

    def _batch_cache(self, tokens: torch.Tensor, batch: int) -> tuple[DynamicCache, torch.Tensor]:
        cache, logits = self._prefix_state(tokens)
        copied = copy.deepcopy(cache)
        copied.batch_repeat_interleave(batch)
        return copied, logits

    def _generation_cache(self, tokens: torch.Tensor, batch: int, max_length: int) -> StaticCache:
        """A cache of ``max_length`` positions a row, holding ``tokens``' keys and values (if any): written in place
        as generation goes, where a growing cache is copied whole at every step."""
        cache = StaticCache(config=self.model.config, max_cache_len=max_length)
        if len(tokens):
            prefix, _ = self._prefix_state(tokens)
            for index, layer in enumerate(prefix.layers):
                cache.update(layer.keys.repeat_interleave(batch, 0), layer.values.repeat_interleave(batch, 0), index)
        return cache

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        if attn_mask is not None or labels is not None or self.backend != "causal":
            return super()._model_call(inps, attn_mask, labels)
        shared = min(common_prefix_length(list(inps)), inps.shape[1] - 1)
        if shared < MIN_SHARED_TOKENS:
            return super()._model_call(inps)
        cache, logits = self._batch_cache(inps[0, :shared], len(inps))
        rest = self._forward(inps[:, shared:], cache)
        return torch.cat([logits.expand(len(inps), -1, -1), rest], dim=1)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs):
        mask = generation_kwargs.get("attention_mask")
        if mask is None or self.backend != "causal":
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        width = context.shape[1]
        rows = [row[width - int(length):] for row, length in zip(context, mask.sum(dim=1))]
        shared = min(common_prefix_length(rows), min(len(row) for row in rows) - 1)
        shared = shared if shared >= MIN_SHARED_TOKENS else 0
        cache = self._generation_cache(rows[0][:shared], len(rows), max_length)
        if shared:  # the same width as the harness's batch: the prefix, then each row's own tokens left-padded
            own = torch.full((len(rows), width - shared), self.tokenizer.pad_token_id, dtype=context.dtype,
                             device=context.device)
            own_mask = torch.zeros_like(own, dtype=mask.dtype)
            for index, row in enumerate(rows):
                own[index, own.shape[1] - (len(row) - shared):] = row[shared:]
                own_mask[index, own.shape[1] - (len(row) - shared):] = 1
            prefix = rows[0][:shared].expand(len(rows), -1)
            context = torch.cat([prefix, own], dim=1)
            generation_kwargs["attention_mask"] = torch.cat([torch.ones_like(prefix, dtype=mask.dtype), own_mask], 1)
        return super()._model_generate(context, max_length, stop, cache=cache, **generation_kwargs)
