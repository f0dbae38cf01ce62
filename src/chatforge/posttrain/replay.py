"""Replay of pretraining text during fine-tuning, against forgetting.

Fine-tuning a small model on conversations at a usual learning rate overwrites what pretraining stored:
facts it could complete before are gone after a few hundred steps. Mixing rows of the pretraining token
shards (``chatforge data tokenize``) into the training set, with the loss on every token, keeps them. The
rows are packed like the conversations (no attention across documents) and make up a chosen share of the
training rows, repeated where the shards hold fewer.
"""

import datasets
import numpy as np
from trl.data_utils import pack_dataset

from ..data.shards import TokenShards
from ..errors import InvalidValue


def shard_rows(shards: TokenShards, max_length: int, packing_strategy: str | None) -> datasets.Dataset:
    """The shards' documents as training rows of at most ``max_length`` tokens (``input_ids`` and ``labels``):
    long documents cut into pieces, then packed with ``packing_strategy`` (None: a row per piece)."""
    pieces = [piece.tolist() for document in shards.documents()
              for piece in np.split(document.astype(np.int64), range(max_length, len(document), max_length))]
    if not pieces:
        raise InvalidValue(f"{shards.folder}: the {shards.split} split holds no documents")
    rows = datasets.Dataset.from_dict({"input_ids": pieces, "labels": pieces})
    return pack_dataset(rows, max_length, packing_strategy) if packing_strategy else rows


def check_compatible(shards: TokenShards, tokenizer, vocab_size: int) -> None:
    """Raise ``ValueError`` where the shards were not tokenized for this model (other EOS, ids beyond its
    embeddings)."""
    where = f"replay_shards={shards.folder} (tokenizer {shards.meta.get('tokenizer')})"
    if shards.meta["eos_token_id"] != tokenizer.eos_token_id:
        raise InvalidValue(f"{where}: EOS id {shards.meta['eos_token_id']}, the model's tokenizer has "
                           f"{tokenizer.eos_token_id}; tokenize the text with the model's tokenizer "
                           "(chatforge data tokenize --tokenizer MODEL)")
    if shards.meta["vocab_size"] > vocab_size:
        raise InvalidValue(f"{where}: a vocabulary of {shards.meta['vocab_size']} ids, the model embeds "
                           f"{vocab_size}; tokenize the text with the model's tokenizer")


def mix_in(train: datasets.Dataset, replay: datasets.Dataset, fraction: float, seed: int) -> datasets.Dataset:
    """``train`` with rows of ``replay`` added so that they make up ``fraction`` of the result, shuffled."""
    if not 0 < fraction < 1:
        raise InvalidValue(f"replay_fraction={fraction}: give a share between 0 and 1 (exclusive)")
    missing = set(train.column_names) - set(replay.column_names)
    if missing:
        raise InvalidValue(f"replay rows lack the training rows' columns {sorted(missing)}")
    wanted = round(len(train) * fraction / (1 - fraction))
    order = np.random.default_rng(seed).permutation(len(replay))
    replay = replay.select(np.resize(order, wanted)).select_columns(train.column_names).cast(train.features)
    return datasets.concatenate_datasets([train, replay]).shuffle(seed=seed)
