"""Held-out problems scored as the eval and GRPO stages score them (``problem_accuracy``: a greedy reply and ``k``
samples of each problem through the continuous batcher, each row taking the next reply as soon as its own has
ended) against the reference of padded batches (``Engine.complete`` on 16 problems at a time, greedy and then
``k`` samples each, every batch stepping until its longest reply is done).

Prints problems a minute of each, the median per-round ratio (above 1.0: the batcher is faster) and both variants'
figures: greedy decoding gives the same replies either way, the samples are other draws from the same
distribution.

    python bench/problem_decoding.py --model runs/smollm2/sft-probe --problems runs/smollm2/problems/test.jsonl
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from side_by_side import report  # noqa: E402

from chatforge.eval.problems import pass_at_k, problem_accuracy  # noqa: E402
from chatforge.inference.engine import Engine, SamplingParams  # noqa: E402
from chatforge.io import read_jsonl  # noqa: E402
from chatforge.tasks.verifiable import is_correct_answer  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a chat model folder")
    parser.add_argument("--problems", required=True, help="a JSONL file of {prompt, answer} problems")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1)
    return parser.parse_args()


def padded_batches(engine: Engine, problems: list[dict], k: int, max_new_tokens: int, batch: int = 16) -> dict:
    """The reference: each batch of problems generated with ``Engine.complete``, greedy then ``k`` samples."""
    greedy = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    sampled = SamplingParams(temperature=1.0, top_k=None, max_new_tokens=max_new_tokens, seed=0)
    greedy_right, pass1, passk = 0, 0.0, 0.0
    for start in range(0, len(problems), batch):
        chunk = problems[start:start + batch]
        prompts = [engine.tokenizer.apply_chat_template(p["prompt"], add_generation_prompt=True, tokenize=False)
                   for p in chunk]
        for (reply,), problem in zip(engine.complete(prompts, greedy), chunk):
            greedy_right += is_correct_answer(reply, problem["answer"])
        for replies, problem in zip(engine.complete(prompts, sampled, n=k), chunk):
            right = sum(is_correct_answer(reply, problem["answer"]) for reply in replies)
            pass1 += pass_at_k(k, right, 1)
            passk += pass_at_k(k, right, k)
    return {"pass@1_greedy": greedy_right / len(problems), "pass@1": pass1 / len(problems),
            f"pass@{k}": passk / len(problems)}


def main() -> None:
    args = parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    engine = Engine(model, AutoTokenizer.from_pretrained(args.model))
    problems = read_jsonl(args.problems, limit=args.limit)
    variants = {
        "batcher": lambda: problem_accuracy(engine, problems, k=args.k, max_new_tokens=args.max_new_tokens),
        "padded": lambda: padded_batches(engine, problems, args.k, args.max_new_tokens),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    figures: dict[str, dict] = {}
    for round_index in range(args.rounds):
        for name in list(variants) if round_index % 2 == 0 else list(reversed(variants)):
            start = time.perf_counter()
            figures[name] = variants[name]()
            rates[name].append(60 * len(problems) / (time.perf_counter() - start))
    print(f"{len(problems)} problems, a greedy reply and {args.k} samples each, at most {args.max_new_tokens} tokens, "
          f"{torch.get_num_threads()} threads")
    report(rates, "problems a minute", "batcher", "padded")
    for name, values in figures.items():
        print(f"{name:>12}: " + ", ".join(f"{key} {values[key]:.3f}" for key in ("pass@1_greedy", "pass@1",
                                                                                   f"pass@{args.k}")))


if __name__ == "__main__":
    main()
