"""``chatforge <stage> ...``: the command line of every pipeline stage.

Each package contributes its own commands (``<package>/command.py``: ``add_commands(subparsers)``); their
handlers import what they run only when they run, so that ``--help`` is quick. An error the user can put right
(:class:`~chatforge.errors.UserError`, a missing file) ends the command with one line; anything else is a bug
and keeps its traceback.
"""

import argparse
import importlib
import sys

from .errors import MissingInput, UserError

#: The packages whose commands ``chatforge`` offers, in the order of the pipeline.
COMMAND_PACKAGES = ("data", "tokenization", "modeling", "training", "tasks", "posttrain", "inference", "tools",
                    "eval", "hub", "serving", "speedrun")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatforge", description=__doc__.split("\n\n")[0])
    stages = parser.add_subparsers(dest="stage", required=True)
    for package in COMMAND_PACKAGES:
        importlib.import_module(f"chatforge.{package}.command").add_commands(stages)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "passes_arguments", False):
        args.arguments = rest  # a training stage: its own parser reads them
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        args.func(args)
    except MissingInput as error:
        config = getattr(args, "config_file", None)
        if error.make is None and config is not None:
            from .speedrun.makers import how_to_make

            error.make = how_to_make(error.path, config)
        sys.exit(f"chatforge {args.stage}: error: {error}")
    except (UserError, FileNotFoundError) as error:
        sys.exit(f"chatforge {args.stage}: error: {error}")


if __name__ == "__main__":
    main()
