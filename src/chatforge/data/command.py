"""``chatforge data pipeline|samples|tokenize``."""

import argparse
import json


def add_commands(stages) -> None:
    data = stages.add_parser("data", help="clean web pages into training text")
    commands = data.add_subparsers(dest="command", required=True)
    pipeline = commands.add_parser("pipeline", help="FineWeb-style cleaning of HTML/WARC/JSONL/parquet inputs")
    pipeline.add_argument("--input", required=True, help="a folder, file or glob of .html/.warc(.gz)/.jsonl/.parquet")
    pipeline.add_argument("--output", required=True, help="run folder: data/, removed/, logs/, stats.json, report.md")
    pipeline.add_argument("--preset", default="fineweb", help="fineweb (trafilatura) or fast (resiliparse)")
    pipeline.add_argument("--config", default=None, help="YAML with preset/steps/keep_dropped (overrides --preset)")
    pipeline.add_argument("--workers", type=int, default=1, help="parallel processes (local) or workers (ray)")
    pipeline.add_argument("--tasks", type=int, default=None, help="input shards (default: --workers)")
    pipeline.add_argument("--executor", default="local", choices=["local", "slurm", "ray"])
    pipeline.add_argument("--executor-options", default=None,
                          help="JSON keyword arguments of the executor, e.g. "
                               '\'{"partition": "cpu", "time": "4:00:00"}\'')
    pipeline.add_argument("--limit", type=int, default=-1, help="read at most this many documents per task")
    pipeline.add_argument("--no-keep-dropped", action="store_true", help="do not write removed/<step>/")
    pipeline.set_defaults(func=_pipeline)

    samples = commands.add_parser("samples", help="build the offline sample corpus (prose, web pages)")
    samples.add_argument("--output", required=True)
    samples.add_argument("--skip-debian", action="store_true",
                         help="leave out the real HTML pages fetched as Debian packages")
    samples.set_defaults(func=_samples)

    tokenize = commands.add_parser("tokenize", help="tokenize a dataset into train/val token shards")
    tokenize.add_argument("--tokenizer", required=True, help="tokenizer folder or Hub id")
    tokenize.add_argument("--input", nargs="+", required=True, help="parquet/JSONL/text files, folders, a dataset")
    tokenize.add_argument("--output", required=True)
    tokenize.add_argument("--text-field", default="text")
    tokenize.add_argument("--val-fraction", type=float, default=0.005, help="share of documents held out")
    tokenize.add_argument("--val-tokens", type=int, default=None,
                          help="instead of --val-fraction: hold out the first documents, this many tokens of them")
    tokenize.add_argument("--seed", type=int, default=0)
    tokenize.add_argument("--workers", type=int, default=1, help="tokenizing processes")
    tokenize.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard file")
    tokenize.add_argument("--max-documents", type=int, default=None, help="stop after this many documents")
    tokenize.set_defaults(func=_tokenize)


def _pipeline(args: argparse.Namespace) -> None:
    from .web.config import WebPipelineConfig
    from .web.pipeline import run_web_pipeline

    config = WebPipelineConfig.from_yaml(args.config) if args.config else WebPipelineConfig.from_preset(args.preset)
    if args.no_keep_dropped:
        config.keep_dropped = False
    options = json.loads(args.executor_options) if args.executor_options else None
    stats = run_web_pipeline(args.input, args.output, config, executor=args.executor, workers=args.workers,
                             tasks=args.tasks, executor_options=options, limit=args.limit)
    if not stats:
        print(f"submitted to {args.executor}; logs in {args.output}/logs")
        return
    first, last = stats["funnel"][0], stats["funnel"][-1]
    print(f"data pipeline: {first['documents']:,} documents in, {last['documents']:,} kept "
          f"({last['characters']:,} characters), {stats['input_errors']} unreadable inputs -> "
          f"{stats['output']['folder']}; report in {args.output}/report.md")


def _tokenize(args: argparse.Namespace) -> None:
    from .shards import tokenize_to_shards

    meta = tokenize_to_shards(args.tokenizer, args.input, args.output, text_field=args.text_field,
                              val_fraction=args.val_fraction, seed=args.seed, workers=args.workers,
                              shard_tokens=args.shard_tokens, max_documents=args.max_documents,
                              val_tokens=args.val_tokens)
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    print(f"token shards: train {train['tokens']:,} tokens ({train['documents']:,} documents), val "
          f"{val['tokens']:,} tokens ({val['documents']:,} documents), {meta['dtype']} -> {args.output}")


def _samples(args: argparse.Namespace) -> None:
    from .samples import build_samples

    summary = build_samples(args.output, skip_debian=args.skip_debian)
    parts = ", ".join(f"{part} ({info['items']})" for part, info in summary.items())
    print(f"samples: {parts} -> {args.output} (sources and licenses in {args.output}/SOURCES.md)")
