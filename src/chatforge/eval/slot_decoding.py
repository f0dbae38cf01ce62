"""Greedy continuations of many prompts that share a prefix, decoded a fixed number of rows ("slots") at a time,
each slot taking the next prompt as soon as its continuation ends (continuous batching): a batch no longer steps
until its longest reply is done while the rest of its rows wait as padding.

Layout: one ``StaticCache`` of ``slots`` rows. Columns ``[0, P)`` hold the shared prefix in every row; each decode
step writes one column in every row. A prompt admitted when the next column is ``c`` has its own tokens' keys and
values at ``[c - m, c)`` — prefilled on a copy of the prefix's cache, positions continuing from the prefix — and
the columns between the prefix and them masked; a finished row's columns stay masked to everyone else. Prompts
are admitted while their whole continuation still fits before the cache's end; after that the last rows finish
and the columns after the longest prompt are reused for the next prompts (an epoch). Attention reads the columns
written so far, not the whole cache (:func:`filled_static_cache`)."""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import StaticLayer

#: ``forward(input_ids, attention_mask, position_ids, cache)``: the model's logits, cache updated in place.
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, object], torch.Tensor]


class FilledColumnsLayer(StaticLayer):
    """A ``StaticLayer`` that hands attention its columns written so far instead of all ``max_cache_len`` of them:
    the masked columns after them cost a step as much as the filled ones (attention is most of a decode step at
    a long shared prefix). Writes stay in place."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        filled = int(self.cumulative_length)
        return keys[:, :, :filled], values[:, :, :filled]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return int(self.get_seq_length()) + query_length, 0


def filled_static_cache(config, max_cache_len: int) -> StaticCache:
    """A ``StaticCache`` for a model of ``config`` whose full-attention layers are :class:`FilledColumnsLayer` s."""
    cache = StaticCache(config=config, max_cache_len=max_cache_len)
    for layer in cache.layers:
        if type(layer) is StaticLayer:
            layer.__class__ = FilledColumnsLayer
    return cache


@dataclass
class _Row:
    prompt: int  # index into the prompts' own tokens
    position: int  # position id of the next token fed
    pending: int = -1  # the token fed at the next step
    tokens: list[int] = field(default_factory=list)


class SlotDecoder:
    """Greedy decoding of ``suffixes`` (each a 1-D tensor: a prompt's tokens after the shared ``prefix``), ``slots``
    rows at a time; ``ended(tokens)`` says whether a continuation is complete (a stop token or string), and none
    goes past ``max_new_tokens``. ``prefix_cache(rows)`` gives a fresh cache holding the prefix in ``rows`` rows,
    ``generation_cache(rows, columns)`` a ``StaticCache`` of that width holding it. An epoch spans
    ``epoch_factor × max_new_tokens`` columns after the longest suffix."""

    def __init__(self, forward: Forward, prefix_length: int, prefix_cache: Callable[[int], DynamicCache],
                 generation_cache: Callable[[int, int], StaticCache], pad_id: int, slots: int, epoch_factor: int = 4,
                 device: torch.device | str = "cpu"):
        if slots < 1 or epoch_factor < 1:
            raise ValueError(f"SlotDecoder: slots={slots} and epoch_factor={epoch_factor} must be at least 1")
        self.forward, self.prefix_length = forward, prefix_length
        self.prefix_cache, self.generation_cache = prefix_cache, generation_cache
        self.pad_id, self.slots, self.epoch_factor, self.device = pad_id, slots, epoch_factor, device

    def decode(self, suffixes: list[torch.Tensor], max_new_tokens: int, ended: Callable[[list[int]], bool],
               desc: str | None = None) -> list[list[int]]:
        """Each suffix's greedy continuation (its tokens, ``max_new_tokens`` at most)."""
        self.suffixes, self.max_new, self.ended = suffixes, max_new_tokens, ended
        self.outputs: list[list[int]] = [[] for _ in suffixes]
        self.waiting = list(range(len(suffixes)))[::-1]  # popped from the end: first prompts first
        self.start = self.prefix_length + max(len(suffix) for suffix in suffixes)
        width = self.start + self.epoch_factor * max_new_tokens
        self.cache = self.generation_cache(min(self.slots, len(suffixes)), width)
        self.mask = torch.zeros(min(self.slots, len(suffixes)), width, dtype=torch.long, device=self.device)
        self.mask[:, :self.prefix_length] = 1
        self.rows: list[_Row | None] = [None] * len(self.mask)
        self.progress = tqdm(total=len(suffixes), desc=desc, leave=False, disable=desc is None)
        try:
            self._first_wave()
            while any(self.rows) or self.waiting:
                free = [slot for slot, row in enumerate(self.rows) if row is None]
                if free and self.waiting and self.column + max_new_tokens - 1 <= width:
                    self._join(free)
                elif any(self.rows):
                    self._step()
                else:  # nothing fits before the cache's end and every row has finished: a new epoch
                    self.cache.crop(self.start - self.column)
                    self.column = self.start
        finally:
            self.progress.close()
        return self.outputs

    def _first_wave(self) -> None:
        """The first prompts prefilled in the decoding cache itself, right-aligned before ``start``."""
        prompts = [self.waiting.pop() for _ in self.rows]
        ids, own_mask, positions = self._right_aligned(prompts, self.start - self.prefix_length)
        self.mask[:, self.prefix_length:self.start] = own_mask
        logits = self.forward(ids, self.mask[:, :self.start], positions, self.cache)
        self.column = self.start
        self._admit(list(range(len(prompts))), prompts, logits[:, -1])

    def _join(self, free: list[int]) -> None:
        """Waiting prompts prefilled on a copy of the prefix's cache, their keys and values copied into free slots
        just before the next column."""
        slots = free[:len(self.waiting)]
        prompts = [self.waiting.pop() for _ in slots]
        width = max(len(self.suffixes[prompt]) for prompt in prompts)
        ids, own_mask, positions = self._right_aligned(prompts, width)
        cache = self.prefix_cache(len(prompts))
        mask = torch.cat([own_mask.new_ones(len(prompts), self.prefix_length), own_mask], dim=1)
        logits = self.forward(ids, mask, positions, cache)
        for index, (slot, prompt) in enumerate(zip(slots, prompts)):
            length = len(self.suffixes[prompt])
            source, target = slice(self.prefix_length + width - length, None), slice(self.column - length, self.column)
            for mine, theirs in zip(self.cache.layers, cache.layers):
                mine.keys[slot, :, target] = theirs.keys[index, :, source]
                mine.values[slot, :, target] = theirs.values[index, :, source]
            self.mask[slot, self.prefix_length:] = 0
            self.mask[slot, target] = 1
        self._admit(slots, prompts, logits[:, -1])

    def _right_aligned(self, prompts: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prompts' suffixes left-padded to ``width``: token ids, their mask and their position ids."""
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            suffix = self.suffixes[prompt]
            ids[row, width - len(suffix):] = suffix.to(ids.device)
            mask[row, width - len(suffix):] = 1
        positions = self.prefix_length + (mask.cumsum(dim=1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def _admit(self, slots: list[int], prompts: list[int], logits: torch.Tensor) -> None:
        for slot, prompt, token in zip(slots, prompts, logits.argmax(dim=-1).tolist()):
            self.rows[slot] = _Row(prompt, self.prefix_length + len(self.suffixes[prompt]))
            self._take(slot, token)

    def _take(self, slot: int, token: int) -> None:
        """Append a generated token to the slot's row; a row that has ended leaves its slot."""
        row = self.rows[slot]
        row.tokens.append(token)
        if len(row.tokens) >= self.max_new or self.ended(row.tokens):
            self.outputs[row.prompt] = row.tokens
            self.rows[slot] = None
            self.progress.update(1)
        else:
            row.pending = token

    def _step(self) -> None:
        """One decode step: every active row feeds its pending token at the next column."""
        active = [row is not None for row in self.rows]
        ids = torch.tensor([[row.pending if row else self.pad_id] for row in self.rows], device=self.device)
        positions = torch.tensor([[row.position if row else 0] for row in self.rows], device=self.device)
        self.mask[:, self.column] = torch.tensor(active, dtype=torch.long, device=self.device)
        logits = self.forward(ids, self.mask[:, :self.column + 1], positions, self.cache)[:, -1]
        self.column += 1
        tokens = logits.argmax(dim=-1).tolist()
        for slot, row in enumerate(self.rows):
            if row is not None:
                row.position += 1
                self._take(slot, tokens[slot])


__all__ = ["FilledColumnsLayer", "SlotDecoder", "filled_static_cache"]
