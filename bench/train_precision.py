"""A training step of a causal language model (any local folder: an imported SmolLM2, a chatforge checkpoint)
in bf16 autocast against fp32, on the same batches: what a CPU without native bf16, where chatforge's recipes
train in fp32, pays for the training steps of a recipe at its shape (the smollm2 recipes: 4 packed rows of 512
tokens, 2 accumulation steps).

The step is forward, next-token loss, backward and AdamW over fp32 master weights, as the recipes train. The two
precisions run in rounds of alternating order so that machine noise hits each alike; prints seconds per step of
each and the median per-round ratio (fp32 / bf16: above 1.0 means fp32 is slower).

    python bench/train_precision.py --model runs/smollm2/sft
"""

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model folder")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def training_step(model, optimizer, batches: list[torch.Tensor], bf16: bool) -> float:
    """Seconds for one optimizer step over ``batches`` (gradient accumulation)."""
    start = time.perf_counter()
    for ids in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss / len(batches)
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    generator = torch.Generator().manual_seed(args.seed)
    batches = [torch.randint(0, model.config.vocab_size, (args.batch_size, args.seq_len), generator=generator)
               for _ in range(args.accumulation)]
    for bf16 in (False, True):  # warm-up: allocations, kernels' first calls
        training_step(model, optimizer, batches, bf16)
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for round_index in range(args.rounds):
        for name in (("fp32", "bf16") if round_index % 2 == 0 else ("bf16", "fp32")):
            seconds[name].append(training_step(model, optimizer, batches, name == "bf16"))
    ratios = [fp32 / bf16 for fp32, bf16 in zip(seconds["fp32"], seconds["bf16"])]
    print(json.dumps({"model": args.model, "tokens_per_step": args.batch_size * args.seq_len * args.accumulation,
                      "threads": torch.get_num_threads(),
                      "seconds_per_step": {name: statistics.median(values) for name, values in seconds.items()},
                      "fp32_over_bf16": statistics.median(ratios)}, indent=2))


if __name__ == "__main__":
    main()
