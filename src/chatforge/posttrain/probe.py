"""``chatforge probe``: find out which factual questions a model can answer, and write SFT examples that
teach it to answer those and say "I don't know" to the rest (the Llama 3 factuality recipe).

    <output>/labels.jsonl     per question: the sampled answers, the share judged correct, known or not
    <output>/train.jsonl      SFT conversations: the reference reply where known, "I don't know …" where not
    <output>/summary.json     known share per group of questions
    <output>/held_out.jsonl   held-out questions (with ``held_out``), grouped ``known`` / ``unknown`` by the same
                              probe: the knowledge evaluation of the model trained on the examples
"""

import json
import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from ..errors import InvalidValue
from ..inference.engine import Engine, SamplingParams
from ..io import atomic_directory, write_jsonl
from ..tasks.world import dont_know_reply, is_correct


@dataclass(frozen=True)
class ProbeConfig:
    """``samples`` answers per question at ``temperature``; known when at least ``threshold`` are right. With
    ``unknown_below``, unknown only when fewer than that share are right: the questions in between, which the model
    sometimes answers, are unsure and left out of ``train.jsonl`` (neither answered nor declined).
    ``train.jsonl`` holds ``known_copies`` of each answered example and ``unknown_copies`` of each "I don't
    know": more answers than admissions keep the model from saying "I don't know" to what it knows. With
    ``known_share``, answers make up that share of each group's examples instead (its known ones copied as often as
    that takes): where one kind of question is known more often than another, the model would otherwise learn to
    answer that kind rather than what it knows."""

    samples: int = 4
    temperature: float = 0.7
    threshold: float = 0.5
    max_new_tokens: int = 32
    batch_size: int = 32
    seed: int = 0
    known_copies: int = 1
    unknown_copies: int = 1
    known_share: float | None = None
    unknown_below: float | None = None

    def __post_init__(self):
        if min(self.known_copies, self.unknown_copies) < 1:
            raise InvalidValue(f"known_copies={self.known_copies}, unknown_copies={self.unknown_copies}: give at "
                               "least one copy of each")
        if self.known_share is not None and not 0 < self.known_share < 1:
            raise InvalidValue(f"known_share={self.known_share}: give a share between 0 and 1 (exclusive)")
        if self.unknown_below is not None and not 0 < self.unknown_below <= self.threshold:
            raise InvalidValue(f"unknown_below={self.unknown_below}: give a share above 0 and at most threshold="
                               f"{self.threshold}")

    @classmethod
    def from_recipe(cls, recipe: Mapping) -> "ProbeConfig":
        """The settings an SFT recipe gives as ``probe_<field>`` keys (``probe_known_copies: 8``, ...)."""
        return cls(**{f.name: recipe[f"probe_{f.name}"] for f in fields(cls) if f"probe_{f.name}" in recipe})


#: The settings ``chatforge probe`` takes as options (``--known-copies``, ...).
COMMAND_OPTIONS = ("samples", "temperature", "threshold", "unknown_below", "known_copies", "unknown_copies",
                   "known_share", "seed")


def probe_command(model: str, questions: str, output: str, config: ProbeConfig, held_out: str | None = None) -> str:
    """The ``chatforge probe`` command line that probes ``model`` with ``config`` (its settings that differ from
    the defaults)."""
    options = [f"--{name.replace('_', '-')} {getattr(config, name)}" for name in COMMAND_OPTIONS
               if getattr(config, name) != getattr(ProbeConfig, name)]
    held = [f"--held-out {held_out}"] if held_out else []
    return " ".join(["chatforge probe --model", model, "--questions", questions, "--output", output, *held, *options])


def load_questions(source: str) -> list[dict]:
    """Questions with reference answers from a JSONL/parquet file or a Hub dataset (``question``, ``answer``;
    optional ``reply`` as the full reference reply, ``phrasings`` as other ways to ask it, ``dont_know`` as ways to
    say "I don't know" in the question's own terms, ``group``)."""
    if Path(source).exists():
        kind = "parquet" if source.endswith(".parquet") else "json"
        records = datasets.load_dataset(kind, data_files=source, split="train")
    else:
        records = datasets.load_dataset(source, split="train")
    missing = {"question", "answer"} - set(records.column_names)
    if missing:
        raise InvalidValue(f"{source}: questions need the fields {sorted(missing)} (found {records.column_names})")
    return [dict(record) for record in records]


