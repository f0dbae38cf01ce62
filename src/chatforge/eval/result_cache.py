"""Evaluation figures kept on disk by everything that decides them, so that a model is measured on a task once:
the GRPO stage's held-out word problems on its starting and trained models are the eval stage's figures too.

Used where the environment variable ``CHATFORGE_EVAL_CACHE`` names a folder (``chatforge speedrun`` sets it to
``<run>/eval-cache`` for its stages). A task's figures are reused only where all of these are the same: the
model's files (:func:`~chatforge.eval.model_identity.model_fingerprint`), the task, its held-out records, the
settings it reads, the tools it is asked with, the dtype and device the model runs in, and the code (chatforge's
own source, torch and transformers). Remove the folder to measure everything again."""

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from ..io import atomic_write_text

ENVIRONMENT_VARIABLE = "CHATFORGE_EVAL_CACHE"


@functools.cache
def code_digest() -> str:
    """SHA-256 over chatforge's Python source and the versions of torch and transformers: a code change makes every
    kept figure stale."""
    import torch
    import transformers

    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(f"{torch.__version__}\0{transformers.__version__}\0".encode())
    for path in sorted(package.rglob("*.py")):
        digest.update(f"{path.relative_to(package)}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class EvalCache:
    """A folder of ``<key>.json`` files, each one task's figures and what they were measured on."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @classmethod
    def from_environment(cls) -> "EvalCache | None":
        """The cache ``CHATFORGE_EVAL_CACHE`` names, if any."""
        folder = os.environ.get(ENVIRONMENT_VARIABLE)
        return cls(folder) if folder else None

    @staticmethod
    def key(description: dict) -> str:
        """The key of a measurement described by ``description`` (JSON-able), under the current code."""
        text = json.dumps({**description, "code": code_digest()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        """The figures kept under ``key``, or None."""
        kept = self.entry(key)
        return kept["figures"] if kept else None

    def entry(self, key: str) -> dict | None:
        """All that is kept under ``key`` (``figures``, ``description``, and ``records`` where given), or None."""
        path = self.folder / f"{key}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def put(self, key: str, description: dict, figures: dict, records: list[dict] | None = None) -> None:
        """Keep ``figures`` (and the item ``records`` they were scored from) under ``key``, with the description
        they were measured on (for a reader)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        kept = {"description": description, "figures": figures} | ({"records": records} if records else {})
        atomic_write_text(self.folder / f"{key}.json", json.dumps(kept, indent=2, ensure_ascii=False))


@contextlib.contextmanager
def cached_in(folder: str | Path) -> Iterator[None]:
    """Evaluations inside (in this process and the processes it starts) keep and reuse figures in ``folder``."""
    before = os.environ.get(ENVIRONMENT_VARIABLE)
    os.environ[ENVIRONMENT_VARIABLE] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENVIRONMENT_VARIABLE, None)
        else:
            os.environ[ENVIRONMENT_VARIABLE] = before
