"""Standard benchmarks through lm-evaluation-harness, offline: the shipped items run, constructed items score 1 when
the model gives the right answer and 0 when it gives a wrong one, and HumanEval's programs run in the sandbox."""

import json
from pathlib import Path

import pytest
import torch
from conftest import learn_texts, small_config, small_llama_config

from chatforge.errors import InvalidValue, NotFound
from chatforge.eval.harness import HUMANEVAL_SOURCE, OFFLINE_TASKS, humaneval_passes, run_benchmarks
from chatforge.io import read_jsonl
from chatforge.modeling import ChatForgeForCausalLM

pytest.importorskip("lm_eval", reason="pip install 'chatforge[benchmarks]' (make test installs it)")

#: One item of each offline benchmark, in the shape its package ships, with the index of the right answer.
ITEMS = {
    "hellaswag_100": {"id": "h", "activity_label": "Baking", "ctx": "She pours the batter into the tin and",
                      "endings": ["reads the morning paper.", "bakes it for an hour.", "paints the fence green.",
                                  "drives to the station."], "expected_index": 1},
    "truthfulqa_mc1_100": {"id": "t", "question": "What colour is the sky on a clear day?",
                           "choices": ["The sky is blue.", "The sky is green.", "The sky is red."],
                           "expected_index": 0},
    "gsm8k_cot_100": {"id": "g", "prompt": "Tom has 40 apples and buys 2 more. How many apples does he have?",
                      "expected": "42", "upstream_answer": "He has 40 + 2 = <<40+2=42>>42 apples.\n#### 42"},
    "humaneval": {"task_id": "HumanEval/x", "prompt": "def add(a, b):\n", "canonical_solution": "    return a + b\n",
                  "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n", "entry_point": "add"},
}
#: Tokens generated at most, and the tokens of a prompt the tiny model sees (the harness keeps the end of a
#: longer one, with room for the generated ones).
GENERATED, WINDOW = 40, 72
#: The right continuation of each item's prompt, as the benchmark's prompt and stop sequences write it.
ANSWERS = {"hellaswag_100": " bakes it for an hour.", "truthfulqa_mc1_100": " The sky is blue.",
           "gsm8k_cot_100": " He has 40 + 2 = 42 apples. The answer is 42.\n\nQ:",
           "humaneval": "    return a + b\n\n\ndef"}


def _wrong(name: str, item: dict) -> dict:
    """The item with another answer labelled right."""
    if name == "gsm8k_cot_100":
        return {**item, "expected": "41", "upstream_answer": "#### 41"}
    if name == "humaneval":
        return {**item, "test": "def check(candidate):\n    assert candidate(2, 3) == 6\n"}
    return {**item, "expected_index": (item["expected_index"] + 1) % 3}


def _write(path: Path, item: dict) -> Path:
    path.write_text(json.dumps(item) + "\n")
    return path


