"""Build what a small pretraining run lacks (tokenizer, token shards) from the embedded corpus."""

from pathlib import Path

from ..data import EMBEDDED_WIKIPEDIA, iter_documents
from ..data.shards import tokenize_to_shards
from ..io import atomic_directory
from ..tokenization import train_tokenizer
from .config import PretrainConfig


def build_missing_inputs(config: PretrainConfig, val_fraction: float = 0.1) -> None:
    """Train the tokenizer and tokenize the embedded Wikipedia paragraphs where those folders are missing."""
    if not Path(config.tokenizer_name_or_path).exists():
        print(f"building tokenizer ({config.tokenizer_vocab_size} tokens) -> {config.tokenizer_name_or_path}")
        tokenizer = train_tokenizer(iter_documents([str(EMBEDDED_WIKIPEDIA)]), config.tokenizer_vocab_size)
        with atomic_directory(config.tokenizer_name_or_path) as tmp_dir:
            tokenizer.save_pretrained(tmp_dir)
    if not Path(config.dataset_dir).exists():
        print(f"tokenizing the embedded corpus -> {config.dataset_dir}")
        tokenize_to_shards(config.tokenizer_name_or_path, [str(EMBEDDED_WIKIPEDIA)], config.dataset_dir,
                           val_fraction=val_fraction, seed=config.seed)
