"""The embedded pretraining corpus, and a tokenizer and token shards made from it for quick experiments."""

import json
from dataclasses import asdict
from pathlib import Path

from ..data import EMBEDDED_WIKIPEDIA, iter_documents
from ..data.shards import tokenize_to_shards
from ..io import atomic_directory
from ..tasks.world import WorldConfig, write_world_corpus
from ..tokenization import train_tokenizer


def embedded_corpus(folder: str | Path, world: WorldConfig = WorldConfig()) -> list[str]:
    """The embedded pretraining corpus in ``folder``: the Wikipedia paragraphs and the fictional world's documents
    (:mod:`chatforge.tasks.world`, as ``world`` configures it), written once and again only when ``world``
    differs from the settings recorded beside them. The JSONL files, in order."""
    folder = Path(folder)
    settings = json.dumps(asdict(world), sort_keys=True)
    recorded = folder / "world_config.json"
    if not (folder / "world.jsonl").exists() or not recorded.exists() or recorded.read_text() != settings:
        with atomic_directory(folder) as tmp_dir:
            (tmp_dir / "wikipedia.jsonl").write_bytes(EMBEDDED_WIKIPEDIA.read_bytes())
            write_world_corpus(tmp_dir / "world.jsonl", world)
            (tmp_dir / "world_config.json").write_text(settings)
    return [str(folder / "wikipedia.jsonl"), str(folder / "world.jsonl")]


def embedded_inputs(folder: str | Path, vocab_size: int = 4096, val_fraction: float = 0.1, seed: int = 0) -> Path:
    """``folder/tokenizer`` trained on the embedded corpus and ``folder/shards`` of it (train and validation),
    each made once; returns ``folder``."""
    folder = Path(folder)
    sources = embedded_corpus(folder / "corpus")
    if not (folder / "tokenizer").exists():
        tokenizer = train_tokenizer(iter_documents(sources), vocab_size)
        with atomic_directory(folder / "tokenizer") as tmp_dir:
            tokenizer.save_pretrained(tmp_dir)
    if not (folder / "shards").exists():
        tokenize_to_shards(str(folder / "tokenizer"), sources, folder / "shards", val_fraction=val_fraction, seed=seed)
    return folder
