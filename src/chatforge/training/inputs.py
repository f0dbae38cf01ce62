"""Build what a small pretraining run lacks (tokenizer, token shards) from the embedded corpus."""

from pathlib import Path

from ..data import EMBEDDED_WIKIPEDIA, iter_documents
from ..data.shards import tokenize_to_shards
from ..io import atomic_directory
from ..tasks.world import write_world_corpus
from ..tokenization import train_tokenizer
from .config import PretrainConfig


def embedded_corpus(folder: str | Path) -> list[str]:
    """The embedded pretraining corpus in ``folder`` (written once): the Wikipedia paragraphs and the
    fictional world's documents (:mod:`chatforge.tasks.world`). The JSONL files, in order."""
    folder = Path(folder)
    if not (folder / "world.jsonl").exists():
        with atomic_directory(folder) as tmp_dir:
            (tmp_dir / "wikipedia.jsonl").write_bytes(EMBEDDED_WIKIPEDIA.read_bytes())
            write_world_corpus(tmp_dir / "world.jsonl")
    return [str(folder / "wikipedia.jsonl"), str(folder / "world.jsonl")]


def build_missing_inputs(config: PretrainConfig, val_fraction: float = 0.1) -> None:
    """Train the tokenizer and tokenize the embedded corpus (next to ``dataset_dir``, in ``corpus/``) where
    those folders are missing."""
    sources = embedded_corpus(Path(config.dataset_dir).parent / "corpus")
    if not Path(config.tokenizer_name_or_path).exists():
        print(f"building tokenizer ({config.tokenizer_vocab_size} tokens) -> {config.tokenizer_name_or_path}")
        tokenizer = train_tokenizer(iter_documents(sources), config.tokenizer_vocab_size,
                                    max_number_digits=config.tokenizer_max_number_digits)
        with atomic_directory(config.tokenizer_name_or_path) as tmp_dir:
            tokenizer.save_pretrained(tmp_dir)
    if not Path(config.dataset_dir).exists():
        print(f"tokenizing the embedded corpus -> {config.dataset_dir}")
        tokenize_to_shards(config.tokenizer_name_or_path, sources, config.dataset_dir,
                           val_fraction=val_fraction, seed=config.seed)
