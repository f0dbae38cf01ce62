"""lm-evaluation-harness's in-process ``hf`` model, with the prompt prefix that a batch of requests shares run
through the model once: a benchmark's few-shot examples (GSM8K's eight worked problems, TruthfulQA's six
questions) and a question's context across its choices. The harness builds every prompt, batches, filters and
scores as it does with ``HFLM``; only the forward passes change.

A batch's longest common token prefix is run once (continuing from the previous batch's where the two agree),
its key/value cache is copied to every row, and the rows' remaining tokens run on top of it. Log-likelihood
batches get the prefix's logits in front of their own; generation continues from the copied cache, each row's
own tokens left-padded after the prefix (positions and attention follow the attention mask), in a cache
allocated once for the whole generation. Greedy generation goes further: all requests with the same settings are
decoded together, ``batch_size`` rows at a time, each row taking the next request as soon as its reply has ended
(:class:`~chatforge.eval.slot_decoding.SlotDecoder`), instead of batches that step until their longest reply
is done."""

import copy
from collections.abc import Callable

import torch
from lm_eval.models.huggingface import HFLM
from transformers import DynamicCache, GenerationConfig, StaticCache

from .slot_decoding import SlotDecoder, filled_static_cache

#: Shorter common prefixes are not worth a cache copy: the batch runs as the harness runs it.
MIN_SHARED_TOKENS = 16
#: Generation settings that change which token greedy decoding picks; where the model's generation config sets
#: any, generation runs through ``generate`` (which applies them).
LOGIT_SETTINGS = ("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "bad_words_ids",
                  "suppress_tokens", "begin_suppress_tokens", "sequence_bias", "min_length", "min_new_tokens",
                  "forced_bos_token_id", "forced_eos_token_id", "exponential_decay_length_penalty")


def common_prefix_length(rows: list[torch.Tensor]) -> int:
    """How many leading tokens all ``rows`` (1-D, any lengths) share."""
    width = min(len(row) for row in rows)
    same = (torch.stack([row[:width] for row in rows]) == rows[0][:width]).all(dim=0)
    return int(same.long().cumprod(dim=0).sum())


class SharedPrefixHFLM(HFLM):
    """``HFLM`` for causal language models whose batches run their shared prompt prefix once (module docstring).
    Takes ``HFLM``'s arguments."""

    #: Greedy generation decoded in slots (False: in the harness's batches, as ``HFLM`` does).
    decode_in_slots = True
    #: Columns of the greedy decoding cache after the longest prompt, in units of the longest reply allowed.
    epoch_factor = 4

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._prefix: tuple[torch.Tensor, DynamicCache, torch.Tensor] | None = None  # tokens, cache, logits
        self._slots = self.batch_size_per_gpu  # rows decoded together

    def _forward(self, input_ids: torch.Tensor, cache: DynamicCache, **kwargs) -> torch.Tensor:
        dtype = self.mixed_precision_dtype
        with torch.no_grad(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            return self.model(input_ids=input_ids, cache=cache, use_cache=True, **kwargs).logits

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
        cache = filled_static_cache(self.model.config, max_length)
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

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """The harness's ``generate_until`` with every request of the same settings in one batch: greedy ones are
        decoded ``batch_size`` rows at a time as slots free up, others in batches of ``batch_size``."""
        self._slots, self.batch_size_per_gpu = self.batch_size_per_gpu, max(len(requests), 1)
        try:
            return super().generate_until(requests, disable_tqdm)
        finally:
            self.batch_size_per_gpu = self._slots

    def _greedy(self, generation_kwargs: dict) -> bool:
        """Whether the harness asks for plain greedy decoding (and the model's generation config changes no logit)."""
        if not self.decode_in_slots or generation_kwargs.get("do_sample") is not False or set(generation_kwargs) - {
                "do_sample", "temperature", "attention_mask"}:
            return False
        config, default = self.model.generation_config, GenerationConfig()
        return all(getattr(config, name, None) == getattr(default, name, None) for name in LOGIT_SETTINGS)

    def _end_of_reply(self, stop: list[str]) -> Callable[[list[int]], bool]:
        """Whether generated tokens end a reply: an end-of-sequence token of the model's generation config, or a
        stop string in their text (special tokens written out, as the harness's stopping criteria read them)."""
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        return lambda tokens: tokens[-1] in eos or any(
            text in self.tok_decode(tokens, skip_special_tokens=False) for text in stop)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs):
        mask = generation_kwargs.get("attention_mask")
        if mask is None or self.backend != "causal":
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        width = context.shape[1]
        rows = [row[width - int(length):] for row, length in zip(context, mask.sum(dim=1))]
        shared = min(common_prefix_length(rows), min(len(row) for row in rows) - 1)
        shared = shared if shared >= MIN_SHARED_TOKENS else 0
        if self._greedy(generation_kwargs):
            return self._generate_in_slots(context, rows, shared, max_length - width, stop)
        if len(rows) > self._slots:  # one generate call per batch of rows, each padded to max_length
            pieces = [self._model_generate(context[start:start + self._slots], max_length, stop, **(
                generation_kwargs | {"attention_mask": mask[start:start + self._slots]}))
                for start in range(0, len(rows), self._slots)]
            return torch.cat([torch.nn.functional.pad(piece, (0, max_length - piece.shape[1]),
                                                      value=self.tokenizer.pad_token_id) for piece in pieces])
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

    def _generate_in_slots(self, context: torch.Tensor, rows: list[torch.Tensor], shared: int, max_new_tokens: int,
                           stop: list[str]) -> torch.Tensor:
        """Greedy continuations of ``rows`` (their first ``shared`` tokens in common) through a
        :class:`SlotDecoder`, laid out as ``generate`` returns them: the context, then each row's generated tokens
        padded to ``max_new_tokens``."""
        prefix = rows[0][:shared]

        def prefix_cache(batch: int) -> DynamicCache:
            return self._batch_cache(prefix, batch)[0] if shared else DynamicCache(config=self.model.config)

        decoder = SlotDecoder(
            lambda ids, mask, positions, cache: self._forward(ids, cache, attention_mask=mask, position_ids=positions),
            shared, prefix_cache, lambda batch, columns: self._generation_cache(prefix, batch, columns),
            self.tokenizer.pad_token_id, self._slots, self.epoch_factor, self.device)
        replies = decoder.decode([row[shared:] for row in rows], max_new_tokens, self._end_of_reply(stop),
                                 desc="greedy generation" if self.rank == 0 else None)
        out = torch.full((len(rows), max_new_tokens), self.tokenizer.pad_token_id, dtype=context.dtype)
        for index, reply in enumerate(replies):
            out[index, :len(reply)] = torch.tensor(reply, dtype=context.dtype)
        return torch.cat([context, out.to(context.device)], dim=1)
