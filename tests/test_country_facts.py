"""Real-world facts for knowledge probing: the world's capitals, asked both ways, split by country."""

from chatforge.tasks.country_facts import countries, country_questions
from chatforge.tasks.world import is_correct, says_dont_know


def test_capitals_are_asked_both_ways_and_split_by_country():
    questions = country_questions()
    places = {place["country"]: place["capital"] for place in countries()}
    assert len(places) > 200 and places["France"] == "Paris" and places["Japan"] == "Tokyo"
    assert {"Kuwait", "Tunisia", "Luxembourg"}.isdisjoint(places)  # the capital's name holds the country's
    by_country: dict[str, set] = {}
    for question in questions:
        by_country.setdefault(question["country"], set()).add(question["split"])
        assert is_correct(question["reply"], question["answer"])
        assert question["phrasings"][0] == question["question"] and len(set(question["phrasings"])) > 1
        assert not any(question["answer"].lower() in asked.lower() for asked in question["phrasings"])
        before_answer = question["reply"][:question["reply"].index(question["answer"])]
        assert question["dont_know"] and all(says_dont_know(reply) and question["answer"] not in reply
                                             and reply.startswith(before_answer) for reply in question["dont_know"])
    assert all(len(splits) == 1 for splits in by_country.values())  # no country on both sides
    test = [q for q in questions if q["split"] == "test"]
    assert 0.25 < len(test) / len(questions) < 0.35 and {q["group"] for q in test} == {"capital", "country"}
    assert country_questions() == questions and country_questions(seed=1) != questions
