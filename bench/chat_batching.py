"""Many conversations through chatforge's continuous batcher (``chat_many``, as the SFT evaluations, the eval
stage and the preference data use it): the batcher as it is, against the same batcher without dropping the cache
columns of rows that left (each step then attends over, and copies, every column since the batch began).

Both answer the same word problems greedily, without tools, in rounds that alternate the order; prints replies/s
of each, the median per-round ratio (above 1.0 means dropping the columns is faster) and whether the replies agree.

    python bench/chat_batching.py --model runs/smollm2/imported --conversations 128
"""

import argparse
import random
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatforge.inference import batching
from chatforge.inference.engine import Engine, SamplingParams
from chatforge.tasks.word_problems import word_problem


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
    trim = batching._Batch.trim

    def run(name: str) -> tuple[float, list[str]]:
        batching._Batch.trim = trim if name == "trimmed" else lambda self: None
        start = time.perf_counter()
        replies = batching.chat_many(engine, conversations, params, use_tools=False, max_batch=args.max_batch)
        return len(conversations) / (time.perf_counter() - start), [events[-1].text for events in replies]

    rates, ratios, agree = {"trimmed": [], "untrimmed": []}, [], []
    for round_index in range(args.rounds):
        order = ["trimmed", "untrimmed"][::1 if round_index % 2 == 0 else -1]
        measured = {name: run(name) for name in order}
        for name, (rate, _) in measured.items():
            rates[name].append(rate)
        ratios.append(measured["trimmed"][0] / measured["untrimmed"][0])
        agree.append(sum(a == b for a, b in zip(measured["trimmed"][1], measured["untrimmed"][1])))
    batching._Batch.trim = trim
    print(f"{args.conversations} conversations, {args.max_batch} rows, {torch.get_num_threads()} threads: trimmed "
          f"{statistics.median(rates['trimmed']):.2f} replies/s, untrimmed {statistics.median(rates['untrimmed']):.2f}"
          f" -> ratio {statistics.median(ratios):.2f}x; replies agreeing {min(agree)}/{args.conversations}")


if __name__ == "__main__":
    main()
