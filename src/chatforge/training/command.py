"""``chatforge pretrain --config ...`` (what ``recipes/pretrain.py`` runs under ``accelerate launch``), and the
stage commands of the training stages above it."""

import argparse
import importlib
from pathlib import Path

from ..recipes import recipe_file


def add_stage_command(stages, name: str, help: str, parser: str, run: str) -> None:
    """``chatforge NAME [--config YAML] [--field value ...]``: the arguments go to the stage's ``TrlParser``
    (made by ``parser``, a ``module:function`` path, so ``--help`` lists every config field with its help) and
    what it parses to ``run``."""
    stage = stages.add_parser(name, help=help, add_help=False)
    stage.set_defaults(func=_run_stage, stage_parser=parser, stage_run=run, passes_arguments=True)


def named_function(path: str):
    """The function a ``module:function`` path names."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _run_stage(args: argparse.Namespace) -> None:
    parser = named_function(args.stage_parser)()
    parser.prog = f"chatforge {args.stage}"
    arguments, args.config_file = _shipped_config(args.arguments)
    named_function(args.stage_run)(*parser.parse_args_and_config(arguments))


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


def add_commands(stages) -> None:
    add_stage_command(stages, "pretrain", "pretrain a causal LM on token shards (recipes/pretrain.py)",
                      "chatforge.training.config:pretrain_parser", "chatforge.training.loop:pretrain")

