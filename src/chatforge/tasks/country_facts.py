"""Questions on real-world facts that can be had offline: the capital of each of the world's countries, asked
both ways ("What is the capital of Peru?", "Lima is the capital of which country?"), from the data of the
``countryinfo`` package (MIT). Split by country into probe and test questions, for knowing what a pretrained
model knows."""

import importlib.resources
import json
import random

#: (group, question, answer, reference reply), formatted with ``country`` and ``capital``.
TEMPLATES = (
    ("capital", "What is the capital of {country}?", "{capital}", "The capital of {country} is {capital}."),
    ("country", "{capital} is the capital of which country?", "{country}", "{capital} is the capital of {country}."),
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
    """Both questions about each country, with ``answer``, ``reply``, ``group`` (capital / country) and ``split``
    (``test`` for a seeded ``test_fraction`` of the countries, else ``probe``)."""
    places = countries()
    order = list(range(len(places)))
    random.Random(seed).shuffle(order)
    test = set(order[:round(len(places) * test_fraction)])
    return [{"question": question.format(**place), "answer": answer.format(**place), "reply": reply.format(**place),
             "group": group, "split": "test" if index in test else "probe", "country": place["country"]}
            for index, place in enumerate(places) for group, question, answer, reply in TEMPLATES]


__all__ = ["TEMPLATES", "countries", "country_questions"]
