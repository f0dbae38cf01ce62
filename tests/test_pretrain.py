import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CPU_ONLY, launch_processes, small_config
from transformers import AutoTokenizer

from chatforge.modeling import ChatForgeForCausalLM
from chatforge.training import PretrainConfig, pretrain
from chatforge.training.checkpoint import list_checkpoints, resolve_checkpoint
from chatforge.training.loop import lr_factor
from chatforge.training.precision import cpu_bf16_is_slow

RECIPE = Path(__file__).parents[1] / "recipes" / "pretrain.py"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Tokenizer and shards built from the embedded corpus."""
    from chatforge.training.inputs import embedded_inputs

    return embedded_inputs(tmp_path_factory.mktemp("pretrain_inputs"), vocab_size=1024)


def small(inputs: Path, output_dir: Path, **overrides) -> dict:
    fields = dict(output_dir=str(output_dir), dataset_dir=str(inputs / "shards"),
                  tokenizer_name_or_path=str(inputs / "tokenizer"), max_seq_length=64,
                  per_device_train_batch_size=8, max_steps=12, warmup_steps=2, learning_rate=3e-3,
                  logging_steps=1, eval_steps=6, eval_batches=2, sample_steps=6, sample_max_new_tokens=8,
                  save_steps=4, save_total_limit=3, seed=7)
    return {**fields, **overrides}


def losses(output_dir: Path) -> dict[int, float]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return {record["step"]: record["loss"] for record in map(json.loads, lines)}


def test_training_lowers_validation_loss_below_the_unigram_baseline(inputs, tmp_path):
    summary = pretrain(PretrainConfig(**small(inputs, tmp_path, max_steps=100, eval_steps=50, sample_steps=100,
                                              save_steps=100, warmup_steps=10, per_device_train_batch_size=16)))
    first = losses(tmp_path)[1]
    assert first > 6.0  # ~ln(1024) = 6.9 at initialisation
    assert summary["val_loss"] < summary["unigram_val_loss"] - 0.3  # 5.31 vs 5.97 measured
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [record for record in records if "val_bpb" in record]
    assert [record["step"] for record in evals] == [50, 100] and evals[1]["val_bpb"] < evals[0]["val_bpb"]
    assert len(records) == 100 and {"step", "loss", "lr", "tokens_per_s"} <= set(records[0])
    assert "val_loss" in records[-1] and "val_bpb" in records[-1]
    samples = json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[-1])["samples"]
    assert set(samples) == set(PretrainConfig().sample_prompts)


def test_metrics_are_read_off_the_device_once_per_logging_window(inputs, tmp_path):
    pretrain(PretrainConfig(**small(inputs, tmp_path, max_steps=8, logging_steps=4, eval_steps=8, sample_steps=8,
                                    save_steps=8)))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == list(range(1, 9))  # every step has its record
    assert all(isinstance(record["loss"], float) and record["grad_norm"] > 0 for record in records)
    windows = [{record["tokens_per_s"] for record in records[start:start + 4]} for start in (0, 4)]
    assert all(len(window) == 1 for window in windows)  # one reading, one average, per window of 4 steps


def test_batches_built_ahead_are_the_batches_of_the_source_in_order(inputs):
    from chatforge.data.shards import TokenShards
    from chatforge.training.data import BatchPrefetcher, WindowSampler

    source = WindowSampler(TokenShards(inputs / "shards"), 32, 4, seed=0)
    ahead = BatchPrefetcher(source, pin=False)
    for index in (0, 1, 2, 7, 8, 3):  # in order, then a jump (a resumed run), then back
        batch = ahead.batch(index)
        assert all(torch.equal(batch[key], value) for key, value in source.batch(index).items())


def test_killed_run_resumes_with_bitwise_identical_losses(inputs, tmp_path):
    reference = tmp_path / "uninterrupted"
    pretrain(PretrainConfig(**small(inputs, reference)))
    config = small(inputs, tmp_path / "killed", resume_from_checkpoint="latest")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen([sys.executable, str(RECIPE), "--config", str(config_file)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 6):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = len(metrics.read_text().splitlines())
    assert 6 <= killed_at < 12, "the run must be killed in the middle"
    # checkpoint-4, or checkpoint-8 where the run got that far before the kill landed (a loaded machine)
    assert resolve_checkpoint(tmp_path / "killed", "latest").name in {"checkpoint-4", "checkpoint-8"}
    resumed = subprocess.run([sys.executable, str(RECIPE), "--config", str(config_file)], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(tmp_path / "killed") == losses(reference)  # floats compared exactly, step by step


def test_a_damaged_checkpoint_is_skipped_for_the_previous_one(inputs, tmp_path):
    pretrain(PretrainConfig(**small(inputs, tmp_path, max_steps=8)))
    newest = list_checkpoints(tmp_path)[-1]
    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="skipping damaged checkpoint .*checkpoint-8: model.safetensors does not"):
        assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-4"
    with pytest.raises(ValueError, match="checkpoint-8: model.safetensors does not match its checksum"):
        resolve_checkpoint(tmp_path, str(newest))
    (list_checkpoints(tmp_path)[0] / "checksums.json").unlink()  # as if the process died while writing it
    with pytest.warns(UserWarning):
        assert resolve_checkpoint(tmp_path, "latest") is None


def test_schedules_warm_up_then_decay_to_the_floor():
    cosine = PretrainConfig(max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    values = [lr_factor(step, cosine) for step in range(100)]
    assert values[0] < values[9] < values[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:])) and values[-1] == pytest.approx(0.1, abs=0.01)
    wsd = PretrainConfig(max_steps=100, warmup_steps=10, lr_scheduler_type="wsd", decay_steps_ratio=0.2)
    assert [lr_factor(s, wsd) for s in (20, 79)] == [1.0, 1.0] and lr_factor(99, wsd) < 0.2


@pytest.mark.parametrize("yaml_text, message", [
    ("max_stepz: 10\n", "Unknown arguments from config file: ['--max_stepz', '10']"),
    ("per_device_train_batch_size: 0\n", "PretrainConfig.per_device_train_batch_size=0: must be positive"),
    ("lr_scheduler_type: linear\n", "PretrainConfig.lr_scheduler_type='linear': use 'cosine' or 'wsd'"),
    ("attn_implementation: flash\n", "PretrainConfig.attn_implementation='flash': use one of"),
])
def test_bad_configs_are_refused_with_one_clear_error(tmp_path, yaml_text, message):
    from trl import TrlParser

    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml_text)
    with pytest.raises(ValueError) as error:
        TrlParser(dataclass_types=[PretrainConfig]).parse_args_and_config(["--config", str(config_file)])
    assert message in str(error.value)


def test_wrong_types_are_refused(tmp_path, capsys):
    from trl import TrlParser

    config_file = tmp_path / "bad.yaml"
    config_file.write_text("max_steps: ten\n")
    with pytest.raises(SystemExit):
        TrlParser(dataclass_types=[PretrainConfig]).parse_args_and_config(["--config", str(config_file)])
    assert "--max_steps/--max-steps: invalid int value: 'ten'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"PretrainConfig.sample_prompts='hi': expected list\[str\]"):
        PretrainConfig(sample_prompts="hi")


def test_missing_data_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"dataset_dir={tmp_path / 'nope'}: no token shards there"):
        pretrain(PretrainConfig(output_dir=str(tmp_path / "out"), dataset_dir=str(tmp_path / "nope")))


def test_attention_kernel_and_document_masking_options(inputs, tmp_path):
    """The kernels compute the same attention: compared in fp32 (in bf16, where a CPU has it natively, they
    differ by ~1e-3 in rounding alone)."""
    def run(name, **overrides):
        pretrain(PretrainConfig(**small(inputs, tmp_path / name, max_steps=3, eval_steps=3, sample_steps=3,
                                        save_steps=3, eval_batches=1, report_to=[], bf16=False, **overrides)))
        return list(losses(tmp_path / name).values())

    within_documents = run("sdpa")
    assert run("eager", attn_implementation="eager") == pytest.approx(within_documents, abs=1e-4)
    across_documents = run("across", document_masking=False)
    assert all(abs(a - b) > 1e-4 for a, b in zip(across_documents, within_documents))
    if importlib.util.find_spec("flash_attn") is None:  # the kernel asked for is the one the model loads
        with pytest.raises(ImportError, match="FlashAttention2"):
            run("flash", attn_implementation="flash_attention_2")


def test_lr_logged_is_the_one_used():
    assert math.isclose(lr_factor(0, PretrainConfig(max_steps=10, warmup_steps=1)), 0.5)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def one_process_run(inputs, tmp_path_factory):
    """The reference of the sharded runs: one process with their global batch, so accumulating two batches a
    step."""
    output = tmp_path_factory.mktemp("one_process")
    run = subprocess.run([sys.executable, str(RECIPE), *_distributed_args(inputs), "--output_dir", str(output)],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **CPU_ONLY})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "4 rows per device x 1 process(es) x 2 accumulation steps = 512 tokens per optimizer step" in run.stdout
    return output


def _distributed_args(inputs: Path) -> list[str]:
    return ["--dataset_dir", str(inputs / "shards"), "--tokenizer_name_or_path", str(inputs / "tokenizer"),
            "--max_steps", "4", "--warmup_steps", "1", "--per_device_train_batch_size", "4", "--max_seq_length", "64",
            "--eval_steps", "2", "--eval_batches", "1", "--sample_steps", "2", "--save_steps", "2", "--no_bf16",
            "--global_batch_size", "8"]


# data parallel behind slow: PPO's two-process test runs it too, and FSDP2 takes every path it takes
@pytest.mark.parametrize("sharding", [pytest.param("ddp", marks=pytest.mark.slow), "fsdp2"])
def test_two_processes_sample_save_and_resume_to_the_weights_of_one(inputs, tmp_path, one_process_run, sharding):
    """Two processes (data parallel, or FSDP2 with every parameter sharded) sample and checkpoint mid-run; the
    checkpoints hold whole weights, a run resumed from one ends where an unbroken run ends, and both match one
    process with the same global batch (which accumulates two batches where the two processes take one each)."""
    recipe = [RECIPE, *_distributed_args(inputs), "--output_dir", tmp_path / "two"]
    two = launch_processes(recipe, fsdp2=sharding == "fsdp2", **CPU_ONLY)
    assert "on 2 process(es)" in two.stdout
    assert ("4 rows per device x 2 process(es) x 1 accumulation steps = 512 tokens per optimizer step "
            f"({'FSDP' if sharding == 'fsdp2' else 'MULTI_CPU'})") in two.stdout
    if sharding == "fsdp2":  # each process holds shards of every parameter, not a silent fallback to DDP
        reports = re.findall(r"FSDP2 sharded parameters: (\d+) of (\d+)", two.stdout)
        assert len(reports) == 2 and all(sharded == total != "0" for sharded, total in reports)
    one_losses, two_losses = losses(one_process_run), losses(tmp_path / "two")
    assert two_losses.keys() == one_losses.keys() == set(range(1, 5))
    assert all(math.isclose(two_losses[s], one_losses[s], rel_tol=1e-5) for s in two_losses)
    assert one_losses[4] < one_losses[1]
    assert len((tmp_path / "two" / "samples.jsonl").read_text().splitlines()) == 2
    expected = _weights(one_process_run)
    for folder in (tmp_path / "two" / "checkpoint-2", tmp_path / "two"):
        assert _weights(folder).keys() == _weights(one_process_run / "checkpoint-2").keys()
    for name, weight in _weights(tmp_path / "two").items():
        torch.testing.assert_close(weight, expected[name], atol=1e-5, rtol=0)
    shutil.rmtree(tmp_path / "two" / "checkpoint-4")  # back to a run stopped after step 2
    launch_processes([*recipe, "--resume_from_checkpoint", "latest"], fsdp2=sharding == "fsdp2", **CPU_ONLY)
    assert losses(tmp_path / "two") == two_losses
    for name, weight in _weights(tmp_path / "two").items():
        torch.testing.assert_close(weight, expected[name], atol=1e-5, rtol=0)


# ZeRO-2 behind slow: ZeRO-3 shards what it shards and the parameters too
@pytest.mark.parametrize("stage", [pytest.param(2, marks=pytest.mark.slow), 3])
def test_deepspeed_zero_on_two_processes_trains_as_one_process(inputs, tmp_path, one_process_run, stage):
    """ZeRO-2 (optimizer state and gradients sharded) and ZeRO-3 (parameters too) over two CPU processes: with no
    dataloader to read them from, the run gives DeepSpeed its micro-batch and accumulation; its losses are one
    process's, and its checkpoints hold whole weights (ZeRO-3's sums, reduce-scattered in another order, move
    them by up to 1e-4 in four steps at lr 3e-3)."""
    deepspeed = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(stage),
                 "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    two = launch_processes([RECIPE, *_distributed_args(inputs), "--output_dir", tmp_path / "two"], **deepspeed)
    assert (f"4 rows per device x 2 process(es) x 1 accumulation steps = 512 tokens per optimizer step "
            f"(DeepSpeed ZeRO-{stage})") in two.stdout
    one_losses, two_losses = losses(one_process_run), losses(tmp_path / "two")
    assert two_losses.keys() == one_losses.keys() and all(
        math.isclose(two_losses[s], one_losses[s], rel_tol=1e-5) for s in two_losses)
    for folder in ("checkpoint-2", "."):
        expected, saved = _weights(one_process_run / folder), _weights(tmp_path / "two" / folder)
        assert saved.keys() == expected.keys()
        for name, weight in saved.items():
            torch.testing.assert_close(weight, expected[name], atol=1e-4 if stage == 3 else 1e-5, rtol=0)


def test_streamed_text_dataset_trains_and_resumes_exactly(inputs, tmp_path):
    from chatforge.data import EMBEDDED_WIKIPEDIA

    settings = small(inputs, tmp_path / "a", dataset_name=str(EMBEDDED_WIKIPEDIA), max_steps=8, report_to=[])
    pretrain(PretrainConfig(**settings))
    interrupted = {**settings, "output_dir": str(tmp_path / "b")}
    pretrain(PretrainConfig(**interrupted))
    shutil.rmtree(tmp_path / "b" / "checkpoint-8")  # back to the state of a run stopped after step 4
    pretrain(PretrainConfig(**interrupted, resume_from_checkpoint="latest"))
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    assert losses(tmp_path / "a")[8] < losses(tmp_path / "a")[1]


def test_streamed_windows_are_split_between_ranks_and_validation(inputs):
    from transformers import AutoTokenizer

    from chatforge.data import EMBEDDED_WIKIPEDIA
    from chatforge.training.data import StreamingWindows

    tokenizer = AutoTokenizer.from_pretrained(inputs / "tokenizer")
    ranks = [StreamingWindows([str(EMBEDDED_WIKIPEDIA)], tokenizer, 32, 4, holdout_batches=2, rank=r, world_size=2)
             for r in range(2)]
    held_out = {tuple(row) for batch in ranks[0].validation_batches() for row in batch["input_ids"].tolist()}
    seen = [{tuple(row) for k in range(3) for row in stream.batch(k)["input_ids"].tolist()} for stream in ranks]
    assert len(seen[0]) == len(seen[1]) == 12
    assert not seen[0] & seen[1] and not held_out & (seen[0] | seen[1])


def test_muon_option_follows_the_schedule_and_resumes_exactly(inputs, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(inputs / "tokenizer")
    ChatForgeForCausalLM(small_config(tokenizer)).save_pretrained(tmp_path / "init")  # small: Muon works in bf16
    settings = small(inputs, tmp_path / "a", optim="muon", muon_learning_rate=0.02, report_to=[],
                     model_name_or_path=str(tmp_path / "init"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pretrain(PretrainConfig(**settings))
    assert any("Muon orthogonalises" in str(w.message) for w in caught) == cpu_bf16_is_slow()
    interrupted = {**settings, "output_dir": str(tmp_path / "b")}
    pretrain(PretrainConfig(**interrupted))
    shutil.rmtree(tmp_path / "b" / "checkpoint-12")
    pretrain(PretrainConfig(**interrupted, resume_from_checkpoint="latest"))
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    peak = max(record["lr"] for record in records)
    assert peak == pytest.approx(0.02) and records[-1]["lr"] < peak  # Muon's group follows warmup and decay
    assert records[-1]["loss"] < records[0]["loss"]