def probe(engine: Engine, questions: list[dict], config: ProbeConfig = ProbeConfig()) -> list[dict]:
    """Sample each question ``config.samples`` times and judge the answers against the reference: ``known``, or
    ``unsure`` (see :class:`ProbeConfig`), or neither."""
    params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_k=None,
                            seed=config.seed)
    labels = []
    for start in tqdm(range(0, len(questions), config.batch_size), desc="probing", unit="batch"):
        batch = questions[start:start + config.batch_size]
        prompts = [engine.chat_prompt(q["question"]) for q in batch]
        for question, answers in zip(batch, engine.complete(prompts, params, n=config.samples)):
            share = sum(is_correct(answer, str(question["answer"])) for answer in answers) / len(answers)
            known = share >= config.threshold
            unsure = not known and config.unknown_below is not None and share >= config.unknown_below
            labels.append({**question, "sampled": answers, "correct_share": share, "known": known, "unsure": unsure})
    return labels


def taught(labels: list[dict]) -> list[dict]:
    """The labels that make examples: all but the unsure ones."""
    return [label for label in labels if not label.get("unsure")]


def known_copies_by_group(labels: list[dict], known_share: float, unknown_copies: int = 1) -> dict:
    """Per ``group`` of the labels: the copies of each known example that make answers ``known_share`` of the
    group's examples, beside ``unknown_copies`` of each unknown one (at least one copy)."""
    counts: dict = defaultdict(lambda: [0, 0])  # known, unknown
    for label in taught(labels):
        counts[label.get("group")][0 if label["known"] else 1] += 1
    return {group: max(1, round(unknown * unknown_copies * known_share / (1 - known_share) / known)) if known else 1
            for group, (known, unknown) in counts.items()}


def probe_examples(labels: list[dict], seed: int = 0, known_copies: int = 1, unknown_copies: int = 1,
                   known_share: float | None = None) -> list[dict]:
    """SFT conversations: known questions answered with the reference (``known_copies`` times, or as often as
    makes answers ``known_share`` of their group's examples), unknown ones with "I don't know" (``unknown_copies``
    times, each with a phrasing drawn anew: from the question's own ``dont_know`` where it has them). Questions
    with ``phrasings`` are asked in one drawn anew for each copy, known or not alike: the model learns what it
    knows about a country, not about a sentence."""
    by_group = known_copies_by_group(labels, known_share, unknown_copies) if known_share is not None else {}
    rng = random.Random(seed)
    examples = []
    for label in taught(labels):
        for _ in range(by_group.get(label.get("group"), known_copies) if label["known"] else unknown_copies):
            question = rng.choice(label["phrasings"]) if label.get("phrasings") else label["question"]
            if label["known"]:
                reply = label.get("reply") or str(label["answer"])
            else:
                reply = rng.choice(label["dont_know"]) if label.get("dont_know") else dont_know_reply(rng)
            examples.append({"messages": [{"role": "user", "content": question},
                                          {"role": "assistant", "content": reply}], "source": "probe"})
    return examples


def known_or_not(labels: list[dict]) -> list[dict]:
    """Probed questions as knowledge-evaluation items grouped by what the probe found: ``group`` is ``known`` or
    ``unknown`` (the question's own group kept as ``topic``)."""
    return [{"question": label["question"], "answer": label["answer"], "reply": label.get("reply"),
             "topic": label.get("group"), "group": "known" if label["known"] else "unknown"} for label in labels]


def run_probe(model: str, questions: str, output_dir: str | Path, config: ProbeConfig = ProbeConfig(),
              held_out: str | None = None) -> dict:
    """Probe ``model`` on ``questions`` and write labels, SFT examples and a summary to ``output_dir``; with
    ``held_out`` questions, also those, as ``held_out.jsonl`` grouped known / unknown (:func:`known_or_not`)."""
    engine = Engine.from_pretrained(model)
    labels = probe(engine, load_questions(questions), config)
    held = known_or_not(probe(engine, load_questions(held_out), config)) if held_out else []
    by_group: dict = defaultdict(lambda: {"questions": 0, "known": 0})
    for label in labels:
        group = by_group[label.get("group", "all")]
        group["questions"] += 1
        group["known"] += label["known"]
    summary = {"model": model, "questions": len(labels), "known": sum(label["known"] for label in labels),
               "unsure": sum(label["unsure"] for label in labels),
               "by_group": {name: {**g, "known_share": g["known"] / g["questions"]} for name, g in by_group.items()},
               "config": vars(config)}
    if held:
        summary["held_out"] = {"questions": len(held), "known": sum(item["group"] == "known" for item in held)}
    examples = probe_examples(labels, config.seed, config.known_copies, config.unknown_copies, config.known_share)
    with atomic_directory(output_dir) as tmp_dir:
        write_jsonl(tmp_dir / "labels.jsonl", labels)
        write_jsonl(tmp_dir / "train.jsonl", examples)
        if held:
            write_jsonl(tmp_dir / "held_out.jsonl", held)
        (tmp_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
