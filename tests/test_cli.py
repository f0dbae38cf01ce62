"""The command line: each package's commands, the training stages' settings with their help, and errors."""

import dataclasses
import subprocess
import sys

import pytest

from chatforge.cli import build_parser
from chatforge.training.command import named_function

STAGE_PARSERS = {"pretrain": "chatforge.training.config:pretrain_parser", "sft": "chatforge.posttrain.sft:sft_parser",
                 "reward": "chatforge.posttrain.reward:reward_parser", "ppo": "chatforge.posttrain.rlhf:ppo_parser",
                 "grpo": "chatforge.posttrain.grpo:grpo_parser"}


def _chatforge(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chatforge.cli", *arguments], capture_output=True, text=True)


@pytest.mark.parametrize("stage", sorted(STAGE_PARSERS))
def test_every_setting_of_a_training_stage_says_what_it_does(stage):
    """``chatforge STAGE --help`` shows each field's help; ours and TRL's alike must have one."""
    parser = named_function(STAGE_PARSERS[stage])()
    silent = [f"{cls.__name__}.{f.name}" for cls in parser.dataclass_types for f in dataclasses.fields(cls)
              if f.init and not f.metadata.get("help")]
    assert silent == []


def test_a_training_stage_is_a_command_that_shows_its_settings():
    shown = _chatforge("ppo", "--help")
    assert shown.returncode == 0 and shown.stdout.startswith("usage: chatforge ppo")
    assert "--kl_budget" in shown.stdout and "mean KL to the reference" in shown.stdout
    listed = build_parser().format_help()
    assert all(stage in listed for stage in (*STAGE_PARSERS, "speedrun", "serve", "eval", "export", "chat"))


def test_a_user_error_is_one_line_and_a_bad_option_is_refused(tmp_path):
    missing = _chatforge("speedrun", "--recipe", str(tmp_path / "nowhere.yaml"), "--output", str(tmp_path / "run"))
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 1 and len(lines) == 1, missing.stderr
    assert lines[0].startswith("chatforge speedrun: error: ") and "no such speedrun recipe" in lines[0]
    refused = _chatforge("eval", "model", "--tasks", "bpb", "--no-such-option")
    assert refused.returncode == 2 and "unrecognized arguments: --no-such-option" in refused.stderr