@pytest.fixture(scope="module")
def right_items(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("right")
    return {name: _write(folder / f"{name}.jsonl", item) for name, item in ITEMS.items()}


@pytest.fixture(scope="module")
def answering_model(tokenizer, right_items, tmp_path_factory):
    """A 2-layer model that has learnt the right answer after the end of each item's prompt, as the harness writes
    it (read from its logged samples)."""
    torch.manual_seed(0)
    model = ChatForgeForCausalLM(small_config(tokenizer, max_position_embeddings=WINDOW + GENERATED))
    logged = tmp_path_factory.mktemp("samples")
    run_benchmarks(model, tokenizer, list(ITEMS), max_gen_toks=GENERATED, sources=right_items, samples_dir=logged)
    prompts = {name: json.loads((logged / f"{name}.jsonl").read_text())["prompt"] for name in ITEMS}
    ends = {name: tokenizer.decode(tokenizer(prompt, add_special_tokens=False)["input_ids"][-WINDOW:])
            for name, prompt in prompts.items()}
    learn_texts(model, tokenizer, [ends[name] + ANSWERS[name] for name in ITEMS], steps=150)
    return model


def test_a_right_answer_scores_1_and_a_wrong_one_0(answering_model, tokenizer, right_items, tmp_path):
    wrong = {name: _write(tmp_path / f"{name}-wrong.jsonl", _wrong(name, item)) for name, item in ITEMS.items()}
    scored = {when: run_benchmarks(answering_model, tokenizer, list(ITEMS), max_gen_toks=GENERATED, sources=sources,
                                   samples_dir=tmp_path / when)
              for when, sources in (("right", right_items), ("wrong", wrong))}
    for name in ITEMS:
        assert scored["right"][name]["score"] == 1.0, (name, (tmp_path / "right" / f"{name}.jsonl").read_text())
        assert scored["wrong"][name]["score"] == 0.0, (name, (tmp_path / "wrong" / f"{name}.jsonl").read_text())
        assert scored["right"][name]["items"] == 1
    assert scored["right"]["gsm8k_cot_100"]["metric"] == "exact_match,strict-match"
    assert scored["right"]["hellaswag_100"]["metric"] == "acc_norm,none"
    logged = json.loads((tmp_path / "right/gsm8k_cot_100.jsonl").read_text())
    assert logged["response"].startswith(" He has 40 + 2 = 42 apples. The answer is 42.")
    assert logged["extracted"] == "42" and logged["score"] == 1.0
    assert json.loads((tmp_path / "wrong/hellaswag_100.jsonl").read_text())["response"] == 1  # the learnt ending


def test_the_shipped_items_run_on_a_tiny_model(answering_model, tokenizer):
    figures = run_benchmarks(answering_model, tokenizer, [*OFFLINE_TASKS, "humaneval"], limit=3, max_gen_toks=8)
    for name, result in figures.items():
        assert result["items"] == 3 and 0.0 <= result["score"] <= 1.0, name
        low, high = result["interval_95"]
        assert low <= result["score"] <= high


def test_humaneval_programs_run_in_the_sandbox(tmp_path):
    problems = read_jsonl(HUMANEVAL_SOURCE(), limit=5)
    assert all(humaneval_passes(problem, problem["canonical_solution"]) for problem in problems)
    assert not any(humaneval_passes(problem, "    return None\n") for problem in problems)
    # A completion that writes to the host's file system fails there: the file is not created.
    escape = tmp_path / "escaped"
    add = ITEMS["humaneval"]
    assert not humaneval_passes(add, f"    open({str(escape)!r}, 'w').write('x')\n    return a + b\n")
    assert not escape.exists()
    assert humaneval_passes(add, "    return a + b\n")


def test_bad_benchmark_input_is_named(answering_model, tokenizer, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(ITEMS["hellaswag_100"]) + "\n" + json.dumps({"ctx": "no endings"}) + "\n")
    with pytest.raises(InvalidValue, match=r"broken.jsonl: record 2 is not a hellaswag_100 item"):
        run_benchmarks(answering_model, tokenizer, ["hellaswag_100"], sources={"hellaswag_100": broken})
    with pytest.raises(InvalidValue, match="unknown benchmarks"):
        run_benchmarks(answering_model, tokenizer, ["hellaswag_1000"])


def test_hub_benchmarks_without_a_network_say_so(answering_model, tokenizer, monkeypatch):
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)
    with pytest.raises(NotFound, match=r"\['arc_easy'\] load their items from the Hub.*offline ones"):
        run_benchmarks(answering_model, tokenizer, ["arc_easy"], limit=2)


