"""Data: document sources, embedded samples and collators."""

from pathlib import Path

from .collators import (
    IGNORE_INDEX,
    DataCollatorForChat,
    DataCollatorForPackedPretraining,
    DataCollatorForPreference,
)
from .text_sources import InputError, expand_sources, iter_documents

EMBEDDED_DIR = Path(__file__).parent / "embedded"
#: 1,000 real English Wikipedia paragraphs shipped with the package (CC BY-SA, see embedded/SOURCES.md).
EMBEDDED_WIKIPEDIA = EMBEDDED_DIR / "wikipedia_paragraphs.jsonl"

__all__ = [
    "EMBEDDED_DIR",
    "EMBEDDED_WIKIPEDIA",
    "IGNORE_INDEX",
    "DataCollatorForChat",
    "DataCollatorForPackedPretraining",
    "DataCollatorForPreference",
    "InputError",
    "expand_sources",
    "iter_documents",
]
