"""Problems with checkable answers, and the reward functions that check them (for GRPO).

Problem records are ``{"prompt": [messages], "answer": "N", "source": ...}``. Sources:

- arithmetic word problems sized for tiny models (:mod:`.word_problems`, seeded, exact answers);
- GSM8K-style problems from reasoning-gym's ``gsm_symbolic`` generators (``pip install reasoning-gym``);
- any dataset with ``prompt``/``question`` and ``answer`` columns, GSM8K's ``#### N`` answers included.

Reward functions follow TRL's signature ``f(completions, answer, **kwargs) -> list[float]``.
"""

import hashlib
import json
import math
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from math_verify import parse, verify

from ..errors import InvalidValue
from ..io import atomic_directory, write_jsonl
from .word_problems import KINDS, extract_answer

COMPLETE_MARKER = ".complete"
FINAL_ANSWER = re.compile(r"The answer is \$?-?[\d,]*\.?\d+\.\s*$")


class ProblemError(InvalidValue):
    """A problem record without a usable prompt or answer; the message names the record."""


@dataclass
class ProblemConfig:
    """Word problems for GRPO: operand range, how many, held-out share; optional GSM-symbolic problems."""

    seed: int = 0
    train: int = 4000
    test: int = 200
    low: int = 1
    high: int = 9
    kinds: tuple[str, ...] = tuple(KINDS)  # which kinds of word problem (chatforge.tasks.word_problems.KINDS)
    gsm_symbolic_test: int = 0  # held-out reasoning-gym gsm_symbolic problems (needs reasoning-gym)

    def __post_init__(self):
        if unknown := set(self.kinds) - set(KINDS):
            raise InvalidValue(f"ProblemConfig.kinds: unknown {sorted(unknown)}; choose from {sorted(KINDS)}")


def _content(completion) -> str:
    """The text of a completion, conversational (``[{"role": "assistant", "content": ...}]``) or plain."""
    return completion[-1]["content"] if isinstance(completion, list) else completion


