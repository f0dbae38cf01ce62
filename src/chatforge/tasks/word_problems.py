"""Arithmetic word problems with exact answers ("Emily buys 3 apples and 2 oranges…"), seeded.

Small numbers get a worked solution done in the text; larger ones a solution that calls the calculator,
which is how the tool-use data teaches when to reach for it.
"""

import random
import re
from dataclasses import dataclass

from ..tools import calculate, tool_exchange

NAMES = ("Emily", "Liam", "Olivia", "Noah", "Ava", "Mateo", "Sofia", "Lucas", "Mia", "Ethan", "Amara", "Kenji",
         "Priya", "Omar", "Chloe", "Diego", "Hana", "Tom", "Zara", "Ivan")
ITEMS = (("apple", "apples"), ("orange", "oranges"), ("pencil", "pencils"), ("book", "books"),
         ("cookie", "cookies"), ("marble", "marbles"), ("sticker", "stickers"), ("ticket", "tickets"),
         ("notebook", "notebooks"), ("banana", "bananas"), ("card", "cards"), ("bottle", "bottles"))
ANSWER_PATTERN = re.compile(r"answer is \$?(-?[\d,]*\.?\d+)")


@dataclass(frozen=True)
class WordProblem:
    question: str
    expression: str
    answer: str
    reasoning: str  # the worked steps, for a solution without the calculator

    def solution(self, use_calculator: bool) -> str:
        """The assistant's reply: worked steps, or a calculator call; ends with ``The answer is N.``"""
        if use_calculator:
            return (f"Let me compute {self.expression} with the calculator. "
                    f"{tool_exchange('calculator', self.expression, self.answer)}The answer is {self.answer}.")
        return f"{self.reasoning} The answer is {self.answer}."


def _two_purchases(rng: random.Random, low: int, high: int) -> WordProblem:
    name = rng.choice(NAMES)
    (one, ones), (two, twos) = rng.sample(ITEMS, 2)
    a, b, p, q = (rng.randint(low, high) for _ in range(4))
    expression = f"{a}*{p} + {b}*{q}"
    return WordProblem(
        f"{name} buys {a} {ones} at ${p} each and {b} {twos} at ${q} each. How much does {name} spend in total?",
        expression, calculate(expression),
        f"{a} {ones} cost {a} × {p} = ${a * p}. {b} {twos} cost {b} × {q} = ${b * q}. "
        f"Together that is {a * p} + {b * q} = ${a * p + b * q}.")


def _groups(rng: random.Random, low: int, high: int) -> WordProblem:
    name = rng.choice(NAMES)
    _, items = rng.choice(ITEMS)
    per, boxes = rng.randint(low, high), rng.randint(low, high)
    expression = f"{per}*{boxes}"
    return WordProblem(f"A box holds {per} {items}. {name} has {boxes} full boxes. How many {items} does {name} have?",
                       expression, calculate(expression), f"{boxes} boxes of {per} is {boxes} × {per} = {per * boxes}.")


def _give_away(rng: random.Random, low: int, high: int) -> WordProblem:
    name, friend = rng.sample(NAMES, 2)
    _, items = rng.choice(ITEMS)
    given, bought = rng.randint(low, high), rng.randint(low, high)
    start = given + rng.randint(low, high)
    expression = f"{start} - {given} + {bought}"
    return WordProblem(
        f"{name} has {start} {items}. {name} gives {given} to {friend} and then buys {bought} more. "
        f"How many {items} does {name} have now?",
        expression, calculate(expression),
        f"After giving {given} away, {name} has {start} - {given} = {start - given}. "
        f"After buying {bought} more, {start - given} + {bought} = {start - given + bought}.")


def _share(rng: random.Random, low: int, high: int) -> WordProblem:
    name = rng.choice(NAMES)
    _, items = rng.choice(ITEMS)
    each, friends = rng.randint(low, high), rng.randint(2, max(2, min(high, 12)))
    total = each * friends
    expression = f"{total} / {friends}"
    return WordProblem(f"{name} shares {total} {items} equally among {friends} friends. How many {items} does each "
                       f"friend get?", expression, calculate(expression),
                       f"{total} shared by {friends} is {total} ÷ {friends} = {each}.")


KINDS = {"two_purchases": _two_purchases, "groups": _groups, "give_away": _give_away, "share": _share}


def word_problem(rng: random.Random, multi_digit: bool) -> WordProblem:
    """One problem; ``multi_digit`` draws two-digit operands (calculator territory), else 1-9. The numbers
    appear in the question in the order the calculation uses them."""
    low, high = (12, 99) if multi_digit else (1, 9)
    return rng.choice(list(KINDS.values()))(rng, low, high)


def extract_answer(text: str) -> str | None:
    """The number after the last ``answer is`` in a reply, without thousands separators, or None."""
    found = ANSWER_PATTERN.findall(text)
    return found[-1].replace(",", "") if found else None
