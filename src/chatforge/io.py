"""Crash-safe writes: a folder or file appears complete under its final name, or not at all."""

import contextlib
import contextvars
import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import InvalidValue, MissingInput


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename.

    On error the temporary folder is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp_dir
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp_dir, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp_dir, path)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write one JSON object per line (UTF-8, not ASCII-escaped); the number written."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict]:
    """The first ``limit`` records of a JSONL file (gzipped where it ends in ``.gz``; all by default); none when the
    file does not exist. A line that is not JSON raises a ``ValueError`` naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if limit is not None and len(records) >= limit:
                break
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise InvalidValue(f"{path}:{number}: not a JSON object ({error})") from None
    return records


_PLANNED: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("planned_outputs", default=())


@contextlib.contextmanager
def planned_outputs(paths: Iterable[str | Path]) -> Iterator[None]:
    """Within it, :func:`will_exist` counts ``paths``, and whatever lies under them, as present: the outputs that
    earlier stages of a plan being checked will write."""
    token = _PLANNED.set(tuple(Path(path).absolute() for path in paths))
    try:
        yield
    finally:
        _PLANNED.reset(token)


def will_exist(path: str | Path) -> bool:
    """Whether ``path`` exists, or lies in an output of a plan being checked (:func:`planned_outputs`)."""
    path = Path(path).absolute()
    return path.exists() or any(path == planned or planned in path.parents for planned in _PLANNED.get())


def require_input(field: str, path: str | Path, what: str, make: str | None = None) -> None:
    """Raise :class:`~chatforge.errors.MissingInput` unless ``path`` (named by the setting ``field``) exists;
    ``make`` is the command that makes it."""
    if not will_exist(path):
        raise MissingInput(field, str(path), what, make)
