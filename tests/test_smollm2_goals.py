"""``chatforge speedrun --recipe smollm2-135m`` as shipped, on the real SmolLM2-135M-Instruct (slow): every goal the
recipe is measured against, on its held-out items. The post-training half up to the probed SFT model runs first
(``-k knowledge_and_tools`` stops there); the RL stages, the evaluation and the report continue the same run.
``CHATFORGE_SMOLLM2_RUN=runs/smollm2`` checks (and finishes) that run instead of a new one: finished stages are
read, not run again."""

import json
import math
import os
from pathlib import Path

import pytest
from conftest import skip_without_smollm2

from chatforge.speedrun import speedrun

pytestmark = pytest.mark.slow

BENCHMARKS = ("hellaswag_100", "truthfulqa_mc1_100", "gsm8k_cot_100", "humaneval")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    skip_without_smollm2()
    if os.environ.get("CHATFORGE_SMOLLM2_RUN"):
        run = Path(os.environ["CHATFORGE_SMOLLM2_RUN"]).resolve()
        run.parent.mkdir(parents=True, exist_ok=True)
        return run
    return tmp_path_factory.mktemp("smollm2-goals") / "run"


@pytest.fixture(scope="module")
def through_sft_probe(run_folder) -> dict:
    """The stages from the import through the probed SFT model."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(run_folder.parent)
        return speedrun("smollm2-135m", run_folder, until="sft-probe")


@pytest.fixture(scope="module")
def whole_run(through_sft_probe, run_folder) -> dict:
    """The same run continued through the RL stages, the evaluation and the report."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(run_folder.parent)
        return speedrun("smollm2-135m", run_folder)


def _with_interval(figures: dict, key: str, items: int) -> float:
    """The figure ``key``, after checking it carries its item count and a 95% interval around it."""
    assert figures[f"{key}.items"] == items
    assert figures[f"{key}.low"] <= figures[key] <= figures[f"{key}.high"]
    return figures[key]


def test_knowledge_and_tools_goals(through_sft_probe):
    sft, probed = through_sft_probe["sft"], through_sft_probe["sft-probe"]
    for figures in (sft, probed):  # tools taught by SFT and kept through the probe's examples
        assert _with_interval(figures, "word_problems.with_tools.accuracy", 100) >= 0.80
        assert _with_interval(figures, "world_search.with_tools.accuracy", 100) >= 0.60
        # programs that need the sandbox: solved through it far more often than without it
        assert (_with_interval(figures, "python_problems.with_tools.accuracy", 100)
                > figures["python_problems.without_tools.accuracy.high"])
    # the imported model before SFT, beside it: it has never seen the tool protocol
    assert sft["base.word_problems.with_tools.accuracy"] < 0.80
    assert sft["base.world_search.with_tools.accuracy"] < 0.60
    # knowing what it knows, on the held-out capitals the probe labelled from the imported model's answers (what it
    # keeps of them: the eval stage's, below)
    known = through_sft_probe["probe"]["held_out.known"]
    unknown = through_sft_probe["probe"]["held_out.questions"] - known
    assert _with_interval(probed, "knowledge.unknown.dont_know_rate", unknown) >= 0.70
    assert _with_interval(probed, "format_adherence", 100) >= 0.95


@pytest.mark.xfail(reason="not reached: 81-88% kept on the test split, and at most 91% kept with 70% declined on "
                          "validation with the threshold set after the fact (docs/sft.md, 'How far out any "
                          "setting's line reaches')", strict=False)
def test_knowledge_kept_right_goal(whole_run, run_folder):
    # of the held-out capitals the imported model answered right (among those the probe found known), the probed
    # model still answers 90% right
    evaluation = json.loads((run_folder / "eval.json").read_text())
    assert evaluation["sft"]["knowledge"]["known"]["kept_right"] >= 0.90


def test_knowledge_declined_reward_ppo_grpo_and_benchmark_goals(whole_run, run_folder):
    assert whole_run["reward"]["reward_model.pairs.accuracy"] >= 0.80
    assert whole_run["reward"]["reward_model.pairs.accuracy"] > whole_run["reward"]["untrained.pairs.accuracy"] + 0.2
    ppo = whole_run["ppo"]
    assert ppo["last.rm_score"] > ppo["initial.rm_score"]  # PPO raised the reward model's score
    # and kept a policy no worse by the judge on test prompts its stop rule never saw
    assert ppo["best.test_gold"] >= ppo["initial.test_gold"] - 2 * math.hypot(ppo["initial.test_gold_se"],
                                                                               ppo["best.test_gold_se"])
    grpo = whole_run["grpo"]
    assert grpo["after.arithmetic.problems"] == 100
    assert grpo["after.arithmetic.pass@1"] >= grpo["before.arithmetic.pass@1"] + 0.10
    assert grpo["before.arithmetic.mean_reply_tokens"] > 0 < grpo["after.arithmetic.mean_reply_tokens"]
    evaluation = json.loads((run_folder / "eval.json").read_text())
    # the kept-right figure with its interval (its goal: the test above); to the capitals the probe found unknown
    # the probed model says "I don't know"
    knowledge = evaluation["sft"]["knowledge"]
    assert knowledge["known"]["right_before"] > 20
    low, high = knowledge["known"]["kept_right_interval_95"]
    assert low <= knowledge["known"]["kept_right"] <= high
    assert knowledge["unknown"]["dont_know_rate"] >= 0.70
    # GRPO's word problems, worked in the text with the tool tokens suppressed, left the final model a chat assistant
    assert evaluation["grpo"]["format"]["format_adherence"] >= evaluation["sft"]["format"]["format_adherence"] - 0.05
    for model in ("base", "sft", "ppo", "grpo"):  # the standard benchmarks on every language model
        assert all(evaluation[model][name]["items"] == 100 for name in BENCHMARKS)
    card = (run_folder / "report.md").read_text()
    assert "## RLHF (PPO)" in card and (run_folder / "report_assets/benchmarks.png").exists()
