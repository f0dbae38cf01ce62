"""Decoding with the linear layers' weights packed for oneDNN (``inference.packed_linear``, how every generation runs
on a CPU) against the reference of ``nn.Linear``'s own product.

Greedy replies to chat prompts through ``Engine.generate_ids`` in batches of ``--batch`` (as PPO draws its
rollouts: padded batches stepping until their longest reply is done), in rounds of alternating order. Prints
generated tokens a second of each, the median per-round ratio (above 1.0: the packed weights are faster) and how
many replies are identical.

    python bench/packed_linear.py --model runs/smollm2/sft-probe --prompts runs/smollm2/problems/test.jsonl
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from side_by_side import report  # noqa: E402

from chatforge.inference import packed_linear  # noqa: E402
from chatforge.inference.engine import Engine, SamplingParams  # noqa: E402
from chatforge.io import read_jsonl  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a chat model folder")
    parser.add_argument("--prompts", required=True, help="a JSONL file of records whose `prompt` is a conversation")
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="sequences decoded together")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    engine = Engine(model, AutoTokenizer.from_pretrained(args.model))
    texts = [engine.tokenizer.apply_chat_template(record["prompt"], add_generation_prompt=True, tokenize=False)
             for record in read_jsonl(args.prompts, limit=args.limit)]
    prompts = engine.tokenizer(texts, add_special_tokens=False)["input_ids"]
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    available = packed_linear.packing_available
    paths = {"packed": available, "nn.Linear": lambda: False}

    def generate(name: str) -> list[list[int]]:
        packed_linear.packing_available = paths[name]
        return [reply for start in range(0, len(prompts), args.batch)
                for reply in engine.generate_ids(prompts[start:start + args.batch], params)]

    rates: dict[str, list[float]] = {name: [] for name in paths}
    replies: dict[str, list[list[int]]] = {}
    for round_index in range(args.rounds):
        for name in list(paths) if round_index % 2 == 0 else list(reversed(paths)):
            start = time.perf_counter()
            replies[name] = generate(name)
            rates[name].append(sum(map(len, replies[name])) / (time.perf_counter() - start))
    same = sum(a == b for a, b in zip(*replies.values()))
    print(f"{len(prompts)} prompts in batches of {args.batch}, greedy, at most {args.max_new_tokens} tokens, "
          f"{torch.get_num_threads()} threads")
    report(rates, "tokens/s", "packed", "nn.Linear")
    print(f"identical replies: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
