"""``chatforge export`` and ``chatforge push``."""

import argparse


def add_commands(stages) -> None:
    export = stages.add_parser("export", help="a Hub-ready copy of a model folder with its model card")
    export.add_argument("model", help="trained model folder")
    export.add_argument("--output", required=True)
    export.add_argument("--kind", required=True, choices=["base", "chat", "reward"])
    export.add_argument("--run", default=None, help="speedrun folder whose figures fill the model card")
    export.add_argument("--name", default=None, help="the model's name in the run's eval.json (base, sft, ...)")
    export.add_argument("--stage", default=None, help="the speedrun stage that trained it")
    export.add_argument("--repo-id", default=None, help="Hub repo id shown in the card's code")
    export.set_defaults(func=_export)

    push = stages.add_parser("push", help="upload an exported folder to the Hugging Face Hub")
    push.add_argument("folder")
    push.add_argument("--repo-id", required=True, help="ORG/NAME")
    push.add_argument("--private", action="store_true")
    push.set_defaults(func=_push)


def _export(args: argparse.Namespace) -> None:
    from .export import export_model

    folder = export_model(args.model, args.output, args.kind, args.run, model_name=args.name, stage=args.stage,
                          repo_id=args.repo_id)
    print(f"exported {args.model} -> {folder} (model card: {folder / 'README.md'})")


def _push(args: argparse.Namespace) -> None:
    from .export import push

    url = push(args.folder, args.repo_id, private=args.private)
    print(f"pushed {args.folder} -> {url}")
