"""chatforge installed from its wheel, used from a folder that is not the checkout: the shipped recipes, the
embedded data and the stage commands are all found in the package."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this checkout, installed (without its dependencies, which this environment has)
    into a folder of its own."""
    scratch = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(scratch / "dist"), str(ROOT)], check=True, capture_output=True)
    [wheel] = (scratch / "dist").glob("chatforge-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(scratch / "site"),
                    str(wheel)], check=True, capture_output=True)
    return scratch / "site"


def _chatforge(site: Path, cwd: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chatforge.cli", *arguments], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"})


def test_the_wheel_runs_the_shipped_recipes_from_any_folder(installed, tmp_path):
    where = subprocess.run([sys.executable, "-c", "import chatforge; print(chatforge.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(installed)})
    assert where.stdout.strip().startswith(str(installed))  # the wheel, not the checkout
    missing = _chatforge(installed, tmp_path, "pretrain", "--config", "recipes/tiny/pretrain.yaml")
    assert missing.stderr.strip().endswith(
        "make it with `chatforge speedrun --recipe tiny --output runs/tiny --until shards`"), missing.stderr
    speedrun = _chatforge(installed, tmp_path, "speedrun", "--recipe", "smoke", "--output", "run", "--until",
                          "shards")
    assert speedrun.returncode == 0, speedrun.stderr[-3000:]
    assert (tmp_path / "run/samples/SOURCES.md").exists()
    short = {"output_dir": "pretrain", "dataset_dir": "run/shards", "tokenizer_name_or_path": "run/tokenizer",
             "max_steps": 2, "warmup_steps": 0, "eval_steps": 2, "eval_batches": 1,
             "save_steps": 2, "sample_steps": 2, "max_seq_length": 32, "per_device_train_batch_size": 2,
             "report_to": "none"}
    pretrain = _chatforge(installed, tmp_path, "pretrain", "--config", "recipes/tiny/pretrain.yaml",
                          *(part for name, value in short.items() for part in (f"--{name}", str(value))))
    assert pretrain.returncode == 0, pretrain.stderr[-3000:]
    assert (tmp_path / "pretrain/model.safetensors").exists() and not (tmp_path / "recipes").exists()


def test_the_wheel_finds_the_shipped_accelerate_configs(installed, tmp_path):
    dry_run = _chatforge(installed, tmp_path, "speedrun", "--recipe", "gpt2-124m", "--output", "run", "--dry-run")
    assert dry_run.returncode == 0, dry_run.stderr[-3000:]
    assert "over 8 process(es)" in dry_run.stdout  # accelerate_configs/multi_gpu.yaml's num_processes
    assert not (tmp_path / "run").exists() and not (tmp_path / "accelerate_configs").exists()
