"""The gold reward: a rule-based judge of a reply, the ground truth the embedded preference set is
ranked by and the held-out check that tells when RL has started gaming the learned reward model.

A reply starts at 1 and loses points for each fault it has:

- a wrong or missing final answer, where the task has one (``The answer is N``): -1;
- a refusal of a harmless request: -1;
- going off format, by being empty or unfinished, having fewer real words (two or more letters, or a
  number) than the task's ``min_words``, or writing the next turn itself: -1.5;
- repetition (the share of its word trigrams that repeat an earlier one): up to -2;
- rambling past the task's word budget: up to -0.5.
"""

import re
from dataclasses import asdict, dataclass

from .word_problems import extract_answer

REFUSAL_PATTERN = re.compile(r"\b(I can(?:'|no)t|I won't|I will not|I'm not able to|I am not able to|I'm unable to)"
                             r"\s+(help|assist|do that|answer)", re.IGNORECASE)
TURN_PATTERN = re.compile(r"(^|\n)\s*(user|assistant|human|system)\s*:|<\|im_(start|end|sep)\|>", re.IGNORECASE)
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")
REAL_WORD_PATTERN = re.compile(r"[^\W\d_]{2,}|\d+")
DEFAULT_MAX_WORDS = 60


@dataclass(frozen=True)
class GoldJudgement:
    """The faults found in one reply and the reward they leave."""

    wrong_answer: bool
    refusal: bool
    off_format: bool
    repetition: float
    rambling: float

    @property
    def reward(self) -> float:
        return (1.0 - self.wrong_answer - self.refusal - 1.5 * self.off_format - 2.0 * self.repetition
                - 0.5 * self.rambling)

    def as_dict(self) -> dict:
        return {**asdict(self), "reward": self.reward}


def repetition(text: str) -> float:
    """Share of the word trigrams of ``text`` that repeat an earlier one (0 for fewer than four)."""
    words = [word.lower() for word in WORD_PATTERN.findall(text)]
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if len(trigrams) < 4:
        return 0.0
    return 1.0 - len(set(trigrams)) / len(trigrams)


def word_count(text: str) -> int:
    return len(text.split())


def real_word_count(text: str) -> int:
    """Words of two or more letters, and numbers: what a reply says, not stray letters and punctuation."""
    return len(REAL_WORD_PATTERN.findall(text))


def judge(reply: str, task: dict, finished: bool = True) -> GoldJudgement:
    """Judge ``reply`` to ``task`` (``answer``: the expected final answer, if the task has one; ``max_words``:
    the word budget; ``min_words``: the fewest real words of an answer, 1 by default); ``finished`` is False
    for a reply cut off before its end-of-turn token."""
    answer = task.get("answer")
    budget = task.get("max_words") or DEFAULT_MAX_WORDS
    words = word_count(reply)
    return GoldJudgement(
        wrong_answer=answer is not None and extract_answer(reply) != str(answer),
        refusal=bool(REFUSAL_PATTERN.search(reply)),
        off_format=(not finished or real_word_count(reply) < task.get("min_words", 1)
                    or bool(TURN_PATTERN.search(reply))),
        repetition=repetition(reply),
        rambling=min(1.0, max(0, words - budget) / budget),
    )


def gold_reward(reply: str, task: dict, finished: bool = True) -> float:
    """The gold reward of ``reply`` to ``task`` (see the module docstring); at most 1."""
    return judge(reply, task, finished).reward
