"""A key/value cache whose decode steps write in place.

transformers' ``DynamicLayer`` appends each step's keys and values with ``torch.cat``, which copies the whole cache
at every step: for a batch of 32 chat replies on a CPU, a quarter of the step. :class:`GrowingLayer` keeps them in
buffers with room for :data:`GROWTH` more columns and hands out views of the filled part; a step writes its column,
and the buffers are copied only when full (or when rows are selected). For inference: writes in place do not keep
autograd history.
"""

import torch
from transformers import DynamicCache, GenerationConfig
from transformers.cache_utils import DynamicLayer

#: Columns of room a buffer is given beyond what it holds when it is (re)allocated.
GROWTH = 128


def _fills(view: torch.Tensor, buffer: torch.Tensor | None) -> bool:
    """Whether ``view`` is the leading columns of ``buffer`` (as :meth:`GrowingLayer.update` handed it out)."""
    return (buffer is not None and view.data_ptr() == buffer.data_ptr() and view.shape[:2] == buffer.shape[:2]
            and view.stride() == buffer.stride() and view.dtype == buffer.dtype)


def _with_room(states: torch.Tensor, columns: int) -> torch.Tensor:
    """A buffer of ``columns`` columns whose first ones hold ``states``."""
    buffer = states.new_empty((*states.shape[:2], columns, states.shape[3]))
    buffer[:, :, :states.shape[2]] = states
    return buffer


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer whose ``keys`` and ``values`` are views of larger buffers. Code that assigns
    ``keys``/``values`` (cropping, batch changes, left-padding) may do so freely: a layer whose tensors are no longer
    its buffers' views moves them into new buffers at its next update."""

    key_buffer: torch.Tensor | None = None
    value_buffer: torch.Tensor | None = None

    def _holds_views(self) -> bool:
        """Whether ``keys`` and ``values`` are still the views of the buffers that :meth:`update` handed out."""
        return _fills(self.keys, self.key_buffer) and _fills(self.values, self.value_buffer)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.keys.numel() == 0:
            self.keys, self.values = key_states[:, :, :0], value_states[:, :, :0]
        length, end = self.keys.shape[2], self.keys.shape[2] + key_states.shape[2]
        if not (self._holds_views() and end <= self.key_buffer.shape[2]):
            self.key_buffer = _with_room(self.keys, end + GROWTH)
            self.value_buffer = _with_room(self.values, end + GROWTH)
        self.key_buffer[:, :, length:end] = key_states
        self.value_buffer[:, :, length:end] = value_states
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (in that order), with the room the buffers had."""
        if self.get_seq_length() == 0:
            return
        if not self._holds_views():
            super().batch_select_indices(indices)
            return
        length = self.keys.shape[2]
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]

    def reset(self) -> None:
        self.key_buffer = self.value_buffer = None
        super().reset()


def growing(cache: DynamicCache) -> DynamicCache:
    """``cache`` with its full-attention layers made :class:`GrowingLayer` s, their tensors kept (sliding-window
    and other layers stay as they are)."""
    for layer in cache.layers:
        if type(layer) is DynamicLayer:
            layer.__class__ = GrowingLayer
    return cache


def growing_cache(config) -> DynamicCache:
    """An empty cache for a model of ``config`` whose full-attention layers are :class:`GrowingLayer` s."""
    return growing(DynamicCache(config=config))


def fits_generation(settings: GenerationConfig) -> bool:
    """Whether ``generate`` with ``settings`` can be handed a cache of :class:`GrowingLayer` s: it asks for no
    cache of its own kind and one sequence a row."""
    return settings.cache_implementation is None and (settings.num_return_sequences or 1) == 1


def is_full_attention(layer) -> bool:
    """Whether ``layer`` is a plain full-attention cache layer (rows can be padded and joined)."""
    return type(layer) in (DynamicLayer, GrowingLayer)


__all__ = ["GROWTH", "GrowingLayer", "fits_generation", "growing", "growing_cache", "is_full_attention"]
