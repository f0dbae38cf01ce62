"""Token shards: documents tokenized into flat binary files that pretraining memory-maps.

Layout of a shard folder::

    meta.json                  dtype, vocab size, EOS id, tokenizer, and per split its shards and counts
    train_counts.npy           how often each token id occurs in the split (val_counts.npy likewise)
    train_000000.bin           token ids (uint16 when the vocabulary fits, else uint32), EOS after each document
    train_000000.docs.npy      int64 offsets where each document starts in that shard
    val_000000.bin ...

Documents go to ``val`` by a seeded hash of their position, so the split is stable when inputs grow; or, for a
stream read once, its first documents up to a number of tokens.
"""

import contextlib
import hashlib
import itertools
import json
import multiprocessing
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import InvalidValue, NotFound
from ..io import atomic_directory, atomic_write_text
from .text_sources import iter_documents

SPLITS = ("train", "val")
META_FILE = "meta.json"
#: ``<split>_counts.npy``: how often each token id occurs in the split, counted as the shards were written.
COUNTS_SUFFIX = "_counts.npy"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def is_validation(index: int, val_fraction: float, seed: int) -> bool:
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


_worker_tokenizer = None


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tokenizer
    from transformers import AutoTokenizer

    _worker_tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)


def _encode(tokenizer, batch: list[tuple[str, str]]) -> list[tuple[str, list[int]]]:
    ids = tokenizer([text for _, text in batch], add_special_tokens=False, verbose=False)["input_ids"]
    return [(split, tokens + [tokenizer.eos_token_id]) for (split, _), tokens in zip(batch, ids)]


def _encode_batch(batch: list[tuple[str, str]]) -> list[tuple[str, list[int]]]:
    return _encode(_worker_tokenizer, batch)


#: The split of a document of ``sources`` held out by token count: validation until ``val_tokens`` are held out.
HELD_OUT = "held out"


