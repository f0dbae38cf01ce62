"""Reference figures a language model must beat."""

import numpy as np


def unigram_cross_entropy(train_counts: np.ndarray, val_counts: np.ndarray) -> float:
    """Validation cross-entropy (nats/token) of the add-one-smoothed unigram model of the training tokens.

    Both arguments are per-token-id counts over the same vocabulary (``np.bincount(ids, minlength=V)``).
    """
    log_probs = np.log((train_counts + 1.0) / (train_counts.sum() + len(train_counts)))
    return float(-(val_counts * log_probs).sum() / val_counts.sum())
