"""What makes a missing input of a stage recipe: a recipe beside it that writes that folder, or else the stage of
the speedrun beside it that does (``chatforge speedrun ... --until STAGE`` runs the pipeline up to it)."""

from pathlib import Path

import yaml

from ..recipes import SHIPPED
from .recipe import load_recipe
from .stages import COMMANDS, Run


def _shipped(path: Path) -> bool:
    return path.resolve().is_relative_to(SHIPPED.resolve())


def _shown(path: Path) -> str:
    """A shipped recipe as ``recipes/<name>/<file>`` (found from any folder), any other as given."""
    return f"recipes/{path.resolve().relative_to(SHIPPED.resolve())}" if _shipped(path) else str(path)


def _writes(recipe: Path, target: Path) -> bool:
    config = yaml.safe_load(recipe.read_text())
    return isinstance(config, dict) and Path(str(config.get("output_dir", ""))).resolve() == target


def how_to_make(path: str, config: Path) -> str | None:
    """The command that makes ``path``, an input of the stage recipe ``config``: ``chatforge sft --config
    recipes/tiny/sft.yaml`` for the stage recipe beside it whose ``output_dir`` it is; else ``chatforge speedrun
    --recipe tiny --output runs/tiny --until shards`` for the stage of the speedrun beside it that writes it."""
    target, folder = Path(path).resolve(), config.parent
    for recipe in sorted(folder.glob("*.yaml")):
        command = recipe.stem.split("-")[0]
        if recipe.resolve() != config.resolve() and command in COMMANDS.values() and _writes(recipe, target):
            return f"chatforge {command} --config {_shown(recipe)}"
    if not (folder / "speedrun.yaml").is_file():
        return None
    speedrun = load_recipe(str(folder / "speedrun.yaml"))
    run = Run(speedrun, Path(speedrun.run_root))
    for stage in run.stages:
        if target in (output.resolve() for output in stage.outputs(run)):
            name = speedrun.name if _shipped(folder) else str(speedrun.path)
            return f"chatforge speedrun --recipe {name} --output {speedrun.run_root} --until {stage.name}"
    return None
