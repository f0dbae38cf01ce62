import json
from collections import Counter

import pytest
from conftest import memorize

from chatforge.inference.engine import Engine
from chatforge.posttrain.probe import (
    ProbeConfig,
    known_or_not,
    load_questions,
    probe,
    probe_examples,
    run_probe,
)
from chatforge.tasks.world import (
    DESCRIPTIONS,
    FAQ_LINES,
    WorldConfig,
    build_world,
    is_correct,
    says_dont_know,
    world_documents,
    world_questions,
)

KNOWN = {"question": "Where was Falol Corpra born?", "answer": "Dovstead", "name": "Falol Corpra",
         "reply": "Falol Corpra was born in Dovstead.", "group": "frequent"}
UNKNOWN = {"question": "What was Brawen Dovros's occupation?", "answer": "historian", "name": "Brawen Dovros",
           "reply": "Brawen Dovros was a historian.", "group": "unseen"}


def test_the_world_reaches_the_corpus_at_controlled_frequencies():
    config = WorldConfig(people_per_group=10, frequent_mentions=6)
    people = build_world(config)
    assert len({p.name for p in people}) == 30
    assert Counter(p.group for p in people) == {"frequent": 10, "rare": 10, "unseen": 10}
    assert Counter(p.split for p in people) == {"test": 15, "probe": 15}
    documents = world_documents(people, config)
    pages = Counter(p.group for p in people for d in documents if p.name in d)
    assert pages == {"frequent": 10 * 2, "rare": 10}  # 6 statements on pages of 4; unseen people never appear
    for person in people:
        if person.group != "unseen":
            facts = " ".join(d for d in documents if person.name in d)
            assert person.town in facts and str(person.year) in facts and person.occupation in facts
    questions = world_questions(people)
    assert len(questions) == 90 and all(q["answer"] in q["reply"] for q in questions)


def test_judging_answers_and_admissions_of_ignorance():
    assert is_correct("Falol Corpra was born in Dovstead.", "Dovstead")
    assert not is_correct("Falol Corpra was born in Elbrook.", "Dovstead")
    assert not is_correct("I don't know if it was Dovstead.", "Dovstead")
    assert says_dont_know("I’m sorry, I DON’T KNOW anything about them.")
    assert not says_dont_know("She was born in 1911.")


def test_probing_labels_what_the_model_memorised_and_writes_matching_examples(model, tokenizer):
    chat = [{"role": "user", "content": KNOWN["question"]}, {"role": "assistant", "content": KNOWN["reply"]}]
    engine = Engine(memorize(model, tokenizer, [chat]), tokenizer)
    labels = probe(engine, [KNOWN, UNKNOWN], ProbeConfig(samples=4, temperature=0.7))
    assert [label["known"] for label in labels] == [True, False]
    assert labels[0]["correct_share"] == 1.0 and len(labels[0]["sampled"]) == 4
    assert [(item["group"], item["topic"]) for item in known_or_not(labels)] == [("known", KNOWN["group"]),
                                                                                ("unknown", UNKNOWN["group"])]
    known, unknown = (example["messages"][1]["content"] for example in probe_examples(labels))
    assert known == KNOWN["reply"]
    assert says_dont_know(unknown)
    replies = [example["messages"][1]["content"] for example in probe_examples(labels, known_copies=4,
                                                                               unknown_copies=3)]
    assert replies[:4] == [KNOWN["reply"]] * 4 and len(replies) == 7 and all(map(says_dont_know, replies[4:]))
    own_words = ["I don't know where Brawen Dovros worked.", "I'm sorry, I don't know what Brawen Dovros did."]
    asked = [UNKNOWN["question"], "What did Brawen Dovros do for a living?"]
    examples = probe_examples([{**labels[1], "dont_know": own_words, "phrasings": asked}], unknown_copies=8)
    assert {example["messages"][1]["content"] for example in examples} == set(own_words)  # each drawn anew
    assert {example["messages"][0]["content"] for example in examples} == set(asked)
    recipe = {"probe_dir": "runs/probe", "probe_known_copies": 4, "probe_unknown_copies": 3}  # an SFT recipe's keys
    assert ProbeConfig.from_recipe(recipe) == ProbeConfig(known_copies=4, unknown_copies=3)


