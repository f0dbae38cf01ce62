"""Train a ChatForge byte-level BPE tokenizer with the ``tokenizers`` library."""

import itertools
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from ..data.text_sources import iter_documents
from ..errors import InvalidValue
from ..io import atomic_directory
from .tokenization_chatforge import (
    CHAT_TEMPLATE,
    ENDOFTEXT,
    PAD,
    SPECIAL_TOKENS,
    ChatForgeTokenizer,
)


def split_pattern(max_number_digits: int = 3) -> str:
    """GPT-4 (cl100k) pre-tokenization: contractions, words with one leading non-letter, numbers in runs of
    at most ``max_number_digits`` digits (3 in GPT-4; 1 splits every digit, as Llama 2 and Qwen do),
    punctuation runs, newlines and other whitespace are split before BPE merges."""
    if max_number_digits < 1:
        raise InvalidValue(f"max_number_digits={max_number_digits} must be at least 1")
    return (
        rf"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|\p{{N}}{{1,{max_number_digits}}}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )


GPT4_SPLIT_PATTERN = split_pattern(3)
BYTE_ALPHABET_SIZE = 256


def build_backend(max_number_digits: int = 3) -> Tokenizer:
    """An untrained byte-level BPE: GPT-4 regex split, then bytes mapped to printable characters."""
    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_pattern(max_number_digits)), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    model_max_length: int = 1024,
    show_progress: bool = True,
    max_number_digits: int = 3,
) -> ChatForgeTokenizer:
    """Learn BPE merges from ``texts``; the vocabulary holds the special tokens, all 256 bytes and merges.
    No token spans more than ``max_number_digits`` digits (see :func:`split_pattern`)."""
    minimum = len(SPECIAL_TOKENS) + BYTE_ALPHABET_SIZE
    if vocab_size < minimum:
        raise InvalidValue(
            f"vocab_size={vocab_size} is smaller than the {len(SPECIAL_TOKENS)} special tokens plus "
            f"{BYTE_ALPHABET_SIZE} bytes ({minimum})"
        )
    backend = build_backend(max_number_digits)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return ChatForgeTokenizer(
        tokenizer_object=backend,
        eos_token=ENDOFTEXT,
        pad_token=PAD,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in (ENDOFTEXT, PAD)],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )


def bytes_per_token(tokenizer: ChatForgeTokenizer, texts: Iterable[str]) -> float:
    """Compression: UTF-8 bytes of ``texts`` per token."""
    n_bytes = n_tokens = 0
    for text in texts:
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(tokenizer.encode(text, add_special_tokens=False))
    return n_bytes / max(n_tokens, 1)


def _limit_chars(texts: Iterable[str], max_chars: int | None) -> Iterator[str]:
    seen = 0
    for text in texts:
        if max_chars is not None and seen >= max_chars:
            return
        yield text if max_chars is None else text[: max_chars - seen]
        seen += len(text)


def train_tokenizer_from_sources(
    sources: list[str],
    output_dir: str | Path,
    vocab_size: int,
    text_field: str = "text",
    max_chars: int | None = None,
    min_frequency: int = 2,
    max_number_digits: int = 3,
) -> tuple[ChatForgeTokenizer, dict]:
    """Train on files/folders/datasets, save to ``output_dir`` atomically, return it with a summary."""
    start = time.perf_counter()
    documents = _limit_chars(iter_documents(sources, text_field), max_chars)
    tokenizer = train_tokenizer(documents, vocab_size, min_frequency=min_frequency,
                                max_number_digits=max_number_digits)
    with atomic_directory(output_dir) as tmp_dir:
        tokenizer.save_pretrained(tmp_dir)
    sample = list(itertools.islice(_limit_chars(iter_documents(sources, text_field), 1_000_000), 10_000))
    summary = {
        "vocab_size": len(tokenizer),
        "bytes_per_token": round(bytes_per_token(tokenizer, sample), 3),
        "seconds": round(time.perf_counter() - start, 1),
        "output_dir": str(output_dir),
    }
    return tokenizer, summary
