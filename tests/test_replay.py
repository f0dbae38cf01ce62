import json

import datasets
import pytest

from chatforge.data.shards import TokenShards, tokenize_to_shards
from chatforge.posttrain.replay import check_compatible, mix_in, shard_rows


@pytest.fixture
def shards(tmp_path, tokenizer, documents):
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in documents[:40]))
    tokenize_to_shards(str(tmp_path / "tokenizer"), [str(tmp_path / "docs.jsonl")], tmp_path / "shards",
                       val_fraction=0)
    return TokenShards(tmp_path / "shards")


def test_shard_rows_cut_long_documents_and_pack_every_token(shards):
    tokens = sum(len(document) for document in shards.documents())
    pieces = shard_rows(shards, 32, None)
    assert max(len(row) for row in pieces["input_ids"]) == 32 and pieces["labels"] == pieces["input_ids"]
    packed = shard_rows(shards, 32, "bfd")
    assert len(packed) < len(pieces) and sum(map(len, packed["input_ids"])) == tokens == sum(
        map(len, pieces["input_ids"]))
    assert all(sum(lengths) == len(row) for lengths, row in zip(packed["seq_lengths"], packed["input_ids"]))


def test_replayed_rows_make_up_the_fraction_asked_for_repeating_where_too_few(shards):
    replay = shard_rows(shards, 32, None)
    train = datasets.Dataset.from_dict({"input_ids": [[1, 2]] * (3 * len(replay)),
                                        "labels": [[-100, 2]] * (3 * len(replay))})
    mixed = mix_in(train, replay, 0.5, seed=0)
    assert len(mixed) == 6 * len(replay)
    replayed = [row for row in mixed["input_ids"] if row != [1, 2]]
    assert len(replayed) == 3 * len(replay) and {tuple(r) for r in replayed} == {tuple(r) for r in replay["input_ids"]}
    with pytest.raises(ValueError, match="replay_fraction=1"):
        mix_in(train, replay, 1, seed=0)
    with pytest.raises(ValueError, match=r"columns \['seq_lengths'\]"):
        mix_in(train.add_column("seq_lengths", [[2]] * len(train)), replay, 0.5, seed=0)


def test_shards_of_another_tokenizer_are_refused_naming_the_folder(shards, tokenizer, tmp_path):
    check_compatible(shards, tokenizer, len(tokenizer))
    with pytest.raises(ValueError, match=f"{tmp_path / 'shards'}.*vocabulary of {shards.meta['vocab_size']}"):
        check_compatible(shards, tokenizer, 100)
    other = tokenizer.__class__.from_pretrained(tmp_path / "tokenizer", eos_token="<|im_end|>")
    with pytest.raises(ValueError, match="EOS id"):
        check_compatible(shards, other, len(other))
