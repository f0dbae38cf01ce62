"""The SFT, reward and GRPO recipes on two CPU processes, data parallel and FSDP2 (tests/fsdp2_launch.py): each
checkpoints, resumes to the weights of an unbroken run, and saves whole weights; SFT and reward end with the
weights of one process accumulating the same global batch. (GRPO samples its completions with each process's
own random stream, so one process cannot draw the same ones: its two sharding modes are compared instead.)

Slow: every run launches a recipe, about ten of them per stage."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CPU_ONLY, launch_processes, small_config
from safetensors.torch import load_file
from transformers import AutoModel

from chatforge.data import DataCollatorForChat
from chatforge.io import write_jsonl
from chatforge.modeling import ChatForgeForCausalLM, set_generation_defaults
from chatforge.tasks.preferences import PreferenceDataConfig, build_preference_data
from chatforge.tasks.sft_data import SFTDataConfig, build_sft_data

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
COMMON = dict(max_steps=4, save_strategy="steps", save_steps=2, eval_strategy="no", logging_steps=1, bf16=False,
              use_cpu=True, report_to="none", activation_checkpointing=False, seed=0, learning_rate=1e-3)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizer) -> Path:
    """A small model and the data of each stage."""
    root = tmp_path_factory.mktemp("sharded")
    torch.manual_seed(0)
    model = ChatForgeForCausalLM(small_config(tokenizer))
    set_generation_defaults(model, tokenizer)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    build_sft_data(root / "sft-data", SFTDataConfig(identity=10, smalltalk=20, refusals=10, word_problems_small=20,
                                                    word_problems_tool=20, python_tool=4, search_tool=4,
                                                    word_problems_test=4))
    build_preference_data(root / "preferences", PreferenceDataConfig(word_problems=40, chat=40))
    questions = [f"What is {a} - {a - 1}?" for a in range(2, 34)]
    learn_answers(model, tokenizer, questions)
    model.save_pretrained(root / "unsure")
    tokenizer.save_pretrained(root / "unsure")
    problems = [{"prompt": [{"role": "user", "content": question}], "answer": "1"} for question in questions]
    (root / "problems").mkdir()
    for split in ("train", "test"):
        write_jsonl(root / f"problems/{split}.jsonl", problems)
    return root


def learn_answers(model, tokenizer, questions: list[str], steps: int = 60) -> None:
    """Teach ``model`` to answer each question "The answer is 1." or "... 2." about half and half: GRPO's
    groups then hold right and wrong answers to learn from."""
    conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": f"The answer is {n}."}]
                     for q in questions for n in (1, 2)]
    batch = DataCollatorForChat(tokenizer)([{"messages": m} for m in conversations])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def _config(stage: str, inputs: Path) -> dict:
    model = {"model_name_or_path": str(inputs / "model")}
    if stage == "sft":
        return {**model, "sft_data_dir": str(inputs / "sft-data"), "max_length": 128, "packing": False,
                "per_device_train_batch_size": 2, "eval_prompts": 2, "eval_word_problems": 2,
                "eval_world_questions": 0, "eval_conversations": 4, "eval_base_model": False,
                "datasets": [{"path": "json", "data_files": str(inputs / "sft-data/train.jsonl"), "split": "train",
                              "columns": ["messages"]}]}
    if stage == "reward":
        return {**model, "preference_data_dir": str(inputs / "preferences"), "max_length": 128,
                "per_device_train_batch_size": 4, "eval_pairs": 8, "eval_rankings": 2,
                "datasets": [{"path": "json", "data_files": str(inputs / "preferences/rankings_train.jsonl"),
                              "split": "train"}]}
    return {"model_name_or_path": str(inputs / "unsure"), "problems_dir": str(inputs / "problems"),
            "per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 8, "eval_problems": 2,
            "eval_k": 2,
            "datasets": [{"path": "json", "data_files": str(inputs / "problems/train.jsonl"), "split": "train"}]}


def _run(stage: str, inputs: Path, output: Path, sharding: str | None, **overrides) -> None:
    """The stage's recipe on one process (``sharding`` None) or two ("ddp", "fsdp2")."""
    config = output.parent / f"{output.name}.yaml"
    config.write_text(yaml.safe_dump({**COMMON, **_config(stage, inputs), "output_dir": str(output), **overrides}))
    recipe = [str(ROOT / f"recipes/{stage}.py"), "--config", str(config)]
    if sharding:
        run = launch_processes(recipe, fsdp2=sharding == "fsdp2", **CPU_ONLY)
    else:
        run = subprocess.run([sys.executable, *recipe], capture_output=True, text=True, timeout=900,
                             env={**os.environ, "OMP_NUM_THREADS": "1", **CPU_ONLY})
        assert run.returncode == 0, run.stderr[-3000:]
    if sharding and stage != "sft":  # (the SFT runs here skip it) one evaluation before training, on rank 0
        assert re.findall(r"evaluating the model before training on process (\d) of (\d)", run.stdout) == [("0", "2")]
    if sharding == "fsdp2":  # each process holds shards of the parameters, not a silent fallback to DDP
        models = [(sharded, total) for sharded, total in re.findall(r"FSDP2 sharded parameters: (\d+) of (\d+)",
                                                                    run.stdout) if total != "0"]
        assert len(models) >= 2 and all(sharded == total for sharded, total in models)


