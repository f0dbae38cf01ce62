"""``chatforge speedrun``: the whole pipeline in one command."""

import argparse
from pathlib import Path


def add_commands(stages) -> None:
    speedrun = stages.add_parser("speedrun", help="the whole pipeline in one command: data to exported models")
    speedrun.add_argument("--recipe", default="tiny", help="a shipped recipe (tiny, smoke, smollm2-135m, gpt2-124m) "
                                                          "or a speedrun YAML")
    speedrun.add_argument("--output", required=True, help="run folder (report.md, report.json, export/)")
    speedrun.add_argument("--from", dest="start", default=None, help="rerun from this stage (earlier ones finished)")
    speedrun.add_argument("--until", default=None, help="stop after this stage")
    speedrun.add_argument("--dry-run", action="store_true",
                          help="run nothing: check the launcher, every stage's recipe and inputs, and "
                               "pretraining's batch shapes (what every speedrun checks before its first stage)")
    speedrun.set_defaults(func=_speedrun)


def _speedrun(args: argparse.Namespace) -> None:
    from . import speedrun
    from .recipe import load_recipe
    from .stages import Run

    report = speedrun(args.recipe, args.output, start=args.start, until=args.until, dry_run=args.dry_run)
    if report is None:
        return
    output = Path(args.output)
    print(f"speedrun: {report['run']['stages_seconds'] / 60:.1f} minutes of stages -> {output}")
    if (output / "report.md").exists():
        print(f"  report card: {output / 'report.md'} (figures in {output / 'report.json'})")
    final = [name for name, (_, kind) in Run(load_recipe(args.recipe), output).models.items() if kind == "chat"][-1]
    if (output / "export" / final).exists():
        print(f"  chat model:  {output / 'export' / final}   (chatforge chat {output / 'export' / final})")
        print(f"  serve it:    chatforge serve {output / 'export' / final} --tools calculator,python"
              "   (OpenAI API and chat page on http://127.0.0.1:8000)")
