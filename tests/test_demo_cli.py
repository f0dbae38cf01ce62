import json
import math
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chatforge.data import iter_documents
from chatforge.io import read_jsonl


def _fresh_checkout(tmp_path: Path) -> Path:
    shutil.copytree(Path(__file__).parents[1] / "recipes", tmp_path / "recipes")
    return tmp_path


def run_following_hints(arguments: list[str], cwd: Path, depth: int = 0) -> subprocess.CompletedProcess:
    """``chatforge ARGUMENTS`` in ``cwd``; where it stops for a missing input, the command its error names is run
    first (in the same way), then it again: what a user starting from nothing does."""
    for _ in range(6):
        run = subprocess.run([sys.executable, "-m", "chatforge.cli", *arguments], cwd=cwd, capture_output=True,
                             text=True, timeout=3 * 3600)
        if run.returncode == 0:
            return run
        hint = re.search(r"make it with `chatforge ([^`]+)`", run.stderr)
        assert hint and depth < 6, run.stderr[-3000:]
        run_following_hints(shlex.split(hint.group(1)), cwd, depth + 1)
    raise AssertionError(f"chatforge {' '.join(arguments)} kept missing inputs")


@pytest.mark.slow
def test_tiny_pretrain_recipe_from_a_fresh_checkout(tmp_path):
    """The tiny recipe, after the speedrun's data stages it names, beats the unigram baseline and writes English
    words."""
    run = run_following_hints(["pretrain", "--config", "recipes/tiny/pretrain.yaml", "--report_to", "none"],
                              _fresh_checkout(tmp_path))
    output = tmp_path / "runs/tiny"
    records = [json.loads(line) for line in (output / "pretrain/metrics.jsonl").read_text().splitlines()]
    final = records[-1]
    baseline = float(re.search(r"unigram baseline ([\d.]+)", run.stdout).group(1))
    assert final["val_loss"] < baseline - 1.0
    samples = json.loads((output / "pretrain/samples.jsonl").read_text().splitlines()[-1])["samples"]
    documents = iter_documents([str(output / "corpus/train.jsonl")])
    corpus_words = {word.lower() for doc in documents for word in re.findall(r"[A-Za-z]+", doc)}
    sampled = [w.lower() for text in samples.values() for w in re.findall(r"[A-Za-z]+", text)]
    assert sum(word in corpus_words for word in sampled) / len(sampled) >= 0.7


@pytest.mark.slow
def test_tiny_sft_recipe_from_a_fresh_checkout(tmp_path):
    """recipes/tiny/sft.yaml, after the commands it names (data, pretraining), answers in the chat format
    where the base model does not, and solves more word problems with its tools than without."""
    run_following_hints(["sft", "--config", "recipes/tiny/sft.yaml"], _fresh_checkout(tmp_path))
    figures = json.loads((tmp_path / "runs/tiny/sft/eval.json").read_text())
    assert figures["eval_loss"] < figures["eval_loss_before"] - 2.0
    assert figures["sft"]["format"]["format_adherence"] >= 0.95 > 0.5 >= figures["base"]["format"]["format_adherence"]
    with_tools, without = (figures["sft"]["word_problems"][key] for key in ("with_tools", "without_tools"))
    assert with_tools["accuracy"] >= without["accuracy"] + 0.2
    search, no_search = (figures["sft"]["world_search"][key] for key in ("with_tools", "without_tools"))
    assert search["accuracy"] > no_search["accuracy"]


@pytest.mark.slow
def test_tiny_knowledge_probing_recipe_from_a_fresh_checkout(tmp_path):
    """recipes/tiny/sft-probe.yaml, after the commands it names (pretraining, sft-world.yaml, the probe), says
    "I don't know" about unseen people, which the plain SFT model never does, and answers about frequent people
    almost as often as the plain SFT model."""
    run_following_hints(["sft", "--config", "recipes/tiny/sft-probe.yaml"], _fresh_checkout(tmp_path))
    plain, probed = (json.loads((tmp_path / f"runs/tiny/{name}/eval.json").read_text())["sft"]["knowledge"]
                     for name in ("sft-world", "sft-probe"))
    assert probed["unseen"]["dont_know_rate"] >= 0.8 > 0.2 >= plain["unseen"]["dont_know_rate"]
    assert plain["frequent"]["accuracy"] >= 0.3
    assert probed["frequent"]["accuracy"] >= plain["frequent"]["accuracy"] - 0.05


@pytest.mark.slow
def test_tiny_rl_recipes_from_a_fresh_checkout(tmp_path):
    """recipes/tiny/ppo.yaml and grpo.yaml, after the commands they name (base, SFT and reward models, their
    data): the reward model agrees with the held-out rankings, PPO raises the held-out reward-model score within
    its KL budget and keeps a policy no worse on test prompts (which its stop rule never saw), and GRPO raises
    the SFT model's held-out accuracy on word problems."""
    checkout = _fresh_checkout(tmp_path)
    for recipe in ("ppo", "grpo"):
        run_following_hints([recipe, "--config", f"recipes/tiny/{recipe}.yaml"], checkout)
    reward = json.loads((tmp_path / "runs/tiny/reward/eval.json").read_text())["reward_model"]
    assert reward["pairs"]["accuracy"] >= 0.8 and reward["rankings"]["kendall_tau"] >= 0.6
    ppo = json.loads((tmp_path / "runs/tiny/ppo/eval.json").read_text())
    assert ppo["last"]["eval_rm_score"] > ppo["initial"]["eval_rm_score"]
    assert max(row["kl"] for row in read_jsonl(tmp_path / "runs/tiny/ppo/metrics.jsonl")) <= ppo["config"]["kl_budget"]
    initial, kept = ppo["initial"], ppo["best"]
    assert kept["test_gold"] >= initial["test_gold"] - 2 * math.hypot(initial["test_gold_se"], kept["test_gold_se"])
    assert max(row["sampling_logprob_gap"] for row in read_jsonl(tmp_path / "runs/tiny/ppo/metrics.jsonl")) < 0.05
    grpo = json.loads((tmp_path / "runs/tiny/grpo/eval.json").read_text())
    assert grpo["grpo"]["arithmetic"]["pass@1"] >= grpo["before"]["arithmetic"]["pass@1"] + 0.1
