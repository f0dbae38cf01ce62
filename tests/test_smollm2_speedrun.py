"""``chatforge speedrun --recipe smollm2-135m``: a pretrained model imported offline, given the tool protocol, then
SFT with tools, reward model, PPO, GRPO, evaluation, export and report; here with a few training steps, a few
items per figure and a sample of the capitals' questions. The default run imports a 2-layer model written with
SmolLM2's tokenizer and metadata (every stage on its vocabulary and chat template); ``-m slow`` the real one."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import skip_without_smollm2, write_small_smollm2_gguf
from transformers import AutoTokenizer

from chatforge.eval.intervals import wilson_interval
from chatforge.io import write_jsonl
from chatforge.recipes import recipe_file
from chatforge.speedrun import speedrun
from chatforge.tasks.country_facts import country_questions

FEW = {"max_steps": 2, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "max_length": 256,
       "warmup_steps": 0, "eval_prompts": 2, "eval_word_problems": 2, "eval_world_questions": 4,
       "eval_conversations": 4}


def some_country_questions(folder: Path) -> dict:
    """Every eighth probe question and every fifth held-out one, as files the sft-probe recipe can name."""
    questions = country_questions()
    paths = {}
    for split, key, every in (("probe", "probe_questions", 8), ("test", "probe_held_out", 5)):
        paths[key] = str(folder / f"country_{split}.jsonl")
        write_jsonl(paths[key], [q for q in questions if q["split"] == split][::every])
    return paths


@pytest.fixture(scope="module", params=["small", pytest.param("SmolLM2-135M-Instruct", marks=pytest.mark.slow)])
def smollm2_run(request, tmp_path_factory):
    skip_without_smollm2()
    folder = tmp_path_factory.mktemp("smollm2")
    recipe = yaml.safe_load(recipe_file("smollm2-135m/speedrun.yaml").read_text())
    if request.param == "small":
        recipe["base_model"]["gguf"] = str(write_small_smollm2_gguf(folder / "small-smollm2.gguf"))
    recipe["training"]["sft"]["overrides"] = FEW
    recipe["training"]["sft-probe"]["overrides"] = {**FEW, "eval_world_questions": None, "probe_samples": 1,
                                                     **some_country_questions(folder)}
    recipe["training"]["reward"]["overrides"] = {"max_steps": 1, "per_device_train_batch_size": 2, "policy_samples": 0,
                                                 "eval_pairs": 4, "eval_rankings": 2}
    recipe["training"]["ppo"]["overrides"] = {"max_steps": 1, "per_device_train_batch_size": 2, "num_mini_batches": 1,
                                              "num_ppo_epochs": 1, "max_completion_length": 8, "eval_prompts": 2,
                                              "test_prompts": 2, "eval_steps": 1}
    grpo = recipe["training"]["grpo"]
    grpo["overrides"] = {**grpo["overrides"], "max_steps": 1, "num_generations": 2, "per_device_train_batch_size": 2,
                         "max_completion_length": 16, "eval_problems": 2, "eval_k": 2}
    # one log-likelihood benchmark and one whose programs run in the sandbox (the harness tests cover the rest)
    recipe["eval"] = {**recipe["eval"], "limit": 2, "k": 2, "benchmark_tokens": 16,
                      "benchmarks": ["hellaswag_100", "humaneval"]}
    (folder / "speedrun.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        report = speedrun(str(folder / "speedrun.yaml"), folder / "run")
    return folder / "run", report


def test_the_speedrun_imports_the_model_and_post_trains_it(smollm2_run):
    output, report = smollm2_run
    assert list(report) == ["import", "sft-data", "sft", "probe", "sft-probe", "preference-data", "reward", "ppo",
                            "problems", "grpo", "eval", "export", "report", "run"]
    assert report["import"]["tool_tokens_added"] == 4
    sft = report["sft"]
    assert sft["base.word_problems.with_tools.accuracy.items"] == sft["word_problems.with_tools.accuracy.items"] == 2
    low, high = wilson_interval(round(sft["world_search.with_tools.accuracy"] * 2), 2)
    assert (sft["world_search.with_tools.accuracy.low"], sft["world_search.with_tools.accuracy.high"]) == (low, high)
    probed = report["sft-probe"]  # the held-out capitals, grouped by what the probe found the imported model to know
    assert report["probe"]["held_out.questions"] == 28 and report["probe"]["questions"] == 41
    assert report["probe"]["model"] == "base"
    held_out = {"known": report["probe"]["held_out.known"]}
    held_out["unknown"] = report["probe"]["held_out.questions"] - held_out["known"]
    for group, questions in held_out.items():  # the small model's random weights know no capital
        for model in ("", "base."):
            assert probed.get(f"{model}knowledge.{group}.dont_know_rate.items", 0) == questions
    evaluation = json.loads((output / "eval.json").read_text())
    assert set(evaluation) == {"base", "sft", "ppo", "grpo", "reward"}
    for model in ("base", "sft", "grpo"):  # every held-out capital, as the probe labelled it, asked of every model
        knowledge = evaluation[model]["knowledge"]
        assert set(knowledge) <= {"known", "unknown"} and sum(g["questions"] for g in knowledge.values()) == 28
    assert report["reward"]["reward_model.pairs.pairs"] == 4 and report["ppo"]["best.test_prompts"] == 2
    assert report["grpo"]["before.arithmetic.problems"] == report["grpo"]["after.arithmetic.problems"] == 2
    benchmarks = {"hellaswag_100", "humaneval"}
    # no pretraining data; the problems GRPO trains on are held out for every chat model
    assert set(evaluation["sft"]) == {"format", "arithmetic", "knowledge", "induction"} | benchmarks  # recall skipped
    assert all(evaluation[model][name]["items"] == 2 for model in ("base", "sft") for name in benchmarks)
    exported = Path(report["export"]["sft"])
    assert "<|tool_call_start|>" in AutoTokenizer.from_pretrained(exported).get_vocab()
    assert "imported from a GGUF file" in (output / "export/base/README.md").read_text()
    card = (output / "report.md").read_text()
    assert "| word problems, with the calculator |" in card and "## Exported models" in card
    assert "## RLHF (PPO)" in card and "| better > worse | pairs | reward model right |" in card
    assert "| hellaswag_100 (acc_norm, n=2) |" in card and (output / "report_assets/benchmarks.png").exists()
