"""Checkpoints: a ``save_pretrained`` folder plus the training state, written atomically and checksummed.

    <output_dir>/checkpoint-<step>/
        model.safetensors, config.json, tokenizer files ...   loadable with from_pretrained
        training_state.pt     optimizer, scheduler, RNG states, step
        checksums.json        SHA-256 of every file above, written last
"""

import hashlib
import json
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidValue
from ..io import atomic_directory

STATE_FILE = "training_state.pt"
CHECKSUMS_FILE = "checksums.json"
PREFIX = "checkpoint-"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def write_checkpoint(output_dir: str | Path, step: int, write: Callable[[Path], None], keep: int) -> Path:
    """Write ``checkpoint-<step>`` atomically with ``write(folder)`` and checksums of every file in it, then
    delete all but the newest ``keep`` checkpoints."""
    path = Path(output_dir) / f"{PREFIX}{step}"
    with atomic_directory(path) as tmp_dir:
        write(tmp_dir)
        sums = {str(p.relative_to(tmp_dir)): _sha256(p) for p in sorted(tmp_dir.rglob("*")) if p.is_file()}
        (tmp_dir / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=1))
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old)
    return path


def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, weights: dict, optimizer: dict | None,
                    scheduler, keep: int) -> Path:
    """A checkpoint of pretraining: the model with ``weights`` (its whole state dict, however training shards it),
    its tokenizer, the optimizer's whole state (None where DeepSpeed keeps it), scheduler and RNG states."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder, state_dict=weights)
        tokenizer.save_pretrained(folder)
        torch.save({"step": step, "optimizer": optimizer, "scheduler": scheduler.state_dict(), "rng": rng_state()},
                   folder / STATE_FILE)

    return write_checkpoint(output_dir, step, write, keep)


def export_final_model(output_dir: str | Path, model, tokenizer, weights: dict | None = None) -> None:
    """Save the final model (with ``weights``, its whole state dict, where given) and tokenizer into
    ``output_dir`` itself (as ``Trainer.save_model`` does), so ``from_pretrained(output_dir)`` loads it;
    ``config.json`` is moved in last, once the weights are complete."""
    output_dir = Path(output_dir)
    with tempfile.TemporaryDirectory(prefix=".final-", dir=output_dir) as tmp:
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        files = sorted(Path(tmp).iterdir(), key=lambda p: p.name == "config.json")
        for path in files:
            os.replace(path, output_dir / path.name)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders, oldest first."""
    folders = [p for p in Path(output_dir).glob(f"{PREFIX}*") if p.is_dir() and p.name[len(PREFIX):].isdigit()]
    return sorted(folders, key=lambda p: int(p.name[len(PREFIX):]))


def verify_checkpoint(path: Path) -> str | None:
    """What is wrong with a checkpoint folder, or None when every file matches its checksum."""
    sums_path = path / CHECKSUMS_FILE
    if not sums_path.exists():
        return "no checksums.json (half-written)"
    try:
        sums = json.loads(sums_path.read_text())
    except json.JSONDecodeError:
        return "checksums.json is corrupt"
    for name, digest in sums.items():
        if not (path / name).exists():
            return f"{name} is missing"
        if _sha256(path / name) != digest:
            return f"{name} does not match its checksum"
    return None


def resolve_checkpoint(output_dir: str | Path, requested: str | None) -> Path | None:
    """The checkpoint to resume from: ``"latest"`` gives the newest intact one (damaged ones are skipped with
    a warning); a path must be intact."""
    if requested is None:
        return None
    if requested != "latest":
        path = Path(requested)
        problem = verify_checkpoint(path) if path.is_dir() else "no such folder"
        if problem:
            raise InvalidValue(f"resume_from_checkpoint={requested}: {problem}")
        return path
    for path in reversed(list_checkpoints(output_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        warnings.warn(f"skipping damaged checkpoint {path}: {problem}", stacklevel=2)
    return None


def trainer_checkpoint(output_dir: str | Path, requested: str | None) -> str | None:
    """``resume_from_checkpoint`` for a transformers/TRL Trainer: ``"latest"`` gives the newest
    ``checkpoint-*`` in ``output_dir`` (None when there is none yet: a fresh start); a path is kept."""
    if requested != "latest":
        return requested
    from transformers.trainer_utils import get_last_checkpoint

    latest = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
    print(f"resuming from {latest}" if latest else f"no checkpoint in {output_dir} yet: starting afresh")
    return latest
