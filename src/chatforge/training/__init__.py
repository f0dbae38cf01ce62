"""Pretraining: configuration, data windows from token shards, the Accelerate loop and checkpoints."""

from .config import PretrainConfig
from .loop import pretrain

__all__ = ["PretrainConfig", "pretrain"]
