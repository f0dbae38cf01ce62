"""Inference: sampling from causal language models."""

from .sampling import sample_continuations

__all__ = ["sample_continuations"]
