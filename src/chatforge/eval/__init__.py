"""Evaluation: baselines and metrics."""

from .baselines import unigram_cross_entropy

__all__ = ["unigram_cross_entropy"]
