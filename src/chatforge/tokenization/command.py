"""``chatforge tokenizer train|show``."""

import argparse
import sys


def add_commands(stages) -> None:
    tokenizer = stages.add_parser("tokenizer", help="train or inspect a byte-level BPE tokenizer")
    commands = tokenizer.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a tokenizer on text files, JSONL/parquet or a dataset")
    train.add_argument("--input", nargs="+", required=True, help="files, folders, globs or a dataset name")
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--output", required=True, help="folder to save the tokenizer in")
    train.add_argument("--text-field", default="text", help="field of JSONL/parquet/dataset records (default: text)")
    train.add_argument("--max-chars", type=int, default=None, help="train on at most this many characters")
    train.add_argument("--min-frequency", type=int, default=2, help="least count of a pair to merge")
    train.add_argument("--max-number-digits", type=int, default=3,
                       help="most digits one token may hold (default 3, as GPT-4; 1 splits numbers into digits)")
    train.set_defaults(func=_train)
    show = commands.add_parser("show", help="show how text splits into tokens")
    show.add_argument("tokenizer", help="tokenizer folder or Hub id")
    show.add_argument("text")
    show.add_argument("--no-color", action="store_true", help="bracket tokens instead of colouring them")
    show.set_defaults(func=_show)


def _train(args: argparse.Namespace) -> None:
    from .training import train_tokenizer_from_sources

    _, summary = train_tokenizer_from_sources(args.input, args.output, args.vocab_size, text_field=args.text_field,
                                              max_chars=args.max_chars, min_frequency=args.min_frequency,
                                              max_number_digits=args.max_number_digits)
    print(f"tokenizer: {summary['vocab_size']} tokens, {summary['bytes_per_token']} bytes/token on the "
          f"training text, {summary['seconds']} s -> {summary['output_dir']}")


def _show(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from .visualize import render_tokens

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    print(render_tokens(tokenizer, args.text, color=not args.no_color and sys.stdout.isatty()))
