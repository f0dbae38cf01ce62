"""``chatforge speedrun``: every stage in order, each skipped when it has finished and resumed when it was
interrupted; ``report.json`` gathers every stage's figures and wall time as they come."""

import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from ..errors import InvalidValue
from ..eval.result_cache import cached_in
from ..io import atomic_write_text
from .check import check_stages
from .recipe import load_recipe
from .stages import Run, Stage, StageError

REPORT_FILE = "report.json"
#: The run's folder of evaluation figures that a later stage reuses (:mod:`~chatforge.eval.result_cache`).
EVAL_CACHE_DIR = "eval-cache"


def hardware() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _marker(run: Run, stage: Stage) -> Path:
    return run.state_dir / f"{stage.name}.json"


def _started(run: Run, stage: Stage) -> Path:
    return run.state_dir / f"{stage.name}.started"


def _reset(run: Run, stage: Stage) -> None:
    """Forget a finished or started stage and remove what it wrote."""
    for path in stage.outputs(run):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for path in (_marker(run, stage), _started(run, stage)):
        path.unlink(missing_ok=True)


def _check_ours(run: Run, stage: Stage) -> None:
    """Refuse to resume into outputs that another run (or a stage recipe run by hand) wrote."""
    if _started(run, stage).exists():
        return
    foreign = [str(path) for path in stage.outputs(run) if path.exists()]
    if foreign:
        raise StageError(f"stage {stage.name}: {', '.join(foreign)} already exists but this speedrun did not "
                         f"write it; remove it, or give another --output")


def write_report_json(run: Run) -> dict:
    """``report.json``: stage -> metric -> value for every finished stage, and ``run`` (recipe, hardware, time)."""
    report: dict = {}
    for stage in run.stages:
        if _marker(run, stage).exists():
            record = json.loads(_marker(run, stage).read_text())
            report[stage.name] = {**record["figures"], "seconds": record["seconds"]}
    report["run"] = {"recipe": str(run.recipe.path), "output": str(run.output), "hardware": hardware(),
                     "stages_seconds": round(sum(v["seconds"] for k, v in report.items() if k != "run"), 1)}
    atomic_write_text(run.output / REPORT_FILE, json.dumps(report, indent=2, ensure_ascii=False))
    return report


def _run_stage(run: Run, stage: Stage, position: str) -> None:
    """Run ``stage`` unless it has finished, record its figures and wall time, and rewrite ``report.json``."""
    if _marker(run, stage).exists():
        print(f"{position} {stage.name}: finished earlier, skipped", flush=True)
        return
    _check_ours(run, stage)
    resuming = _started(run, stage).exists()
    print(f"{position} {stage.name}: {stage.what}{' (resuming)' if resuming else ''}", flush=True)
    _started(run, stage).touch()
    began = time.perf_counter()
    figures = stage.run(run)
    seconds = round(time.perf_counter() - began, 1)
    record = {"stage": stage.name, "seconds": seconds, "figures": figures}
    atomic_write_text(_marker(run, stage), json.dumps(record, indent=2, ensure_ascii=False))
    print(f"{position} {stage.name}: done in {seconds:.0f} s", flush=True)
    write_report_json(run)


def speedrun(recipe: str, output: str | Path, start: str | None = None, until: str | None = None,
             dry_run: bool = False) -> dict | None:
    """Run the stages of ``recipe`` from ``start`` (rerun even when finished; earlier stages must have
    finished) through ``until``, into ``output``, once :func:`~chatforge.speedrun.check.check_stages` finds
    nothing wrong with them. Returns ``report.json``'s content; with ``dry_run``, only checks (and prints what it
    found) and returns None."""
    run = Run(load_recipe(recipe), Path(output))
    stages = run.stages
    names = [stage.name for stage in stages]
    for name, value in (("--from", start), ("--until", until)):
        if value is not None and value not in names:
            raise InvalidValue(f"{name} {value}: no such stage in recipe {run.recipe.name}; its stages are "
                               f"{', '.join(names)}")
    first = names.index(start) if start else 0
    last = names.index(until) if until else len(stages) - 1
    if first > last:
        raise InvalidValue(f"--from {start} comes after --until {until}")
    for stage in stages[:first]:
        if not _marker(run, stage).exists():
            raise StageError(f"--from {start}: the earlier stage {stage.name} has not finished in {output}")
    lines, problems = check_stages(run, stages[first:last + 1],
                                   [path for stage in stages[:first] for path in stage.outputs(run)])
    if dry_run:
        print("\n".join(f"[{index}/{len(stages)}] {line}" for index, line in enumerate(lines, start=first + 1)))
        print(f"dry run: {len(problems)} problem(s)" + "".join(f"\n  {problem}" for problem in problems))
        if problems:
            raise StageError(f"the dry run found {len(problems)} problem(s) (listed above)")
        return None
    if problems:
        raise StageError("the speedrun would fail; nothing was run:" + "".join(f"\n  {p}" for p in problems))
    run.state_dir.mkdir(parents=True, exist_ok=True)
    if start:
        for stage in stages[first:last + 1]:
            _reset(run, stage)
    with cached_in(run.output / EVAL_CACHE_DIR):
        for index, stage in enumerate(stages[first:last + 1], start=first + 1):
            _run_stage(run, stage, f"[{index}/{len(stages)}]")
    return write_report_json(run)
