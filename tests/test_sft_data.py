import json

import datasets
import pytest
from trl import DatasetMixtureConfig
from trl.scripts.utils import DatasetConfig

from chatforge.posttrain.mixture import load_mixture
from chatforge.posttrain.sft import checked_split
from chatforge.tasks.conversations import ConversationError, check_conversation, check_messages
from chatforge.tasks.sft_data import SFTDataConfig, build_sft_data, chatterbot_conversations
from chatforge.tasks.word_problems import extract_answer, word_problem
from chatforge.tools import calculate, run_python

USER = {"role": "user", "content": "Hi"}
ASSISTANT = {"role": "assistant", "content": "Hello!"}


@pytest.mark.parametrize("messages, reason", [
    ([], "no messages"),
    ([{"role": "user"}, ASSISTANT], "missing role or content"),
    ([{"role": "narrator", "content": "x"}, ASSISTANT], "unknown role"),
    ([USER, {"role": "assistant", "content": "  "}], "empty content"),
    ([ASSISTANT, USER, ASSISTANT], "wrong role order"),
    ([USER, USER, ASSISTANT], "wrong role order"),
    ([USER, ASSISTANT, {"role": "system", "content": "late"}, USER, ASSISTANT], "wrong role order"),
    ([USER, ASSISTANT, USER], "no final assistant reply"),
])
def test_bad_conversations_are_named_with_their_fault(messages, reason):
    with pytest.raises(ConversationError, match=f"chats.jsonl record 7: {reason}") as error:
        check_messages(messages, "chats.jsonl record 7")
    assert error.value.reason == reason


def test_well_formed_conversations_pass_including_tool_turns():
    check_messages([{"role": "system", "content": "Be brief."}, USER, ASSISTANT,
                    {"role": "tool", "content": "42"}, ASSISTANT], "ok")


def test_over_length_conversations_are_skipped_and_counted_or_raise(tokenizer):
    long = [USER, {"role": "assistant", "content": "word " * 300}]
    with pytest.raises(ConversationError, match="too long"):
        check_conversation(long, "record 0", tokenizer, max_length=64)
    dataset = datasets.Dataset.from_list([{"messages": [USER, ASSISTANT]}, {"messages": long},
                                          {"messages": [USER, {"role": "assistant", "content": ""}]}])
    kept, skipped = checked_split(dataset, "train", "skip", tokenizer, max_length=64)
    assert kept["messages"] == [[USER, ASSISTANT]]
    assert skipped == {"too long": 1, "empty content": 1}
    with pytest.raises(ConversationError, match="train record 1: too long"):
        checked_split(dataset, "train", "error", tokenizer, max_length=64)


def test_word_problems_have_exact_answers_and_checkable_replies():
    import random

    rng = random.Random(0)
    for multi_digit in (False, True):
        for _ in range(50):
            problem = word_problem(rng, multi_digit)
            assert calculate(problem.expression) == problem.answer
            reply = problem.solution(use_calculator=multi_digit)
            assert extract_answer(reply) == problem.answer
            assert ("<|tool_call_start|>calculator" in reply) == multi_digit
    assert extract_answer("So it is 1,204. The answer is 1,204.") == "1204"
    assert extract_answer("no number here") is None


def test_chatterbot_corpus_gives_real_alternating_conversations():
    conversations = chatterbot_conversations()
    assert len(conversations) > 1500
    for messages in conversations:
        check_messages(messages, "chatterbot")


