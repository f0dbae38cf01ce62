import json

import numpy as np
import pytest

from chatforge.data.shards import TokenShards, token_dtype, tokenize_to_shards


@pytest.fixture
def corpus(tmp_path, documents):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in documents[:300]), encoding="utf-8")
    return path


@pytest.fixture
def tokenizer_dir(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    return tmp_path / "tokenizer"


def test_shards_hold_every_document_followed_by_eos(tmp_path, corpus, tokenizer_dir, tokenizer, documents):
    meta = tokenize_to_shards(str(tokenizer_dir), [str(corpus)], tmp_path / "shards", val_fraction=0.1,
                              workers=2, shard_tokens=20_000)
    train, val = TokenShards(tmp_path / "shards", "train"), TokenShards(tmp_path / "shards", "val")
    assert len(train.arrays) > 1 and train.arrays[0].dtype == np.uint16  # several shards of ~20k tokens
    decoded = [tokenizer.decode(doc) for split in (train, val) for doc in split.documents()]
    assert sorted(decoded) == sorted(text + "<|endoftext|>" for text in documents[:300])
    assert 10 <= meta["splits"]["val"]["documents"] <= 50
    assert train.num_tokens == meta["splits"]["train"]["tokens"]


def test_split_is_seeded_and_rerun_is_a_no_op(tmp_path, corpus, tokenizer_dir):
    first = tokenize_to_shards(str(tokenizer_dir), [str(corpus)], tmp_path / "a", val_fraction=0.2, seed=1)
    again = tokenize_to_shards(str(tokenizer_dir), [str(corpus)], tmp_path / "b", val_fraction=0.2, seed=1)
    other = tokenize_to_shards(str(tokenizer_dir), [str(corpus)], tmp_path / "c", val_fraction=0.2, seed=2)
    assert first["splits"] == again["splits"] and first["splits"] != other["splits"]
    stamp = (tmp_path / "a" / "train_000000.bin").stat().st_mtime_ns
    assert tokenize_to_shards(str(tokenizer_dir), [str(corpus)], tmp_path / "a") == first
    assert (tmp_path / "a" / "train_000000.bin").stat().st_mtime_ns == stamp


def test_large_vocabularies_use_uint32():
    assert token_dtype(50_304) == np.uint16 and token_dtype(65_536) == np.uint16
    assert token_dtype(100_277) == np.uint32


def test_a_truncated_shard_is_detected(tmp_path, corpus, tokenizer_dir):
    tokenize_to_shards(str(tokenizer_dir), [str(corpus)], tmp_path / "shards")
    shard = tmp_path / "shards" / "train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match="train_000000.bin: holds .* tokens, meta.json says"):
        TokenShards(tmp_path / "shards")


def test_bad_record_names_the_file_and_line_and_writes_nothing(tmp_path, tokenizer_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"content": "no text"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: record has no 'text' field"):
        tokenize_to_shards(str(tokenizer_dir), [str(bad)], tmp_path / "shards")
    assert not (tmp_path / "shards").exists()


def test_a_stream_holds_out_its_first_documents_by_tokens_beside_a_presplit_corpus(tmp_path, corpus, tokenizer_dir,
                                                                                     documents):
    stream = tmp_path / "stream.jsonl"
    stream.write_text("".join(json.dumps({"text": text}) + "\n" for text in documents[300:400]), encoding="utf-8")
    local_train, local_val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    local_train.write_text("".join(corpus.read_text().splitlines(keepends=True)[:250]), encoding="utf-8")
    local_val.write_text("".join(corpus.read_text().splitlines(keepends=True)[250:]), encoding="utf-8")
    meta = tokenize_to_shards(str(tokenizer_dir), [str(stream)], tmp_path / "shards", val_tokens=2_000,
                              max_documents=90, train_sources=[str(local_train)], val_sources=[str(local_val)])
    val = list(TokenShards(tmp_path / "shards", "val").documents())
    train = list(TokenShards(tmp_path / "shards", "train").documents())
    held_out = len(val) - 50  # the corpus's 50 validation documents come first, then the stream's first ones
    stream_val_tokens = sum(len(doc) for doc in val[50:])
    assert stream_val_tokens >= 2_000 > stream_val_tokens - len(val[-1])  # just enough whole documents
    assert len(train) == 250 + 90 - held_out  # the corpus's train documents, then the rest of the 90 streamed
    assert meta["splits"]["val"]["tokens"] == sum(len(doc) for doc in val)
    with pytest.raises(ValueError, match="val_tokens must be at least 0"):
        tokenize_to_shards(str(tokenizer_dir), [str(stream)], tmp_path / "other", val_tokens=-1)


def test_token_counts_are_kept_as_the_shards_are_written(tmp_path, corpus, tokenizer_dir):
    tokenize_to_shards(str(tokenizer_dir), [str(corpus)], tmp_path / "shards", val_fraction=0.2, shard_tokens=5_000)
    for split in ("train", "val"):
        shards = TokenShards(tmp_path / "shards", split)
        counted = np.bincount(np.concatenate([np.asarray(a) for a in shards.arrays]),
                              minlength=shards.meta["vocab_size"])
        assert np.array_equal(shards.token_counts(), counted) and counted.sum() == shards.num_tokens
        (tmp_path / "shards" / f"{split}_counts.npy").unlink()  # a folder written before counts were kept
        assert np.array_equal(shards.token_counts(), counted)