def _assert_same_weights(folder: Path, expected_folder: Path, atol: float = 1e-5) -> None:
    """The models saved in the two folders, loaded, have the same weights (a save from FSDP's gathered state may
    also hold a copy of a tied weight: loading ties it again)."""
    saved, expected = (AutoModel.from_pretrained(path).state_dict() for path in (folder, expected_folder))
    assert saved.keys() == expected.keys()
    for name, weight in saved.items():
        torch.testing.assert_close(weight, expected[name], atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("stage", ["sft", "reward", "grpo"])
def test_two_processes_checkpoint_resume_and_save_whole_weights(stage, inputs, tmp_path):
    initial = load_file(inputs / ("unsure" if stage == "grpo" else "model") / "model.safetensors")
    for sharding in ("ddp", "fsdp2"):
        _run(stage, inputs, tmp_path / sharding, sharding)
        assert (tmp_path / sharding / "checkpoint-2").is_dir()
        trained = load_file(tmp_path / sharding / "model.safetensors")
        assert any(not torch.equal(weight, initial[name]) for name, weight in trained.items() if name in initial)
    _assert_same_weights(tmp_path / "fsdp2", tmp_path / "ddp")
    if stage != "grpo":
        _run(stage, inputs, tmp_path / "one", None, gradient_accumulation_steps=2)
        _assert_same_weights(tmp_path / "ddp", tmp_path / "one")
    straight = tmp_path / "straight"
    shutil.copytree(tmp_path / "fsdp2", straight)
    shutil.rmtree(tmp_path / "fsdp2/checkpoint-4")  # back to a run stopped after step 2
    _run(stage, inputs, tmp_path / "fsdp2", "fsdp2", resume_from_checkpoint="latest")
    _assert_same_weights(tmp_path / "fsdp2", straight)


def test_an_fsdp2_sft_saves_its_interpolation_with_the_starting_model(inputs, tmp_path):
    """`trained_weights_share` under FSDP2: the main process interpolates the whole weights both processes saved."""
    initial = AutoModel.from_pretrained(inputs / "model").state_dict()
    for share in (1.0, 0.5):
        _run("sft", inputs, tmp_path / str(share), "fsdp2", trained_weights_share=share, save_strategy="no")
    trained, halfway = (AutoModel.from_pretrained(tmp_path / str(share)).state_dict() for share in (1.0, 0.5))
    for name, weight in initial.items():
        torch.testing.assert_close(halfway[name], (weight + trained[name]) / 2, atol=1e-5, rtol=0, msg=name)
