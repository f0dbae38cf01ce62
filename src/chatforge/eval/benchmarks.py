"""Hub benchmarks for networked runs: HellaSwag and ARC scored by the log-likelihood of each choice (as
lm-evaluation-harness does), GSM8K by the checked final answer of greedy and sampled replies."""

from collections.abc import Sequence

import datasets
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..inference.engine import Engine
from ..tasks.verifiable import problem_record
from .problems import problem_accuracy

HUB_SOURCES = {
    "hellaswag": ("Rowan/hellaswag", None, "validation"),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"),
    "gsm8k": ("openai/gsm8k", "main", "test"),
}
BENCHMARKS = tuple(HUB_SOURCES)


def hellaswag_item(record: dict) -> dict:
    context = f"{record['activity_label']}: {record['ctx']}"
    return {"context": context, "choices": [" " + ending for ending in record["endings"]],
            "label": int(record["label"])}


def arc_item(record: dict) -> dict:
    choices = record["choices"]
    return {"context": f"Question: {record['question']}\nAnswer:", "choices": [" " + text for text in choices["text"]],
            "label": choices["label"].index(record["answerKey"])}


@torch.no_grad()
def multiple_choice_accuracy(model, tokenizer, items: Sequence[dict]) -> dict:
    """``acc``: the choice with the highest summed log-likelihood after the context is the labelled one;
    ``acc_norm``: the same with the log-likelihood per character of the choice."""
    model.eval()
    device = next(model.parameters()).device
    right = right_norm = 0
    for item in tqdm(items, desc="multiple choice", leave=False):
        context = tokenizer(item["context"], add_special_tokens=True)["input_ids"]
        rows = [context + tokenizer(choice, add_special_tokens=False)["input_ids"] for choice in item["choices"]]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(rows):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            mask[row, :len(ids)] = 1
        logprobs = F.log_softmax(model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float(),
                                 dim=-1)
        scores = []
        for row, ids in enumerate(rows):
            targets = torch.tensor(ids[len(context):], device=device)
            positions = torch.arange(len(context) - 1, len(ids) - 1, device=device)
            scores.append(logprobs[row, positions, targets].sum().item())
        normed = [score / max(1, len(choice)) for score, choice in zip(scores, item["choices"])]
        right += max(range(len(scores)), key=scores.__getitem__) == item["label"]
        right_norm += max(range(len(normed)), key=normed.__getitem__) == item["label"]
    count = max(1, len(items))
    return {"acc": right / count, "acc_norm": right_norm / count, "items": len(items)}


def load_hub_records(name: str, limit: int) -> list[dict]:
    path, config, split = HUB_SOURCES[name]
    try:
        records = datasets.load_dataset(path, config, split=split)
    except Exception as error:  # offline, gated or renamed: say which benchmark and what was tried
        raise RuntimeError(f"benchmark {name!r}: could not load {path} ({config or 'default'}, {split}) from the "
                           f"Hub: {type(error).__name__}: {error}. Hub benchmarks need a network.") from error
    return [dict(record) for record in records.select(range(min(limit, len(records))))]


def run(name: str, engine: Engine, limit: int, k: int, max_new_tokens: int, seed: int) -> dict:
    """The benchmark ``name`` on its first ``limit`` Hub records."""
    records = load_hub_records(name, limit)
    if name == "gsm8k":
        problems = [problem_record(record, f"{name} record {i}") for i, record in enumerate(records)]
        return problem_accuracy(engine, problems, k=k, max_new_tokens=max_new_tokens, seed=seed)
    to_item = hellaswag_item if name == "hellaswag" else arc_item
    return multiple_choice_accuracy(engine.model, engine.tokenizer, [to_item(record) for record in records])