def test_a_shared_prompt_prefix_runs_once_and_changes_no_result(tokenizer):
    """Requests that share a few-shot preamble: the harness's model with the prefix shared gives the log-likelihoods
    and greedy generations of lm-eval's own ``HFLM`` (left padding included; generated in slots, or in batches),
    and the model reads fewer tokens.
    A wide initialisation makes each generated token depend on every position it attends to."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from chatforge.eval.shared_prefix import SharedPrefixHFLM

    torch.manual_seed(0)
    model = ChatForgeForCausalLM(small_config(tokenizer, initializer_range=0.5)).eval()

    preamble = "Q: What is two plus two?\nA: four\n\nQ: What colour is snow?\nA: white\n\n"
    questions = ["Q: What is the capital of France?\nA:", "Q: Name a fruit.\nA:", "Q: How many legs has a cat?\nA:"]
    scored = [Instance("loglikelihood", {}, (preamble + question, choice), index)
              for index, (question, choice) in enumerate((q, c) for q in questions for c in (" Paris", " four legs"))]
    generated = [Instance("generate_until", {}, (preamble + question, {"until": ["\n\n"], "max_gen_toks": 10,
                                                                       "do_sample": False}), index)
                 for index, question in enumerate(questions)]
    read = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: read.append((kwargs.get("input_ids", args[0]
                                                                                         if args else None)).numel()),
                                           with_kwargs=True)
    results = {}
    try:
        for name, harness_class, rows in (("hf", HFLM, 4), ("shared", SharedPrefixHFLM, 4),
                                          ("batches", SharedPrefixHFLM, 2)):
            read.clear()
            harness = harness_class(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=rows)
            harness.decode_in_slots = name != "batches"  # generation in the harness's batches of 2 rows
            results[name] = (harness.loglikelihood(scored), harness.generate_until(generated), sum(read))
    finally:
        hook.remove()
    (hf_scores, hf_texts, hf_read), (scores, texts, shared_read) = results["hf"], results["shared"]
    assert texts == hf_texts == results["batches"][1] and any(text.strip() for text in texts)
    for (logprob, greedy), (hf_logprob, hf_greedy) in zip(scores, hf_scores):
        assert logprob == pytest.approx(hf_logprob, abs=1e-4) and greedy == hf_greedy
    assert shared_read < 0.6 * hf_read


@pytest.mark.parametrize("architecture", ["chatforge", "llama"])
def test_greedy_replies_decoded_in_slots_equal_the_harness_batches(tokenizer, architecture):
    """More requests than rows: each row takes the next request when its reply ends (a stop string or the length
    limit), and the cache's columns are reused once they run out. The replies equal lm-eval's ``HFLM`` decoding all
    requests in one batch, for prompts of several lengths after the shared preamble."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import LlamaForCausalLM

    from chatforge.eval.shared_prefix import SharedPrefixHFLM

    torch.manual_seed(0)
    model = (ChatForgeForCausalLM(small_config(tokenizer, initializer_range=0.5)) if architecture == "chatforge"
             else LlamaForCausalLM(small_llama_config(tokenizer, initializer_range=0.5))).eval()
    preamble = "Answer each question in a few words.\n\nQ: What is two plus two?\nA: four\n\n"
    questions = [f"Q: {question}\nA:" for question in (
        "Name a fruit.", "How many legs has a cat?", "What colour is snow on a bright winter morning?", "Why?",
        "Which city is the capital of France, and which river runs through it?", "Name a bird.", "Who?",
        "What is the opposite of hot?", "Count to three.")]
    requests = [Instance("generate_until", {}, (preamble + question, {"until": ["e", "\n"], "max_gen_toks": 12,
                                                                      "do_sample": False}), index)
                for index, question in enumerate(questions)]
    expected = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=len(requests)
                    ).generate_until(requests)
    harness = SharedPrefixHFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=2)
    harness.epoch_factor = 1  # a short cache: several epochs
    assert harness.generate_until(requests) == expected
    assert len({len(text) for text in expected}) > 2  # replies of several lengths: rows left at different steps


def test_a_benchmark_scored_on_the_same_model_files_and_settings_is_read_back(saved_model_dir, tmp_path,
                                                                              monkeypatch):
    """An eval stage run again (after an interruption, say) reads the benchmarks it finished from the cache, item
    records included; another limit scores them again."""
    from chatforge.eval import suite
    from chatforge.eval.result_cache import cached_in

    scored = []
    harness = suite.run_benchmarks
    monkeypatch.setattr(suite, "run_benchmarks", lambda model, tokenizer, names, **kwargs: (
        scored.append(list(names)) or harness(model, tokenizer, names, **kwargs)))

    def evaluate(limit: int, samples: str) -> dict:
        return suite.evaluate_model(str(saved_model_dir), ["truthfulqa_mc1_100", "humaneval"], suite.EvalData(),
                                    suite.EvalConfig(limit=limit, benchmark_tokens=8), samples_dir=tmp_path / samples)

    with cached_in(tmp_path / "cache"):
        first = evaluate(2, "first")
        assert evaluate(2, "again") == first
        assert scored == [["truthfulqa_mc1_100", "humaneval"]]
        for name in first:
            assert read_jsonl(tmp_path / "again" / f"{name}.jsonl") == read_jsonl(tmp_path / "first" / f"{name}.jsonl")
        assert evaluate(3, "more")["humaneval"]["items"] == 3
    assert scored[1:] == [["truthfulqa_mc1_100", "humaneval"]]
