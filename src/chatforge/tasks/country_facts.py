"""Questions on real-world facts that can be had offline: the capital of each of the world's countries, asked
both ways ("What is the capital of Peru?", "Lima is the capital of which country?"), from the data of the
``countryinfo`` package (MIT). Split by country into probe and test questions, for knowing what a pretrained
model knows."""

import importlib.resources
import json
import random
from typing import NamedTuple


class Template(NamedTuple):
    """One kind of question, formatted with ``country`` and ``capital``: the question the probe and the evaluation
    ask first among ``phrasings`` (all of them for training examples), the ``answer``, the reference ``reply`` and
    ways to say "I don't know" (``dont_know``). An admission starts as the reply does and departs from it where the
    answer would stand ("The capital of Peru is something I don't know."): the model decides whether to answer
    at the token where it recalls the answer, not before it has."""

    group: str
    phrasings: tuple[str, ...]
    answer: str
    reply: str
    dont_know: tuple[str, ...]


TEMPLATES = (
    Template("capital", ("What is the capital of {country}?", "What's the capital city of {country}?",
                         "Which city is the capital of {country}?", "Name the capital of {country}."),
             "{capital}", "The capital of {country} is {capital}.",
             ("The capital of {country} is something I don't know.",
              "The capital of {country} is a city I don't know, I'm sorry.")),
    Template("country", ("{capital} is the capital of which country?", "Which country has {capital} as its capital?",
                         "Of which country is {capital} the capital?", "{capital} is the capital of what country?"),
             "{country}", "{capital} is the capital of {country}.",
             ("{capital} is the capital of a country I don't know.",
              "{capital} is the capital of a country I don't know, I'm sorry.")),
)


def countries() -> list[dict]:
    """``{"country", "capital"}`` for every country of ``countryinfo`` with a capital, once each, in name order;
    pairs where one name holds the other ("Kuwait" and "Kuwait City", "Tunisia" and "Tunis") are left out, since
    a reply that repeats the question would name the answer."""
    found = {}
    for path in (importlib.resources.files("countryinfo") / "data").iterdir():
        if path.name.endswith(".json"):
            record = json.loads(path.read_text(encoding="utf-8"))
            country, capital = record.get("name"), record.get("capital")
            if not (isinstance(country, str) and isinstance(capital, str) and country and capital):
                continue  # no capital (Antarctica, ...) or an unusual record
            if capital.lower() not in country.lower() and country.lower() not in capital.lower():
                found[country] = capital
    return [{"country": country, "capital": found[country]} for country in sorted(found)]


def country_questions(test_fraction: float = 0.3, seed: int = 0) -> list[dict]:
    """Both questions about each country (:data:`TEMPLATES`), with ``phrasings``, ``answer``, ``reply``,
    ``dont_know``, ``group`` (capital / country) and ``split`` (``test`` for a seeded ``test_fraction`` of the
    countries, else ``probe``)."""
    places = countries()
    order = list(range(len(places)))
    random.Random(seed).shuffle(order)
    test = set(order[:round(len(places) * test_fraction)])
    return [{"question": template.phrasings[0].format(**place),
             "phrasings": [phrasing.format(**place) for phrasing in template.phrasings],
             "answer": template.answer.format(**place), "reply": template.reply.format(**place),
             "dont_know": [reply.format(**place) for reply in template.dont_know], "group": template.group,
             "split": "test" if index in test else "probe", "country": place["country"]}
            for index, place in enumerate(places) for template in TEMPLATES]


__all__ = ["TEMPLATES", "Template", "countries", "country_questions"]
