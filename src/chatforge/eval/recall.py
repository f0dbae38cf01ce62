"""Fact recall as plain-text completion, at the start of a document and after an unrelated sentence.

A cloze item is an opening such as "Falol Corpra was born in" with the answer that should follow, or a
list of answers any of which is right (the town or the year). A model that knows the fact completes it
wherever the opening stands; a model that has only memorised how certain documents begin completes it at
the start of a document and fails once anything precedes it. Run before and
after fine-tuning, the same items show whether the fine-tuning kept what pretraining taught.
"""

from collections.abc import Sequence

from tqdm.auto import tqdm

from ..errors import InvalidValue
from ..inference.engine import Engine, SamplingParams

#: What precedes the opening in the "after a sentence" placement: true, ordinary and unrelated to any item.
DISTRACTOR = "The river rises in the hills and reaches the sea after many miles."


def _answers(item: dict) -> list[str]:
    answer = item["answer"]
    return [str(a) for a in answer] if isinstance(answer, list) else [str(answer)]


def cloze_recall(engine: Engine, items: Sequence[dict], distractor: str = DISTRACTOR, max_new_tokens: int = 8,
                 batch_size: int = 32) -> dict:
    """Share of items (``prompt``, ``answer`` or a list of them, optional ``group``) whose greedy completion
    contains an answer, with the opening at the start of the document (after BOS where the tokenizer has
    one) and after ``distractor``: per group, over ``all`` items, and a few examples."""
    if not items:
        raise InvalidValue("cloze recall needs at least one item")
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    openings = {"start": [item["prompt"] for item in items],
                "after_sentence": [f"{distractor} {item['prompt']}" for item in items]}
    completions, hits = {}, {}
    for placement, prompts in openings.items():
        completions[placement] = [batch[0] for start in tqdm(range(0, len(prompts), batch_size),
                                                             desc=f"recall ({placement})", leave=False)
                                  for batch in engine.complete(prompts[start:start + batch_size], params,
                                                               add_special_tokens=True)]
        hits[placement] = [any(answer.lower() in completion.lower() for answer in _answers(item))
                           for item, completion in zip(items, completions[placement])]

    def accuracies(rows: list[int]) -> dict:
        return {"items": len(rows), **{f"{placement}_accuracy": sum(hits[placement][i] for i in rows) / len(rows)
                                       for placement in openings}}

    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.get("group", "all"), []).append(index)
    examples = [{"prompt": item["prompt"], "answer": item["answer"],
                 **{placement: completions[placement][index] for placement in openings}}
                for index, item in enumerate(items[:3])]
    return {**{name: accuracies(rows) for name, rows in groups.items()}, "all": accuracies(list(range(len(items)))),
            "examples": examples}