def test_sft_data_build_writes_held_out_splits_once(tmp_path):
    config = SFTDataConfig(identity=10, smalltalk=10, refusals=10, word_problems_small=20, word_problems_tool=20,
                           python_tool=5, search_tool=10, word_problems_test=15, python_problems_test=12)
    summary = build_sft_data(tmp_path / "sft", config)
    train = [json.loads(line) for line in open(tmp_path / "sft/train.jsonl")]
    test = [json.loads(line) for line in open(tmp_path / "sft/test.jsonl")]
    assert {r["source"] for r in train} == {r["source"] for r in test} == set(summary["sources"])
    assert len(train) == sum(s["train"] for s in summary["sources"].values())
    assert not {json.dumps(r["messages"]) for r in train} & {json.dumps(r["messages"]) for r in test}
    for source in summary["sources"]:  # the training split again, one file per source, for weighted mixtures
        by_source = [json.loads(line) for line in open(tmp_path / f"sft/train_by_source/{source}.jsonl")]
        assert by_source == [r for r in train if r["source"] == source]
    python = next(r for r in train if r["source"] == "python_tool")["messages"][1]["content"]
    assert "<|tool_output_start|>" in python and "error" not in python
    held_out_people = {r["name"] for r in map(json.loads, open(tmp_path / "sft/world_search_test.jsonl"))}
    for record in (r for r in train if r["source"] == "search_tool"):
        question, reply = (message["content"] for message in record["messages"])
        output, answer = reply.split("<|tool_output_start|>")[1].split("<|tool_output_end|>")
        assert "<|tool_call_start|>search" in reply and answer.rstrip(".").split()[-1] in output
        sought = ("what" if "occupation" in question or "living" in question else
                  "when" if "year" in question or "When" in question else "where")
        assert reply.startswith(f"Let me search for {sought} ")  # the fact sought is named before the call
        assert not any(name in question for name in held_out_people)
    problems = [json.loads(line) for line in open(tmp_path / "sft/word_problems_test.jsonl")]
    assert len(problems) == 15 and all(calculate(p["expression"]) == p["answer"] for p in problems)
    python_test = [json.loads(line) for line in open(tmp_path / "sft/python_problems_test.jsonl")]
    asked = {r["messages"][0]["content"] for r in train + test if r["source"] == "python_tool"}
    assert len(python_test) == 12 and not asked & {p["question"] for p in python_test}
    assert all(run_python(p["code"]) == p["answer"] and not p["answer"].startswith("python:") for p in python_test)
    probe_people = {(q["name"], q["group"]) for q in map(json.loads, open(tmp_path / "sft/world_probe.jsonl"))}
    frequent = [r["messages"] for r in map(json.loads, open(tmp_path / "sft/world_qa_frequent.jsonl"))]
    assert len(frequent) == 6 * sum(group == "frequent" for _, group in probe_people)  # 3 questions, 2 phrasings
    assert all(any(name in m[0]["content"] for name, group in probe_people if group == "frequent") for m in frequent)
    # no conversation states a held-out capital (chatterbot's trivia asks "Canberra is the capital city of which
    # country?"): the knowledge evaluation's answers stay unseen
    held_out = [(q["country"], q["answer"]) for q in map(json.loads, open(tmp_path / "sft/country_test.jsonl"))
                if q["group"] == "capital"]
    assert ("Australia", "Canberra") in held_out
    texts = [" ".join(m["content"] for m in r["messages"]) for r in train + test]
    assert not [text for text in texts if any(country in text and capital in text for country, capital in held_out)]
    (tmp_path / "sft/train.jsonl").write_text("")
    assert build_sft_data(tmp_path / "sft", config) == summary  # finished folders are reused as they are


def test_a_mixture_entry_that_would_not_load_as_meant_is_named(tmp_path, monkeypatch):
    records = tmp_path / "chats.jsonl"
    records.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                {"role": "assistant", "content": "Hello!"}]}) + "\n")
    monkeypatch.chdir(tmp_path)
    good = DatasetConfig(path="json", data_files=str(records), split="train", columns=["messages"])
    assert load_mixture(DatasetMixtureConfig(datasets=[good]))["train"][0]["messages"][1]["content"] == "Hello!"
    with pytest.raises(ValueError, match=r"datasets\[1\] \(path: json\): give data_files"):
        load_mixture(DatasetMixtureConfig(datasets=[good, DatasetConfig(path="json", split="train")]))
    with pytest.raises(FileNotFoundError, match=r"datasets\[0\] .*not found: missing.jsonl"):
        missing = DatasetConfig(path="json", data_files={"train": ["missing.jsonl"]})
        load_mixture(DatasetMixtureConfig(datasets=[missing]))
    with pytest.raises(ValueError, match="no datasets"):
        load_mixture(DatasetMixtureConfig(datasets=[]))
