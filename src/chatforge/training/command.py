"""``chatforge pretrain --config ...`` (what ``recipes/pretrain.py`` runs under ``accelerate launch``), and the
stage commands of the training stages above it."""

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path

from ..recipes import recipe_file


@dataclass(frozen=True)
class StageCommand:
    """A training stage's command, ``chatforge NAME [--config YAML] [--field value ...]``: its parts are
    ``module:function`` paths, imported when used (so that ``chatforge --help`` stays quick)."""

    name: str
    help: str
    parser: str  # makes the stage's TrlParser: ``--help`` lists every config field with its help
    run: str  # runs the stage on what the parser returns
    check: str  # stops before any work where an input is missing, given ...
    check_arguments: tuple[int, ...] = (0,)  # ... these of what the parser returns (by position)

    def make_parser(self):
        parser = named_function(self.parser)()
        parser.prog = f"chatforge {self.name}"
        return parser

    def check_inputs(self, parsed: tuple) -> None:
        named_function(self.check)(*(parsed[index] for index in self.check_arguments))


def add_stage_command(stages, command: StageCommand) -> None:
    stage = stages.add_parser(command.name, help=command.help, add_help=False)
    stage.set_defaults(func=_run_stage, stage_command=command, passes_arguments=True)


def named_function(path: str):
    """The function a ``module:function`` path names."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _run_stage(args: argparse.Namespace) -> None:
    command = args.stage_command
    arguments, args.config_file = _shipped_config(args.arguments)
    named_function(command.run)(*command.make_parser().parse_args_and_config(arguments))


def _shipped_config(arguments: list[str]) -> tuple[list[str], Path | None]:
    """``arguments`` with a ``--config`` that names a shipped recipe (``recipes/tiny/sft.yaml``, found without
    the checkout) made its path; and that path (None without ``--config``)."""
    arguments = list(arguments)
    for index, argument in enumerate(arguments):
        name, equals, value = argument.partition("=")
        if name != "--config" or not (equals or index + 1 < len(arguments)):
            continue
        path = recipe_file(value if equals else arguments[index + 1])
        arguments[index:index + (1 if equals else 2)] = ["--config", str(path)]  # TRL reads this form only
        return arguments, path
    return arguments, None


PRETRAIN = StageCommand("pretrain", "pretrain a causal LM on token shards (recipes/pretrain.py)",
                        "chatforge.training.config:pretrain_parser", "chatforge.training.loop:pretrain",
                        "chatforge.training.loop:check_inputs")


def add_commands(stages) -> None:
    add_stage_command(stages, PRETRAIN)
