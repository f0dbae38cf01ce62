"""In-context copying: the induction-head test of Olsson et al. (2022).

A sequence of random ordinary tokens is shown twice. On the first copy no model can do better than
chance; on the second, a model with induction heads looks back at what followed the same token before
and predicts it almost perfectly. The gap between the two losses (the induction score) tells whether a
model can copy from its context at all, which reading a tool's output, repeating a name from the
question and few-shot prompting all rest on.
"""

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import InvalidValue


def ordinary_token_ids(tokenizer) -> list[int]:
    """The ids of the vocabulary less the special and added tokens."""
    excluded = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    return [token_id for token_id in range(len(tokenizer)) if token_id not in excluded]


@torch.no_grad()
def repeated_sequence_copying(model, tokenizer, sequences: int = 100, length: int = 32, seed: int = 0,
                              batch_size: int = 16) -> dict:
    """Loss and greedy accuracy of next-token prediction on the first and on the second copy of random token
    sequences (after the tokenizer's BOS where it has one). Each batch draws its own length between
    ``length // 2`` and ``length``, so that looking back a fixed distance does not pass for copying. The
    second copy is scored from its second token on: its first token cannot be known to repeat."""
    if length < 4 or sequences < 1:
        raise InvalidValue(f"need at least 1 sequence of at least 4 tokens, got {sequences} of {length}")
    vocabulary = torch.tensor(ordinary_token_ids(tokenizer))
    generator = torch.Generator().manual_seed(seed)
    prefix = torch.tensor([] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id], dtype=torch.long)
    offset = len(prefix)
    model.eval()
    device = next(model.parameters()).device
    totals = {copy: {"nats": 0.0, "hits": 0, "tokens": 0} for copy in ("first", "second")}
    for start in tqdm(range(0, sequences, batch_size), desc="induction", leave=False):
        rows = min(batch_size, sequences - start)
        span = int(torch.randint(length // 2, length + 1, (), generator=generator))
        random = vocabulary[torch.randint(len(vocabulary), (rows, span), generator=generator)]
        input_ids = torch.cat([prefix.expand(rows, offset), random, random], dim=1)
        logits = model(input_ids=input_ids.to(device)).logits[:, :-1].float()
        targets = input_ids[:, 1:].to(device)
        # logits[:, i] predicts input_ids[:, i + 1]: the first copy's tokens 2..span, the second copy's 2..span
        scored = {"first": slice(offset, offset + span - 1), "second": slice(offset + span, offset + 2 * span - 1)}
        for copy, positions in scored.items():
            predicted, truth = logits[:, positions], targets[:, positions]
            totals[copy]["nats"] += F.cross_entropy(predicted.flatten(0, 1), truth.flatten(), reduction="sum").item()
            totals[copy]["hits"] += (predicted.argmax(-1) == truth).sum().item()
            totals[copy]["tokens"] += truth.numel()
    figures = {f"{copy}_copy_{name}": value for copy, total in totals.items() for name, value in
               (("loss", total["nats"] / total["tokens"]), ("accuracy", total["hits"] / total["tokens"]))}
    return {**figures, "induction_score": figures["first_copy_loss"] - figures["second_copy_loss"],
            "sequences": sequences, "length": length}
