"""Data collators for pretraining, chat SFT and reward modelling; usable as ``data_collator`` of
transformers' Trainer and TRL's trainers."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from ..errors import InvalidValue, MissingField

IGNORE_INDEX = -100


def _pad(rows: Sequence[Sequence[int]], value: int, multiple_of: int | None = None) -> torch.Tensor:
    width = max(len(row) for row in rows)
    if multiple_of:
        width = -(-width // multiple_of) * multiple_of
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def _pad_with_mask(rows: Sequence[Sequence[int]], pad_id: int, multiple_of: int | None) -> dict[str, torch.Tensor]:
    return {
        "input_ids": _pad(rows, pad_id, multiple_of),
        "attention_mask": _pad([[1] * len(row) for row in rows], 0, multiple_of),
    }


def _require_pad_token(tokenizer: PreTrainedTokenizerBase, collator: str) -> int:
    if tokenizer.pad_token_id is None:
        raise InvalidValue(f"{collator}: the tokenizer has no pad token; set tokenizer.pad_token first")
    return tokenizer.pad_token_id


@dataclass
class DataCollatorForPackedPretraining:
    """Pack documents into ``seq_len`` rows for next-token prediction without cross-document attention.

    Each example is a document ``{"input_ids": [...]}``; ``eos_token_id`` is appended to each, the
    stream is cut into rows of ``seq_len`` tokens, and ``position_ids`` restart at 0 at every document
    (and row) start, so ChatForge and other transformers models with packed-sequence masking attend
    only within a document. The first token of each segment has no context and gets label -100, as
    does the padding of the last row. No ``attention_mask`` is returned: the positions define it.
    """

    eos_token_id: int
    pad_token_id: int
    seq_len: int

    def __post_init__(self):
        if self.seq_len < 2:
            raise InvalidValue(f"seq_len must be at least 2, got {self.seq_len}")

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tokens: list[int] = []
        positions: list[int] = []
        for index, example in enumerate(examples):
            if "input_ids" not in example:
                raise MissingField(f"example {index} has no 'input_ids' (keys: {sorted(example)})")
            document = [*example["input_ids"], self.eos_token_id]
            tokens.extend(document)
            positions.extend(range(len(document)))
        n_rows = -(-len(tokens) // self.seq_len)
        n_pad = n_rows * self.seq_len - len(tokens)
        tokens.extend([self.pad_token_id] * n_pad)
        positions.extend(range(n_pad))
        input_ids = torch.tensor(tokens, dtype=torch.long).view(n_rows, self.seq_len)
        position_ids = torch.tensor(positions, dtype=torch.long).view(n_rows, self.seq_len)
        # A row that starts inside a document restarts its positions: the row cannot see the earlier part.
        first_segment = torch.cumsum(position_ids == 0, dim=1) == 0
        offsets = position_ids[:, :1]
        position_ids = torch.where(first_segment, position_ids - offsets, position_ids)
        labels = input_ids.clone()
        labels[position_ids == 0] = IGNORE_INDEX
        if n_pad:
            labels.view(-1)[-n_pad:] = IGNORE_INDEX
        return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}


@dataclass
class DataCollatorForChat:
    """Tokenize conversations with the chat template; labels only on the assistant's tokens.

    Examples hold ``messages`` (a list of ``{"role", "content"}``, with the ``tools`` they may call as JSON
    schemas beside them) or are already tokenized with
    ``input_ids`` and ``assistant_masks`` (as ``apply_chat_template(..., return_assistant_tokens_mask=True)``
    returns them). Every non-assistant token, and padding, gets label -100. The template must mark
    assistant content with ``{% generation %}``, as ChatForge's does.
    """

    tokenizer: PreTrainedTokenizerBase
    max_length: int | None = None
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pad_id = _require_pad_token(self.tokenizer, type(self).__name__)
        ids_rows, label_rows = [], []
        for index, example in enumerate(examples):
            input_ids, mask = self._tokenize(example, index)
            if self.max_length is not None:
                input_ids, mask = input_ids[: self.max_length], mask[: self.max_length]
            ids_rows.append(input_ids)
            label_rows.append([tok if m else IGNORE_INDEX for tok, m in zip(input_ids, mask)])
        batch = _pad_with_mask(ids_rows, pad_id, self.pad_to_multiple_of)
        batch["labels"] = _pad(label_rows, IGNORE_INDEX, self.pad_to_multiple_of)
        return batch

    def _tokenize(self, example: dict[str, Any], index: int) -> tuple[list[int], list[int]]:
        if "input_ids" in example and "assistant_masks" in example:
            return list(example["input_ids"]), list(example["assistant_masks"])
        if "messages" not in example:
            raise MissingField(f"example {index} has neither 'messages' nor 'input_ids'+'assistant_masks'")
        if not any(m.get("role") == "assistant" for m in example["messages"]):
            raise InvalidValue(f"example {index}: conversation has no assistant message to train on")
        encoded = self.tokenizer.apply_chat_template(
            example["messages"], tools=example.get("tools"), tokenize=True, return_dict=True,
            return_assistant_tokens_mask=True
        )
        if not any(encoded["assistant_masks"]):
            raise InvalidValue(
                f"example {index}: the chat template marks no assistant tokens; "
                "it needs {% generation %} ... {% endgeneration %} around assistant content"
            )
        return list(encoded["input_ids"]), list(encoded["assistant_masks"])


@dataclass
class DataCollatorForPreference:
    """Batches of (prompt, chosen, rejected) for reward modelling, in TRL's RewardTrainer layout.

    Examples hold ``prompt``/``chosen``/``rejected`` as text, or conversationally (``prompt`` a list of
    messages, ``chosen``/``rejected`` lists of assistant messages), or are tokenized as
    ``chosen_ids``/``rejected_ids``. Returns ``input_ids``/``attention_mask`` with the chosen
    sequences in the first half of the batch and the rejected ones in the second (plus ``margin``
    when examples have one). Text completions end with the EOS token.
    """

    tokenizer: PreTrainedTokenizerBase
    max_length: int | None = None
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pad_id = _require_pad_token(self.tokenizer, type(self).__name__)
        chosen, rejected = zip(*(self._tokenize(example, index) for index, example in enumerate(examples)))
        batch = _pad_with_mask([*chosen, *rejected], pad_id, self.pad_to_multiple_of)
        if "margin" in examples[0]:
            batch["margin"] = torch.tensor([float(example["margin"]) for example in examples])
        return batch

    def _tokenize(self, example: dict[str, Any], index: int) -> tuple[list[int], list[int]]:
        if "chosen_ids" in example and "rejected_ids" in example:
            pair = list(example["chosen_ids"]), list(example["rejected_ids"])
        else:
            missing = {"chosen", "rejected"} - set(example)
            if missing:
                raise MissingField(f"example {index} lacks {sorted(missing)} (keys: {sorted(example)})")
            prompt = example.get("prompt", [] if isinstance(example["chosen"], list) else "")
            pair = self._encode(prompt, example["chosen"]), self._encode(prompt, example["rejected"])
        if self.max_length is not None:
            pair = pair[0][: self.max_length], pair[1][: self.max_length]
        return pair

    def _encode(self, prompt, completion) -> list[int]:
        if isinstance(completion, list):
            return list(self.tokenizer.apply_chat_template([*prompt, *completion], tokenize=True, return_dict=False))
        ids = self.tokenizer.encode(prompt + completion, add_special_tokens=False)
        return ids + [self.tokenizer.eos_token_id]