def _same_number(a: str, b: str) -> bool:
    try:
        return Fraction(a.replace(",", "")) == Fraction(b.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return False


_FRACTION = re.compile(r"-?(\d+)\s*/\s*(\d+)")


def _states_a_value(reading: list) -> bool:
    """Whether math-verify's reading of a reply (value, matched text) is a value the reply states, rather than
    arithmetic it leaves undone ("Let me compute 26*75 + 79*17", which math-verify would evaluate): a number, or a
    fraction in lowest terms."""
    if len(reading) < 2:
        return False
    value, matched = reading[0], reading[1]
    if getattr(value, "is_Number", False):
        return True
    fraction = _FRACTION.fullmatch(str(matched).strip().rstrip("."))
    return fraction is not None and int(fraction[2]) > 1 and math.gcd(int(fraction[1]), int(fraction[2])) == 1


def is_correct_answer(text: str, answer: str) -> bool:
    """Whether ``text`` gives ``answer``: its ``The answer is N`` when it has one, else math-verify's reading
    of the value it states last (``\\boxed{}``, LaTeX, a final number or fraction; an unevaluated expression is
    no answer)."""
    stated = extract_answer(text)
    if stated is not None:
        return _same_number(stated, str(answer))
    try:
        reading = parse(text)
        return _states_a_value(reading) and bool(verify(parse(str(answer)), reading))
    except Exception:  # math-verify raises on unparseable input and timeouts; neither is a right answer
        return False


def answer_reward(completions, answer, **kwargs) -> list[float]:
    """1 for a completion with the right final answer, else 0."""
    return [float(is_correct_answer(_content(c), a)) for c, a in zip(completions, answer)]


def format_reward(completions, **kwargs) -> list[float]:
    """1 for a completion that ends with ``The answer is N.``, else 0."""
    return [float(FINAL_ANSWER.search(text) is not None) for text in map(_content, completions)]


REWARD_FUNCTIONS = {"answer": answer_reward, "format": format_reward}


def problem_record(record: dict, where: str) -> dict:
    """A problem of any supported layout as ``{"prompt": [messages], "answer": str}``."""
    prompt = record.get("prompt", record.get("question"))
    answer = record.get("answer")
    if isinstance(prompt, str) and prompt.strip():
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise ProblemError(f"{where}: no prompt (a 'prompt' or 'question' field)")
    if answer is None or not str(answer).strip():
        raise ProblemError(f"{where}: no answer to check against (an 'answer' field)")
    answer = str(answer)
    if "####" in answer:  # GSM8K: the worked solution, then '#### N'
        answer = answer.rsplit("####", 1)[1].strip().replace(",", "")
    return {"prompt": prompt, "answer": answer}


def to_problems(batch: dict, indices: list[int], name: str = "dataset") -> dict:
    """``datasets.map(batched=True, with_indices=True)`` function: any supported layout to prompt/answer."""
    records = [problem_record({column: batch[column][row] for column in batch}, f"{name} record {index}")
               for row, index in enumerate(indices)]
    return {"prompt": [r["prompt"] for r in records], "answer": [r["answer"] for r in records]}


def word_problem_records(rng: random.Random, count: int, low: int, high: int,
                         kinds: tuple[str, ...] = tuple(KINDS)) -> list[dict]:
    problems = [KINDS[rng.choice(kinds)](rng, low, high) for _ in range(count)]
    return [{"prompt": [{"role": "user", "content": p.question}], "answer": p.answer, "source": "word_problems"}
            for p in problems]


def gsm_symbolic_records(count: int, seed: int) -> list[dict]:
    """GSM8K-derived problems from reasoning-gym's ``gsm_symbolic`` generators."""
    try:
        import reasoning_gym
    except ImportError:
        raise ImportError("gsm_symbolic problems need reasoning-gym: pip install 'reasoning-gym>=0.1.25'") from None
    dataset = reasoning_gym.create_dataset("gsm_symbolic", size=count, seed=seed)
    return [{"prompt": [{"role": "user", "content": item["question"]}], "answer": str(item["answer"]),
             "source": "gsm_symbolic"} for item in dataset]


def _is_test(question: str, fraction: float) -> bool:
    return int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") / 2 ** 64 < fraction


def build_problems(output_dir: str | Path, config: ProblemConfig = ProblemConfig()) -> dict:
    """Write ``train.jsonl`` and ``test.jsonl`` word problems (a question is never in both; the split is by a
    hash of its text) and optionally ``gsm_symbolic_test.jsonl``; return the summary."""
    output_dir = Path(output_dir)
    if (output_dir / COMPLETE_MARKER).exists():
        return json.loads((output_dir / "summary.json").read_text())
    rng = random.Random(config.seed)
    fraction = config.test / (config.train + config.test)
    unique = {r["prompt"][0]["content"]: r
              for r in word_problem_records(rng, 3 * (config.train + config.test), config.low, config.high,
                                           config.kinds)}
    splits, limits = {"train": [], "test": []}, {"train": config.train, "test": config.test}
    for question, record in unique.items():
        name = "test" if _is_test(question, fraction) else "train"
        if len(splits[name]) < limits[name]:
            splits[name].append(record)
    summary = {"train": len(splits["train"]), "test": len(splits["test"]), "operands": [config.low, config.high],
               "kinds": list(config.kinds)}
    with atomic_directory(output_dir) as tmp_dir:
        for split, records in splits.items():
            write_jsonl(tmp_dir / f"{split}.jsonl", records)
        if config.gsm_symbolic_test:
            summary["gsm_symbolic_test"] = write_jsonl(tmp_dir / "gsm_symbolic_test.jsonl",
                                                       gsm_symbolic_records(config.gsm_symbolic_test, config.seed))
        (tmp_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        (tmp_dir / COMPLETE_MARKER).touch()
    return summary
