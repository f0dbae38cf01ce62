"""Many conversations through chatforge's continuous batcher (``chat_many``, as the SFT evaluations, the eval
stage and the preference data use it), as it is against two references: the same batcher with transformers' own
cache layers (each step copies the whole cache with ``torch.cat`` instead of writing its column in place), and
without dropping the cache columns of rows that left (each step then attends over, and copies, every column since
the batch began).

Each answers the same word problems greedily, without tools, in rounds that alternate the order; prints replies/s
of each, the median per-round ratio of the batcher to each reference (above 1.0: the batcher is faster) and how
many replies agree with the batcher's.

    python bench/chat_batching.py --model runs/smollm2/imported --conversations 128
"""

import argparse
import random
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

sys.path.insert(0, str(Path(__file__).parent))
from side_by_side import report  # noqa: E402

from chatforge.inference import batching  # noqa: E402
from chatforge.inference.engine import Engine, SamplingParams  # noqa: E402
from chatforge.tasks.word_problems import word_problem  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a chat model folder")
    parser.add_argument("--conversations", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    engine = Engine(model, AutoTokenizer.from_pretrained(args.model))
    rng = random.Random(0)
    conversations = [[{"role": "user", "content": word_problem(rng, multi_digit=True).question}]
                     for _ in range(args.conversations)]
    params = SamplingParams(temperature=0, max_new_tokens=args.max_new_tokens)
    trim, cache = batching._Batch.trim, batching.growing_cache
    variants = {"batcher": (trim, cache), "concatenating": (trim, lambda config: DynamicCache(config=config)),
                "untrimmed": (lambda self: None, cache)}

    def run(name: str) -> tuple[float, list[str]]:
        batching._Batch.trim, batching.growing_cache = variants[name]
        start = time.perf_counter()
        replies = batching.chat_many(engine, conversations, params, use_tools=False, max_batch=args.max_batch)
        return len(conversations) / (time.perf_counter() - start), [events[-1].text for events in replies]

    rates: dict[str, list[float]] = {name: [] for name in variants}
    replies: dict[str, list[str]] = {}
    for round_index in range(args.rounds):
        for name in list(variants) if round_index % 2 == 0 else list(reversed(variants)):
            rate, replies[name] = run(name)
            rates[name].append(rate)
    batching._Batch.trim, batching.growing_cache = trim, cache
    print(f"{args.conversations} conversations, {args.max_batch} rows, {torch.get_num_threads()} threads")
    report(rates, "replies/s", "batcher", "concatenating", "untrimmed")
    for name in ("concatenating", "untrimmed"):
        agree = sum(a == b for a, b in zip(replies["batcher"], replies[name]))
        print(f"replies agreeing, batcher and {name}: {agree}/{args.conversations}")


if __name__ == "__main__":
    main()