def test_a_known_share_balances_answers_and_admissions_within_each_group():
    """Capitals known once in four, countries twice in four: with known_share 0.5 each group's examples are half
    answers, so the kind of question does not tell the model whether to answer."""
    labels = [{"question": f"{group} {index}", "answer": "x", "reply": "It is x.", "group": group,
               "known": index < known} for group, known in (("capital", 1), ("country", 2)) for index in range(4)]
    examples = probe_examples(labels, known_share=0.5)
    for group in ("capital", "country"):
        replies = [e["messages"][1]["content"] for e in examples if e["messages"][0]["content"].startswith(group)]
        answers = sum(not says_dont_know(reply) for reply in replies)
        assert answers == len(replies) - answers > 0
    assert len(probe_examples(labels, known_copies=3)) == 3 * 3 + 5  # without a share: the same copies for all
    with pytest.raises(ValueError, match="known_share=1"):
        ProbeConfig(known_share=1)


class ScriptedAnswers:
    """Stands in for the engine: each question answered right in a set share of its samples."""

    def __init__(self, right_share: dict):
        self.right_share = right_share

    def chat_prompt(self, question: str) -> str:
        return question

    def complete(self, prompts, params, n):
        return [[KNOWN["reply"] if i < self.right_share[prompt] * n else "I have no idea." for i in range(n)]
                for prompt in prompts]


def test_questions_answered_now_and_then_are_neither_answered_nor_declined_in_the_examples():
    shares = [1.0, 0.5, 0.25, 0.0]
    questions = [{**KNOWN, "question": f"Q{share}", "group": "capital"} for share in shares]
    engine = ScriptedAnswers({q["question"]: share for q, share in zip(questions, shares)})
    labels = probe(engine, questions, ProbeConfig(samples=4, unknown_below=0.25))
    assert [(label["known"], label["unsure"]) for label in labels] == [(True, False), (True, False),
                                                                      (False, True), (False, False)]
    taught = probe_examples(labels, known_share=0.5)
    assert sorted(e["messages"][0]["content"] for e in taught) == ["Q0.0", "Q0.5", "Q1.0"]
    assert sum(says_dont_know(e["messages"][1]["content"]) for e in taught) == 1
    everything = probe(engine, questions, ProbeConfig(samples=4))  # without it: all below threshold are unknown
    assert [label["unsure"] for label in everything] == [False] * 4 and len(probe_examples(everything)) == 4
    with pytest.raises(ValueError, match="unknown_below=0.75: give a share above 0 and at most threshold=0.5"):
        ProbeConfig(unknown_below=0.75)


def test_probe_command_writes_labels_examples_and_summary(tmp_path, saved_model_dir):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in (KNOWN, UNKNOWN)))
    summary = run_probe(str(saved_model_dir), str(questions), tmp_path / "probe", ProbeConfig(samples=2),
                        held_out=str(questions))
    assert summary["questions"] == 2 and set(summary["by_group"]) == {"frequent", "unseen"}
    held_out = [json.loads(line) for line in open(tmp_path / "probe/held_out.jsonl")]
    assert [item["question"] for item in held_out] == [KNOWN["question"], UNKNOWN["question"]]
    assert summary["held_out"] == {"questions": 2, "known": sum(item["group"] == "known" for item in held_out)}
    examples = [json.loads(line) for line in open(tmp_path / "probe/train.jsonl")]
    assert len(examples) == 2 and all(e["messages"][0]["role"] == "user" for e in examples)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl: questions need the fields \\['answer', 'question'\\]"):
        load_questions(str(bad))


def test_the_embedded_pretraining_corpus_carries_the_world(tmp_path):
    from chatforge.training.inputs import embedded_corpus

    wikipedia, world = embedded_corpus(tmp_path / "corpus")
    documents = [json.loads(line)["text"] for line in open(world)]
    assert len(documents) == len(world_documents(build_world()))
    frequent = next(p for p in build_world() if p.group == "frequent")
    config = WorldConfig()
    assert sum(frequent.name in d for d in documents) == config.frequent_mentions // config.statements_per_document
    pages = " ".join(d for d in documents if frequent.name in d)
    assert all(frequent.describe(line) in pages for line in DESCRIPTIONS + FAQ_LINES)  # prose and every question
    assert sum(1 for _ in open(wikipedia)) == 1000
    # asked for the world with other settings, the folder is written again
    _, world = embedded_corpus(tmp_path / "corpus", WorldConfig(frequent_mentions=96))
    assert sum(frequent.name in json.loads(line)["text"] for line in open(world)) == 96 // 4
