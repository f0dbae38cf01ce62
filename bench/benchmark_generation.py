"""Greedy benchmark generation through lm-evaluation-harness: slot decoding (each row takes the next request as
soon as its reply ends; ``SharedPrefixHFLM``'s default) against batches that step until their longest reply
ends (the same harness model with slot decoding off: ``HFLM``'s batching, the shared prefix kept).

Both score the same items of a generation benchmark, one after the other in this process; prints the seconds of
each, the ratio (batches / slots; above 1.0 means slot decoding is faster) and how many replies are identical.

    python bench/benchmark_generation.py --model runs/smollm2/imported --tasks gsm8k_cot_100 humaneval
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatforge.eval.harness import run_benchmarks
from chatforge.eval.shared_prefix import SharedPrefixHFLM


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model folder (e.g. the smollm2 speedrun's imported model)")
    parser.add_argument("--tasks", nargs="+", default=["gsm8k_cot_100"], help="generation benchmarks")
    parser.add_argument("--limit", type=int, default=100, help="items per task")
    parser.add_argument("--batch-size", type=int, default=16, help="rows decoded together, in both")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    return parser.parse_args()


def timed_run(model, tokenizer, task: str, args, samples: Path) -> tuple[float, list[str], float]:
    start = time.perf_counter()
    figures = run_benchmarks(model, tokenizer, [task], limit=args.limit, batch_size=args.batch_size,
                             samples_dir=samples)
    seconds = time.perf_counter() - start
    replies = [json.loads(line)["response"] for line in (samples / f"{task}.jsonl").read_text().splitlines()]
    return seconds, replies, figures[task]["score"]


def main() -> None:
    args = parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    results = {"model": args.model, "threads": torch.get_num_threads(), "batch_size": args.batch_size, "tasks": {}}
    with tempfile.TemporaryDirectory() as folder:
        for task in args.tasks:
            runs = {}
            for mode in ("slots", "batches"):
                SharedPrefixHFLM.decode_in_slots = mode == "slots"
                runs[mode] = timed_run(model, tokenizer, task, args, Path(folder) / mode)
            (slots, slot_replies, score), (batches, batch_replies, batch_score) = runs["slots"], runs["batches"]
            same = sum(a == b for a, b in zip(slot_replies, batch_replies))
            results["tasks"][task] = {"items": len(slot_replies), "seconds_slots": round(slots, 1),
                                      "seconds_batches": round(batches, 1), "ratio": round(batches / slots, 3),
                                      "identical_replies": same, "score": [score, batch_score]}
            print(f"{task}: {len(slot_replies)} items, slots {slots:.1f} s, batches {batches:.1f} s -> ratio "
                  f"{batches / slots:.2f}x; identical replies {same}/{len(slot_replies)}", flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