def _split_documents(documents: Iterable[str], val_fraction: float, seed: int, val_tokens: int | None,
                     train_documents: Iterable[str], val_documents: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(split, text): the pre-split documents first, then those of ``documents``, whose split a seeded hash of
    each one's position decides (or, with ``val_tokens``, :data:`HELD_OUT`: the token count decides)."""
    yield from (("train", text) for text in train_documents)
    yield from (("val", text) for text in val_documents)
    for index, text in enumerate(documents):
        if val_tokens is not None:
            yield HELD_OUT, text
        else:
            yield ("val" if is_validation(index, val_fraction, seed) else "train"), text


def _batches(documents: Iterable[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    batch = []
    for item in documents:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _ShardWriter:
    """Appends documents to ``<split>_NNNNNN.bin`` files of at most ``shard_tokens`` tokens."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int, vocab_size: int):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.counts = np.zeros(vocab_size, dtype=np.int64)  # how often each token id occurs in the split
        self.shards: list[dict] = []
        self.buffer: list[np.ndarray] = []
        self.offsets: list[int] = []
        self.buffered = 0
        self.documents = 0
        self.tokens = 0

    def add(self, tokens: list[int]) -> None:
        self.offsets.append(self.buffered)
        self.buffer.append(np.asarray(tokens, dtype=self.dtype))
        self.buffered += len(tokens)
        self.documents += 1
        self.tokens += len(tokens)
        if self.buffered >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        name = f"{self.split}_{len(self.shards):06d}"
        tokens = np.concatenate(self.buffer)
        tokens.tofile(self.folder / f"{name}.bin")
        self.counts += np.bincount(tokens, minlength=len(self.counts))
        np.save(self.folder / f"{name}.docs.npy", np.asarray(self.offsets, dtype=np.int64))
        self.shards.append({"file": f"{name}.bin", "tokens": self.buffered, "documents": len(self.offsets)})
        self.buffer, self.offsets, self.buffered = [], [], 0


def tokenize_to_shards(tokenizer_dir: str, sources: list[str], output_dir: str | Path, text_field: str = "text",
                       val_fraction: float = 0.005, seed: int = 0, workers: int = 1,
                       shard_tokens: int = 100_000_000, batch_size: int = 256,
                       max_documents: int | None = None, val_tokens: int | None = None,
                       train_sources: list[str] = (), val_sources: list[str] = ()) -> dict:
    """Tokenize the documents of ``sources`` (at most ``max_documents``) into train/val shards; a finished folder
    is left as is. ``val_fraction`` of them go to validation by a seeded hash of their position, or, with
    ``val_tokens``, their first documents until those hold ``val_tokens`` tokens (the held-out share of a stream
    that is read once). ``train_sources`` and ``val_sources`` are already split: all train, all validation."""
    from transformers import AutoTokenizer

    output_dir = Path(output_dir)
    if (output_dir / META_FILE).exists():
        return json.loads((output_dir / META_FILE).read_text())
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidValue(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_tokens is not None and val_tokens < 0:
        raise InvalidValue(f"val_tokens must be at least 0, got {val_tokens}")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.eos_token_id is None:
        raise InvalidValue(f"{tokenizer_dir}: the tokenizer has no EOS token to separate documents")
    dtype = token_dtype(len(tokenizer))
    start = time.perf_counter()
    with atomic_directory(output_dir) as tmp_dir:
        writers = {split: _ShardWriter(tmp_dir, split, dtype, shard_tokens, len(tokenizer)) for split in SPLITS}
        documents = itertools.islice(iter_documents(sources, text_field), max_documents)
        batches = _batches(_split_documents(documents, val_fraction, seed, val_tokens,
                                            iter_documents(train_sources, text_field),
                                            iter_documents(val_sources, text_field)), batch_size)
        held_out = 0
        with contextlib.ExitStack() as stack:
            if workers > 1:
                pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(
                    workers, _init_worker, (str(tokenizer_dir),)))
                encoded_batches = pool.imap(_encode_batch, batches)
            else:  # here: a worker process would spend seconds importing the package afresh
                encoded_batches = (_encode(tokenizer, batch) for batch in batches)
            progress = stack.enter_context(tqdm(desc="tokenizing", unit=" tok", unit_scale=True))
            for encoded in encoded_batches:
                for split, tokens in encoded:
                    if split == HELD_OUT:
                        split = "val" if held_out < val_tokens else "train"
                        held_out += len(tokens) if split == "val" else 0
                    writers[split].add(tokens)
                    progress.update(len(tokens))
                elapsed = time.perf_counter() - start
                progress.set_postfix(docs=sum(w.documents for w in writers.values()),
                                     tok_per_s=f"{progress.n / max(elapsed, 1e-9):,.0f}")
        for writer in writers.values():
            writer.flush()
            np.save(tmp_dir / f"{writer.split}{COUNTS_SUFFIX}", writer.counts)
        if writers["train"].tokens == 0:
            raise InvalidValue(f"{[*train_sources, *sources]}: no documents to tokenize")
        meta = {
            "dtype": dtype.name,
            "vocab_size": len(tokenizer),
            "eos_token_id": tokenizer.eos_token_id,
            "tokenizer": str(tokenizer_dir),
            "sources": list(sources),
            "train_sources": list(train_sources),
            "val_sources": list(val_sources),
            "val_fraction": val_fraction,
            "val_tokens": val_tokens,
            "seed": seed,
            "splits": {split: {"documents": w.documents, "tokens": w.tokens, "shards": w.shards}
                       for split, w in writers.items()},
            "seconds": round(time.perf_counter() - start, 2),
        }
        atomic_write_text(tmp_dir / META_FILE, json.dumps(meta, indent=2))
    return meta


@dataclass
class TokenShards:
    """Read access to one split of a shard folder: memory-mapped token arrays and document offsets."""

    folder: Path
    split: str = "train"

    def __post_init__(self):
        self.folder = Path(self.folder)
        meta_path = self.folder / META_FILE
        if not meta_path.exists():
            raise NotFound(f"{self.folder}: no {META_FILE}; not a finished token shard folder")
        self.meta = json.loads(meta_path.read_text())
        if self.split not in self.meta["splits"]:
            raise InvalidValue(f"{self.folder}: no split {self.split!r} (splits: {sorted(self.meta['splits'])})")
        dtype = np.dtype(self.meta["dtype"])
        self.arrays = []
        for shard in self.meta["splits"][self.split]["shards"]:
            path = self.folder / shard["file"]
            array = np.memmap(path, dtype=dtype, mode="r")
            if len(array) != shard["tokens"]:
                raise InvalidValue(f"{path}: holds {len(array)} tokens, meta.json says {shard['tokens']}")
            self.arrays.append(array)

    @property
    def num_tokens(self) -> int:
        return sum(len(array) for array in self.arrays)

    def token_counts(self) -> np.ndarray:
        """How often each token id occurs in this split: as counted when the shards were written, or (a folder
        written before those counts were kept) counted now, over every token."""
        path = self.folder / f"{self.split}{COUNTS_SUFFIX}"
        if path.exists():
            return np.load(path)
        return sum(np.bincount(array, minlength=self.meta["vocab_size"]) for array in self.arrays)

    def document_offsets(self, shard_index: int) -> np.ndarray:
        name = self.meta["splits"][self.split]["shards"][shard_index]["file"].removesuffix(".bin")
        return np.load(self.folder / f"{name}.docs.npy")

    def documents(self) -> Iterator[np.ndarray]:
        """Each document's tokens (EOS included), shard after shard."""
        for index, array in enumerate(self.arrays):
            offsets = self.document_offsets(index)
            ends = np.append(offsets[1:], len(array))
            for begin, end in zip(offsets, ends):
                yield array[begin:end]
