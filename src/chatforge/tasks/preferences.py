"""Preference data for reward modelling: K-way rankings, (chosen, rejected) pairs, and the embedded set.

Formats read (each record becomes pairs of full conversations ``{"chosen": [...], "rejected": [...]}``,
TRL's implicit-prompt conversational layout):

- a K-way ranking ``{"prompt": [messages], "completions": [K replies], "ranking": [indices, best first]}``,
  as in "order these 5 jokes", giving every ordered pair (K(K-1)/2 of them);
- conversational pairs, with or without a separate ``prompt`` (UltraFeedback-binarized style);
- hh-rlhf text pairs (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``);
- a text ``prompt`` with text ``chosen``/``rejected`` replies.

No human preference data exists offline, so ``chatforge preference-data build`` writes an embedded set
ranked by construction: for each prompt, the reference reply and degraded versions of it (rambling, a
wrong final answer, refusing a harmless request, writing the user's next turn, repeating itself), in
the order of the rule-based :mod:`.gold` reward. Given a policy model, replies sampled from it join the
candidates, as labellers rank a model's own samples: the reward model then learns the gold reward where
RL will query it. The prompts, with what the gold reward needs, are also written for RL
(``tasks_{train,test}.jsonl``).
"""

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidValue
from ..inference.batching import chat_many
from ..inference.engine import Engine, SamplingParams
from ..io import atomic_directory, write_jsonl
from .conversations import ConversationError, check_messages
from .gold import gold_reward, real_word_count, word_count
from .sft_data import (
    GREETING_REPLIES,
    GREETINGS,
    IDENTITY_ANSWERS,
    IDENTITY_QUESTIONS,
    REFUSALS,
    THANKS,
    THANKS_REPLIES,
    chatterbot_conversations,
)
from .word_problems import word_problem

COMPLETE_MARKER = ".complete"
HH_TURN = re.compile(r"\n\n(Human|Assistant): ")
FILLER = ("That is a very good question, and there is a lot that could be said about it.",
          "Many people have wondered about this over the years.", "Let me know if you want me to say more.",
          "I hope that this answer is helpful to you in some way.", "There are many ways to look at it.",
          "It is always good to think carefully about questions like this one.",
          "As I said, this is something that a lot of people ask about.", "Of course, every situation is different.",
          "In the end, it depends on what you are looking for.", "I am always happy to talk about these things.",
          "Some would say the same thing in other words.", "To sum up what I have said so far, the answer stands.")
MIN_GOLD_GAP = 0.1  # candidates whose gold rewards are closer than this are not ranked against each other
TIE_ORDER = {"reference": 0, "policy": 1}  # which of equally good candidates a ranking keeps


class PreferenceError(InvalidValue):
    """A preference record that cannot be turned into pairs; the message names the record."""


@dataclass
class PreferenceDataConfig:
    """Prompts per source for the embedded set and its held-out share; with a policy model, the replies
    sampled from it per prompt (``policy_samples`` at ``policy_temperature``, each at most
    ``policy_max_new_tokens`` long: a reply cut off there is not ranked)."""

    seed: int = 0
    word_problems: int = 800
    chat: int = 1000
    test_fraction: float = 0.1
    policy_samples: int = 2
    policy_temperature: float = 1.0
    policy_max_new_tokens: int = 64
    policy_batch_size: int = 64


# --- reading preference records ------------------------------------------------------------------------------


def _conversation(value, where: str) -> list[dict]:
    check_messages(value, where)
    return value


def _hh_messages(text: str, where: str) -> list[dict]:
    parts = HH_TURN.split("\n\n" + text.strip() if not text.startswith("\n\n") else text)
    if len(parts) < 3 or parts[0].strip():
        raise PreferenceError(f"{where}: not an hh-rlhf transcript ('\\n\\nHuman: ...\\n\\nAssistant: ...')")
    roles = parts[1::2]
    return [{"role": "user" if role == "Human" else "assistant", "content": content.strip()}
            for role, content in zip(roles, parts[2::2])]


