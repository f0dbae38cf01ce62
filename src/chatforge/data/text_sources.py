"""Read documents from text files, JSONL/parquet files, folders, globs or Hugging Face datasets."""

import glob
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import InvalidValue

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text"}
JSONL_SUFFIXES = {".jsonl", ".json"}
PARQUET_SUFFIXES = {".parquet"}
KNOWN_SUFFIXES = TEXT_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES


class InputError(InvalidValue):
    """An input file, record or field that cannot be used; the message names it."""


def expand_sources(sources: Iterable[str]) -> list[str]:
    """Resolve folders (recursively, known suffixes only) and globs into a sorted list of files.

    A source that is neither an existing path nor a matching glob is returned as is: it may name
    a dataset on the Hugging Face Hub.
    """
    files: list[str] = []
    for source in sources:
        if os.path.isdir(source):
            found = sorted(str(p) for p in Path(source).rglob("*") if p.is_file() and p.suffix in KNOWN_SUFFIXES)
            if not found and not _is_saved_dataset(source):
                raise InputError(f"{source}: folder holds no {sorted(KNOWN_SUFFIXES)} files")
            files.extend(found if found else [source])
        elif os.path.isfile(source):
            files.append(source)
        elif glob.has_magic(source):
            matches = sorted(glob.glob(source, recursive=True))
            if not matches:
                raise InputError(f"{source}: the pattern matches no file")
            files.extend(matches)
        elif source.startswith((".", "/", "~")) or Path(source).suffix in KNOWN_SUFFIXES:
            raise InputError(f"{source}: no such file or folder")
        else:
            files.append(source)
    return files


def iter_documents(sources: Iterable[str], text_field: str = "text") -> Iterator[str]:
    """Yield the documents of every source: a whole text file, or each record's ``text_field``."""
    for source in expand_sources(sources):
        suffix = Path(source).suffix
        if os.path.isdir(source):
            yield from _iter_saved_dataset(source, text_field)
        elif suffix in JSONL_SUFFIXES:
            yield from _iter_jsonl(source, text_field)
        elif suffix in PARQUET_SUFFIXES:
            yield from _iter_parquet(source, text_field)
        elif os.path.isfile(source):
            yield _read_text(source)
        else:
            yield from _iter_hub_dataset(source, text_field)


def _read_text(path: str) -> str:
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not valid UTF-8 at byte {error.start}") from error


def _iter_jsonl(path: str, text_field: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="strict") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{line_number}: invalid JSON ({error.msg})") from error
            yield _field(record, text_field, f"{path}:{line_number}")


def _iter_parquet(path: str, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    if text_field not in table.schema_arrow.names:
        raise InputError(f"{path}: no column {text_field!r} (columns: {table.schema_arrow.names})")
    for batch in table.iter_batches(columns=[text_field]):
        for row, value in enumerate(batch.column(0).to_pylist()):
            if not isinstance(value, str):
                raise InputError(f"{path}: row {row} of a batch has a non-string {text_field!r}")
            yield value


def _is_saved_dataset(path: str) -> bool:
    return os.path.exists(os.path.join(path, "dataset_info.json")) or os.path.exists(
        os.path.join(path, "dataset_dict.json")
    )


def _iter_saved_dataset(path: str, text_field: str) -> Iterator[str]:
    import datasets

    dataset = datasets.load_from_disk(path)
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset["train"] if "train" in dataset else next(iter(dataset.values()))
    yield from _iter_dataset_column(dataset, text_field, path)


def _iter_hub_dataset(name: str, text_field: str) -> Iterator[str]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split="train", streaming=True)
    except Exception as error:  # the Hub raises many kinds; the user needs the name and the cause
        raise InputError(f"{name}: not a file, folder or glob, and not loadable as a Hub dataset ({error})") from error
    yield from _iter_dataset_column(dataset, text_field, name)


def _iter_dataset_column(dataset, text_field: str, name: str) -> Iterator[str]:
    for index, record in enumerate(dataset):
        yield _field(record, text_field, f"{name}[{index}]")


def _field(record, text_field: str, where: str) -> str:
    if not isinstance(record, dict) or text_field not in record:
        raise InputError(f"{where}: record has no {text_field!r} field")
    value = record[text_field]
    if not isinstance(value, str):
        raise InputError(f"{where}: field {text_field!r} is {type(value).__name__}, not a string")
    return value
