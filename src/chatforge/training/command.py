"""``chatforge pretrain --config ...`` (what ``recipes/pretrain.py`` runs under ``accelerate launch``), and the
stage commands of the training stages above it."""

import argparse
import importlib

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
    named_function(args.stage_run)(*parser.parse_args_and_config(_shipped_config(args.arguments)))


def _shipped_config(arguments: list[str]) -> list[str]:
    """``arguments`` with a ``--config`` that names a shipped recipe (``recipes/tiny/sft.yaml``, found without
    the checkout) made its path."""
    arguments = list(arguments)
    for index, argument in enumerate(arguments):
        if argument == "--config" and index + 1 < len(arguments):
            arguments[index + 1] = str(recipe_file(arguments[index + 1]))
        elif argument.startswith("--config="):
            arguments[index] = f"--config={recipe_file(argument.split('=', 1)[1])}"
    return arguments


def add_commands(stages) -> None:
    add_stage_command(stages, "pretrain", "pretrain a causal LM on token shards (recipes/pretrain.py)",
                      "chatforge.training.config:pretrain_parser", "chatforge.training.loop:pretrain")

