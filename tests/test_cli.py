"""The command line: each package's commands, the training stages' settings with their help, and errors."""

import dataclasses
import shlex
import subprocess
import sys

import pytest

from chatforge.cli import build_parser, main
from chatforge.recipes import recipe_file
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


def _error_of(*arguments: str) -> str:
    """The one-line error ``chatforge ARGUMENTS`` stops with (run in this process)."""
    with pytest.raises(SystemExit) as stopped:
        main(list(arguments))
    return str(stopped.value.code)


@pytest.mark.parametrize("arguments, present, command", [
    (["sft", "--config", "recipes/tiny/sft.yaml"], [], "chatforge pretrain --config recipes/tiny/pretrain.yaml"),
    (["pretrain", "--config", "recipes/tiny/pretrain.yaml"], [],
     "chatforge speedrun --recipe tiny --output runs/tiny --until shards"),
    (["sft", "--config", "recipes/tiny/sft-probe.yaml"], ["runs/tiny/pretrain", "runs/tiny/sft-data"],
     "chatforge sft --config recipes/tiny/sft-world.yaml"),
    (["ppo", "--config=recipes/tiny/ppo.yaml"], ["runs/tiny/sft"],
     "chatforge reward --config recipes/tiny/reward.yaml"),
    (["sft", "--config", "recipes/smollm2-135m/sft.yaml"], [],
     "chatforge speedrun --recipe smollm2-135m --output runs/smollm2 --until import"),
    (["sft", "--config", "mine/sft.yaml"], [], "chatforge pretrain --config mine/pretrain.yaml"),
])
def test_a_missing_input_names_the_command_that_makes_it(tmp_path, monkeypatch, arguments, present, command):
    """A stage recipe builds nothing itself: the recipe beside it that writes the missing folder, or the speedrun
    stage that does, is named (a user's own recipe folder as well as a shipped one)."""
    monkeypatch.chdir(tmp_path)
    for folder in present:
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "mine").mkdir()
    for name in ("sft.yaml", "pretrain.yaml"):
        (tmp_path / "mine" / name).write_text(recipe_file(f"tiny/{name}").read_text().replace("runs/tiny", "runs/mine"))
    message = _error_of(*arguments)
    assert "no model there" in message or "no token shards there" in message
    assert message.endswith(f"make it with `{command}`"), message


def test_the_commands_named_for_missing_data_make_what_the_stage_needs(tmp_path, monkeypatch, saved_model_dir):
    """The problems, preference data and SFT data a stage lacks, made by the command its error names, pass the
    stage's own check of its inputs."""
    from chatforge.posttrain import grpo, rlhf, sft

    monkeypatch.chdir(tmp_path)
    model = str(saved_model_dir)
    stages = {"grpo": (grpo.grpo_parser, grpo.check_inputs, ["--model_name_or_path", model]),
              "ppo": (rlhf.ppo_parser, rlhf.check_inputs,
                      ["--model_name_or_path", model, "--reward_model_path", model]),
              "sft": (sft.sft_parser, sft.check_inputs, ["--model_name_or_path", model])}
    for stage, (parser, check_inputs, overrides) in stages.items():
        arguments = ["--config", str(recipe_file(f"tiny/{stage}.yaml")), *overrides]
        command = _error_of(stage, *arguments).split("make it with `")[1].rstrip("`")
        assert command.startswith("chatforge ") and command.split()[1] != stage
        main(shlex.split(command)[1:])
        script, _, model_args, *_ = parser().parse_args_and_config(arguments)
        check_inputs(script, model_args)
