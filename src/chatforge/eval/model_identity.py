"""Whether two model folders hold the same model: the files ``from_pretrained`` reads (weights, configuration,
tokenizer, chat template, custom code), hashed. A stage that keeps its starting model (PPO's stop rule keeping
step 0) saves the same files again, and an evaluation of it would repeat its twin's to the last digit."""

import functools
import hashlib
from pathlib import Path

#: Files of a model folder that decide what it computes; checkpoints, logs and figures beside them do not.
MODEL_FILE_NAMES = frozenset({"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                              "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                              "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model",
                              "model.safetensors.index.json", "pytorch_model.bin.index.json"})
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".py")


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def folder_digest(folder: str | Path) -> str:
    """SHA-256 over the relative names and contents of every file under ``folder``, in name order. Files not
    changed since (same size and modification time) are not read again in this process."""
    root = Path(folder).resolve()
    files = sorted(path for path in root.rglob("*") if path.is_file())
    return _folder_digest(str(root), tuple((str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in files))


@functools.lru_cache(maxsize=64)
def _folder_digest(root: str, files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, _, _ in files:
        digest.update(f"{Path(path).relative_to(root).as_posix()}\0{file_digest(path)}\0".encode())
    return digest.hexdigest()


def _is_model_file(path: Path) -> bool:
    return path.is_file() and (path.name in MODEL_FILE_NAMES or path.suffix in MODEL_FILE_SUFFIXES) \
        and path.name != "training_args.bin"


def model_fingerprint(folder: str | Path) -> str:
    """SHA-256 over the names, sizes and contents of the folder's model files (top level only), in name order.
    Files not changed since (same size and modification time) are not read again in this process."""
    files = sorted(filter(_is_model_file, Path(folder).resolve().iterdir()))
    return _fingerprint(tuple((str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in files))


@functools.lru_cache(maxsize=64)
def _fingerprint(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, size, _ in files:
        digest.update(f"{Path(path).name}\0{size}\0{file_digest(path)}\0".encode())
    return digest.hexdigest()
