"""``chatforge eval MODEL --tasks ...``."""

import argparse
import json


def add_commands(stages) -> None:
    evaluate = stages.add_parser("eval", help="evaluate a model: bits per byte, chat format, arithmetic, ...")
    evaluate.add_argument("model", help="model folder or Hub id")
    evaluate.add_argument("--tasks", required=True,
                          help="comma-separated: bpb, format, arithmetic, gsm_symbolic, knowledge, word_problems, "
                               "world_search, python_problems, regurgitation, induction, recall; of a reward model: "
                               "pairs, rankings; standard benchmarks through lm-evaluation-harness, offline: "
                               "hellaswag_100, truthfulqa_mc1_100, gsm8k_cot_100, humaneval; from the Hub: hellaswag, "
                               "arc_easy, arc_challenge, gsm8k, truthfulqa_mc1")
    evaluate.add_argument("--run", default=None, help="take the held-out data of this speedrun folder")
    evaluate.add_argument("--val-text", dest="val_text", default=None, help="held-out documents (bpb)")
    evaluate.add_argument("--prompts", default=None, help="JSONL conversations (format)")
    evaluate.add_argument("--problems", default=None, help="JSONL {prompt, answer} (arithmetic)")
    evaluate.add_argument("--gsm-symbolic", dest="gsm_symbolic", default=None,
                          help="JSONL {prompt, answer} (gsm_symbolic)")
    evaluate.add_argument("--questions", default=None, help="JSONL {question, answer, group} (knowledge)")
    evaluate.add_argument("--corpus", default=None, help="training documents (regurgitation)")
    evaluate.add_argument("--pairs", default=None, help="JSONL {chosen, rejected} (pairs)")
    evaluate.add_argument("--rankings", default=None, help="JSONL {prompt, completions, ranking} (rankings)")
    for task in ("word_problems", "world_search", "python_problems"):
        evaluate.add_argument(f"--{task.replace('_', '-')}", dest=task, default=None,
                              help=f"JSONL {{question, answer}} ({task})")
    evaluate.add_argument("--search-index", dest="search_index", default=None,
                          help="the search tool's index (world_search)")
    evaluate.add_argument("--cloze", default=None, help="JSONL {prompt, answer, group} (recall)")
    evaluate.add_argument("--limit", type=int, default=100, help="records per task")
    evaluate.add_argument("--k", type=int, default=8, help="samples per problem for pass@k")
    evaluate.add_argument("--benchmark-tokens", dest="benchmark_tokens", type=int, default=256,
                          help="tokens generated at most per benchmark item (gsm8k*, humaneval)")
    evaluate.add_argument("--samples", default=None,
                          help="write each benchmark item's prompt, reply and score to DIR/<benchmark>.jsonl")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--output", default=None, help="also write the figures to this JSON file")
    evaluate.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> None:
    from ..io import atomic_write_text
    from .suite import EvalConfig, EvalData, evaluate_model

    data = EvalData.from_run(args.run) if args.run else EvalData()
    for name in ("val_text", "prompts", "problems", "gsm_symbolic", "questions", "corpus", "pairs", "rankings", "cloze",
                 "word_problems", "world_search", "python_problems", "search_index"):
        if getattr(args, name) is not None:
            setattr(data, name, getattr(args, name))
    results = evaluate_model(args.model, args.tasks.split(","), data, EvalConfig(
        limit=args.limit, k=args.k, seed=args.seed, benchmark_tokens=args.benchmark_tokens), samples_dir=args.samples)
    text = json.dumps(results, indent=2, ensure_ascii=False)
    if args.output:
        atomic_write_text(args.output, text)
    print(text)
