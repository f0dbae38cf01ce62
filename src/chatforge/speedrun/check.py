"""A speedrun checked before it runs (and by ``chatforge speedrun --dry-run``, which runs nothing): its launcher,
every training stage's recipe as its parser reads it, every input there or made by an earlier stage, and the
batches pretraining takes from the data the run makes."""

import copy
import dataclasses
from pathlib import Path

import torch
import yaml

from ..errors import UserError
from ..eval.harness import check_benchmarks
from ..io import planned_outputs
from ..posttrain.command import STAGE_COMMANDS
from ..training.command import StageCommand
from ..training.config import PretrainConfig, accumulation_steps
from ..training.data import split_batches
from ..training.loop import shard_batches
from .stages import COMMANDS, Run, Stage


def launcher_processes(launcher: list[str]) -> int:
    """The processes the launcher starts: its ``--num_processes``, else its ``--config_file``'s
    ``num_processes``, else 1. Raises UserError where that file is missing."""
    options = dict(zip(launcher, launcher[1:]))
    if "--num_processes" in options:
        return int(options["--num_processes"])
    if "--config_file" in options:
        path = Path(options["--config_file"])
        if not path.is_file():
            raise UserError(f"launcher: --config_file {path}: no such file, in the current folder or among the "
                            "shipped ones (accelerate_configs/)")
        return int((yaml.safe_load(path.read_text()) or {}).get("num_processes", 1))
    return 1


def parsed_stage(run: Run, stage: str, command: StageCommand) -> tuple:
    """The stage's recipe as its command's parser reads it. On a machine without an accelerator a TRL stage is
    read as a CPU run of the same recipe (``use_cpu``): TRL refuses bf16 settings there."""
    config = copy.deepcopy(run.config(stage))  # parsing changes nested values in place (datasets)
    parser = command.make_parser()
    takes_use_cpu = any(f.name == "use_cpu" for cls in parser.dataclass_types for f in dataclasses.fields(cls))
    if takes_use_cpu and not torch.accelerator.is_available():
        config = {**config, "use_cpu": True}
    try:
        return parser.parse_dict(config)
    except ValueError as error:  # unknown fields, or a value a config refuses
        raise UserError(f"{run.state_dir / 'configs' / (stage + '.yaml')} (from {run.recipe.training[stage].recipe}):"
                        f" {error}") from error


def pretraining_batches(run: Run, config: PretrainConfig, processes: int) -> str:
    """What pretraining's batches come to on ``processes`` processes, from the shards where they exist, else
    from the validation text the run holds out of its streamed sources; raises where they cannot be filled."""
    accumulation = accumulation_steps(config, processes)
    rows = config.per_device_train_batch_size * processes * accumulation
    summary = f"{rows} rows of {config.max_seq_length} tokens per step over {processes} process(es)"
    settings = run.recipe.data
    if (batches := shard_batches(config, processes)) is not None:
        at_least = ""
    elif settings.pretraining_sources and settings.pretraining_val_tokens:
        batches = split_batches(config, processes, {"val": [settings.pretraining_val_tokens]},
                                f"data.pretraining_val_tokens={settings.pretraining_val_tokens}")
        at_least = " at least"
    else:
        return f"{summary}; validation size known once the shards are made"
    return f"{summary}; validation: {batches['val']}{at_least} of eval_batches={config.eval_batches} batches"


def _check_stage(run: Run, stage: Stage, planned: list[Path], processes: int) -> str:
    """What there is to say of ``stage`` once checked (empty: nothing); a problem raises :class:`UserError`."""
    if stage.name in COMMANDS:
        command = STAGE_COMMANDS[COMMANDS[stage.name]]
        parsed = parsed_stage(run, stage.name, command)
        with planned_outputs(planned):
            command.check_inputs(parsed)
        return pretraining_batches(run, parsed[0], processes) if stage.name == "pretrain" else ""
    if stage.name == "eval" and run.recipe.eval.benchmarks:
        check_benchmarks(run.recipe.eval.benchmarks)
        return f"benchmarks {', '.join(run.recipe.eval.benchmarks)}"
    return ""


def check_stages(run: Run, stages: list[Stage], planned: list[Path]) -> tuple[list[str], list[str]]:
    """Check ``stages`` in order, the outputs of ``planned`` (earlier stages) and of each checked stage counting
    as made. Returns a line per stage, and the problems (none: the run can start)."""
    lines, problems = [], []
    try:
        processes = launcher_processes(run.recipe.launcher)
    except UserError as error:
        problems.append(str(error))
        processes = 1
    planned = list(planned)
    for stage in stages:
        try:
            note = _check_stage(run, stage, planned, processes)
        except UserError as error:
            problems.append(f"{stage.name}: {error}")
            note = f"PROBLEM: {error}"
        lines.append(f"{stage.name}: {note or 'ok'}")
        planned.extend(stage.outputs(run))
    return lines, problems