def _reply(value, where: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise PreferenceError(f"{where}: empty completion")
        return [{"role": "assistant", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return value
    raise PreferenceError(f"{where}: a completion must be a string or a list of messages, got {type(value).__name__}")


def _prompt(value, where: str) -> list[dict]:
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value:
        return value
    raise PreferenceError(f"{where}: missing or empty prompt")


def ranking_pairs(record: dict, where: str) -> list[tuple[list[dict], list[dict]]]:
    """Every (better, worse) pair of full conversations in a K-way ranking record."""
    completions, ranking = record.get("completions"), record.get("ranking")
    if not isinstance(completions, list) or len(completions) < 2:
        raise PreferenceError(f"{where}: 'completions' must list at least two replies")
    if not isinstance(ranking, list) or any(isinstance(entry, list) for entry in ranking):
        raise PreferenceError(f"{where}: 'ranking' must be a flat list of completion indices, best first "
                              "(ties cannot be ranked: drop the tied completions or give them as separate records)")
    if sorted(ranking) != list(range(len(completions))):
        raise PreferenceError(f"{where}: 'ranking' {ranking} is not an order of all {len(completions)} completions "
                              "(each index 0..K-1 exactly once)")
    prompt = _prompt(record.get("prompt"), where)
    replies = [prompt + _reply(completions[index], f"{where} completion {index}") for index in ranking]
    return [(replies[i], replies[j]) for i in range(len(replies)) for j in range(i + 1, len(replies))]


def record_pairs(record: dict, where: str) -> list[tuple[list[dict], list[dict]]]:
    """The (chosen, rejected) conversations of one record of any supported format."""
    if "ranking" in record or "completions" in record:
        pairs = ranking_pairs(record, where)
    elif "chosen" in record and "rejected" in record:
        chosen, rejected = record["chosen"], record["rejected"]
        if "prompt" in record and record["prompt"] is not None:
            prompt = _prompt(record["prompt"], where)
            pairs = [(prompt + _reply(chosen, f"{where} chosen"), prompt + _reply(rejected, f"{where} rejected"))]
        elif isinstance(chosen, str) and isinstance(rejected, str):
            pairs = [(_hh_messages(chosen, f"{where} chosen"), _hh_messages(rejected, f"{where} rejected"))]
        else:
            pairs = [(chosen, rejected)]
    else:
        raise PreferenceError(f"{where}: expected 'chosen' and 'rejected', or 'completions' and 'ranking'; "
                              f"got fields {sorted(record)}")
    for chosen, rejected in pairs:
        try:
            _conversation(chosen, f"{where} chosen")
            _conversation(rejected, f"{where} rejected")
        except ConversationError as error:
            raise PreferenceError(str(error)) from None
        if chosen == rejected:
            raise PreferenceError(f"{where}: chosen and rejected are the same conversation")
    return pairs


def to_pairs(batch: dict, indices: list[int], name: str = "dataset") -> dict:
    """``datasets.map(batched=True, with_indices=True)`` function: records of any supported format to
    ``chosen``/``rejected`` conversation pairs (a ranking of K gives K(K-1)/2 rows)."""
    columns = list(batch)
    out: dict = {"chosen": [], "rejected": []}
    for row, index in enumerate(indices):
        record = {column: batch[column][row] for column in columns}
        for chosen, rejected in record_pairs(record, f"{name} record {index}"):
            out["chosen"].append(chosen)
            out["rejected"].append(rejected)
    return out


# --- the embedded set ---------------------------------------------------------------------------------------


def _task(reference: str, **fields) -> dict:
    """The gold reward's view of a prompt: a word budget of twice the reference (at least 40), and as many
    real words as the reference has, up to two."""
    return {**fields, "max_words": max(40, 2 * word_count(reference)), "min_words": min(2, real_word_count(reference))}


def _ramble(rng: random.Random, reference: str, budget: int) -> str:
    target = int(budget * rng.uniform(1.4, 2.0))
    extra = rng.sample(FILLER, len(FILLER))
    text = reference
    while extra and word_count(text) < target:
        text += " " + extra.pop()
    return text


def _repeat(rng: random.Random, reference: str) -> str:
    words = reference.split()
    start = rng.randint(1, max(1, min(6, len(words) - 1)))
    phrase = " ".join(words[start - 1:start - 1 + rng.randint(1, 3)])
    return " ".join(words[:start] + [phrase] * rng.randint(12, 24))


def _wrong_answer(rng: random.Random, reference: str, answer: str) -> str:
    offset = rng.choice([-3, -2, -1, 1, 2, 3])
    wrong = int(answer) + (offset if int(answer) + offset >= 0 else -offset)
    return reference.replace(f"The answer is {answer}.", f"The answer is {wrong}.")


def candidates(rng: random.Random, prompt: list[dict], reference: str, task: dict, other_prompt: str,
               policy_replies: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(kind, reply) candidates for one prompt: the reference, its degraded versions, and the policy's
    replies that differ from all of them."""
    out = [("reference", reference), ("rambling", _ramble(rng, reference, task["max_words"])),
           ("refusal", rng.choice(REFUSALS)), ("off_format", f"{reference}\nUser: {other_prompt}"),
           ("repetitive", _repeat(rng, reference))]
    if task.get("answer") is not None:
        out.append(("wrong_answer", _wrong_answer(rng, reference, task["answer"])))
    for reply in policy_replies:
        if reply.strip() and all(reply.strip() != text.strip() for _, text in out):
            out.append(("policy", reply))
    return out


def ranked_record(rng: random.Random, prompt: list[dict], reference: str, task: dict, other_prompt: str,
                  policy_replies: tuple[str, ...] = ()) -> dict:
    """A K-way ranking record, ordered by the gold reward; a candidate closer than ``MIN_GOLD_GAP`` to a
    better one is left out, so the ranking has no ties (among equals the reference is kept first, then the
    policy's replies)."""
    scored = sorted(((gold_reward(reply, task), kind, reply)
                     for kind, reply in candidates(rng, prompt, reference, task, other_prompt, policy_replies)),
                    key=lambda c: (-c[0], TIE_ORDER.get(c[1], len(TIE_ORDER))))
    kept = [scored[0]]
    for candidate in scored[1:]:
        if kept[-1][0] - candidate[0] >= MIN_GOLD_GAP:
            kept.append(candidate)
    order = list(range(len(kept)))
    rng.shuffle(order)  # completions in random order; the ranking says which is best
    completions = [kept[i] for i in order]
    return {"prompt": prompt, "completions": [c[2] for c in completions],
            "ranking": sorted(range(len(completions)), key=lambda i: -completions[i][0]),
            "kinds": [c[1] for c in completions], "gold": [round(c[0], 4) for c in completions], "task": task}


def _prompts(rng: random.Random, config: PreferenceDataConfig) -> list[tuple[list[dict], str, dict]]:
    """(prompt, reference reply, task) triples: chat exchanges and worked one-digit word problems."""
    chat = [(c[:1], c[1]["content"]) for c in chatterbot_conversations()]
    chat += [([{"role": "user", "content": q}], a) for q in IDENTITY_QUESTIONS for a in IDENTITY_ANSWERS]
    chat += [([{"role": "user", "content": g}], r) for g in GREETINGS for r in GREETING_REPLIES]
    chat += [([{"role": "user", "content": t}], r) for t in THANKS for r in THANKS_REPLIES]
    rng.shuffle(chat)
    triples = [(prompt, reply, _task(reply, kind="chat")) for prompt, reply in chat[:config.chat]]
    for _ in range(config.word_problems):
        problem = word_problem(rng, multi_digit=False)
        reply = problem.solution(use_calculator=False)
        triples.append(([{"role": "user", "content": problem.question}], reply,
                        _task(reply, kind="word_problem", answer=problem.answer)))
    return triples


def sample_policy(policy: str, prompts: list[list[dict]], config: PreferenceDataConfig) -> list[tuple[str, ...]]:
    """``config.policy_samples`` replies of the model at ``policy`` to each prompt, those that reached their
    end of turn; decoded ``config.policy_batch_size`` at a time, each row taking the next reply as soon as its own
    has ended."""
    engine = Engine.from_pretrained(policy)
    params = SamplingParams(temperature=config.policy_temperature, top_k=None, top_p=1.0,
                            max_new_tokens=config.policy_max_new_tokens, seed=config.seed)
    n = config.policy_samples
    replies = chat_many(engine, prompts, params, use_tools=False, max_batch=config.policy_batch_size * n,
                        desc=f"sampling {policy}", n=n)
    return [tuple(events[-1].text for events in replies[row * n:(row + 1) * n] if events[-1].finish_reason == "stop")
            for row in range(len(prompts))]


def _is_test(prompt: list[dict], fraction: float) -> bool:
    digest = hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def build_preference_data(output_dir: str | Path, config: PreferenceDataConfig = PreferenceDataConfig(),
                          policy: str | None = None) -> dict:
    """Write the embedded preference set (or return the summary of a finished one), with ``policy``'s
    sampled replies among the candidates when a model path is given::

        rankings_{train,test}.jsonl   K-way rankings (with each completion's kind and gold reward)
        pairs_{train,test}.jsonl      the same as chosen/rejected conversation pairs
        tasks_{train,test}.jsonl      the prompts with the gold reward's fields, for RL
        summary.json

    Prompts are split by a hash of their text, so a prompt is never in both splits.
    """
    output_dir = Path(output_dir)
    if (output_dir / COMPLETE_MARKER).exists():
        return json.loads((output_dir / "summary.json").read_text())
    rng = random.Random(config.seed)
    triples = list({json.dumps(t[0], sort_keys=True): t for t in _prompts(rng, config)}.values())
    user_texts = [prompt[-1]["content"] for prompt, _, _ in triples]
    sampled = (sample_policy(policy, [t[0] for t in triples], config) if policy and config.policy_samples
               else [()] * len(triples))
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for (prompt, reference, task), policy_replies in zip(triples, sampled):
        record = ranked_record(rng, prompt, reference, task, rng.choice(user_texts), policy_replies)
        splits["test" if _is_test(prompt, config.test_fraction) else "train"].append(record)
    summary: dict = {"what": "embedded preference set, ranked by construction with the rule-based gold reward "
                             "(chatforge.tasks.gold); not human judgements",
                     "policy": policy if any(sampled) else None, "splits": {}}
    with atomic_directory(output_dir) as tmp_dir:
        for split, records in splits.items():
            write_jsonl(tmp_dir / f"rankings_{split}.jsonl", records)
            pairs = [{"chosen": chosen, "rejected": rejected}
                     for number, record in enumerate(records)
                     for chosen, rejected in ranking_pairs(record, f"{split} ranking {number}")]
            write_jsonl(tmp_dir / f"pairs_{split}.jsonl", pairs)
            write_jsonl(tmp_dir / f"tasks_{split}.jsonl", ({"messages": r["prompt"], **r["task"]} for r in records))
            summary["splits"][split] = {"rankings": len(records), "pairs": len(pairs),
                                        "word_problems": sum(r["task"]["kind"] == "word_problem" for r in records),
                                        "policy_replies": sum(r["kinds"].count("policy") for r in records)}
        (tmp_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        (tmp_dir / COMPLETE_MARKER).touch()
    return summary
