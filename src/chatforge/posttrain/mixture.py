"""A recipe's ``datasets:`` list (TRL ``DatasetMixtureConfig``), loaded with checks that name the entry at fault."""

from collections.abc import Mapping
from pathlib import Path

import datasets
from trl import DatasetMixtureConfig, get_dataset

from ..errors import InvalidValue, NotFound

#: Builders of ``datasets`` that read local files: without ``data_files`` or ``data_dir`` they read every
#: matching file under the current directory.
FILE_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


def _plain_paths(data_files) -> list[str]:
    """The entries of ``data_files`` that name one local file (no glob, no URL)."""
    if data_files is None:
        return []
    if isinstance(data_files, str):
        data_files = [data_files]
    elif isinstance(data_files, Mapping):
        data_files = [f for files in data_files.values() for f in ([files] if isinstance(files, str) else files)]
    return [f for f in data_files if "://" not in f and not any(c in f for c in "*?[")]


def check_mixture(mixture: DatasetMixtureConfig) -> None:
    """Raise ``ValueError``/``FileNotFoundError`` naming ``datasets[i]`` for an entry that cannot load as meant."""
    for number, entry in enumerate(mixture.datasets):
        where = f"datasets[{number}] (path: {entry.path})"
        if entry.path in FILE_BUILDERS and not (entry.data_files or entry.data_dir):
            raise InvalidValue(f"{where}: give data_files or data_dir; without them the {entry.path} loader reads "
                               f"every {entry.path} file under {Path.cwd()}")
        missing = [f for f in _plain_paths(entry.data_files) if not Path(f).exists()]
        if missing:
            raise NotFound(f"{where}: data file not found: {', '.join(missing)}")


def load_mixture(mixture: DatasetMixtureConfig) -> datasets.DatasetDict:
    """The mixture's splits, after :func:`check_mixture`."""
    if not mixture.datasets:
        raise InvalidValue("no datasets: give a `datasets:` list (TRL DatasetMixtureConfig) in the recipe")
    check_mixture(mixture)
    return get_dataset(mixture)
