"""``chatforge tools index``: the search tool's BM25 index."""

import argparse


def add_commands(stages) -> None:
    tools = stages.add_parser("tools", help="tool resources")
    index = tools.add_subparsers(dest="command", required=True).add_parser(
        "index", help="build the BM25 index of the search tool")
    index.add_argument("--input", nargs="+", required=True, help="text/JSONL/parquet files, folders, a dataset")
    index.add_argument("--output", required=True)
    index.add_argument("--text-field", default="text")
    index.set_defaults(func=_index)


def _index(args: argparse.Namespace) -> None:
    from ..data import iter_documents
    from .search import SearchIndex

    index = SearchIndex.build(iter_documents(args.input, text_field=args.text_field))
    index.save(args.output)
    print(f"search index: {len(index.documents):,} documents -> {args.output}")
