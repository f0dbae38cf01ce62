"""Overhead of the pretraining loop: its tokens/s against a bare PyTorch loop over the same model and batches.

Both train the same ChatForge model (``--preset``) on the same token windows with AdamW, LR schedule,
gradient clipping and bf16 autocast (fp32 on a CPU that emulates bf16, as the loop does); the loop adds
Accelerate, metrics, progress and checkpoint logic.
Throughput is taken between two steps after warm-up, from wall-clock time.

    python bench/pretrain_throughput.py [--preset tiny] [--steps 60] [--compile]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from chatforge.data.shards import TokenShards
from chatforge.modeling import ChatForgeForCausalLM, config_for_tokenizer
from chatforge.training import PretrainConfig, pretrain
from chatforge.training.data import WindowSampler
from chatforge.training.inputs import build_missing_inputs
from chatforge.training.loop import lr_factor
from chatforge.training.optim import build_optimizer
from chatforge.training.precision import mixed_precision


def bare_loop(config: PretrainConfig, warmup: int) -> float:
    """Tokens/s of a plain PyTorch loop: same model, batches, optimizer, schedule, clipping, autocast."""
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path)
    model = ChatForgeForCausalLM(config_for_tokenizer(tokenizer, config.model_preset,
                                                      max_position_embeddings=config.max_seq_length))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    optimizer = build_optimizer(model, config, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    sampler = WindowSampler(TokenShards(config.dataset_dir), config.max_seq_length,
                            config.per_device_train_batch_size, config.seed)
    stepper = torch.compile(model) if config.torch_compile else model
    tokens = config.per_device_train_batch_size * config.max_seq_length
    bf16 = mixed_precision(config.bf16) == "bf16"
    marks = []
    for step in range(config.max_steps):
        if step == warmup or step == config.max_steps - 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            marks.append(time.perf_counter())
        batch = {k: v.to(device) for k, v in sampler.batch(step).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = stepper(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return tokens * (config.max_steps - 1 - warmup) / (marks[1] - marks[0])


def loop_throughput(config: PretrainConfig, warmup: int) -> float:
    pretrain(config)
    records = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    # elapsed_s is stamped after each step: steps warmup+1 .. max_steps-1 lie between these two stamps.
    first, last = records[warmup - 1], records[config.max_steps - 2]
    return (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="alternate the two loops this many times")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chatforge-pretrain-bench-"))
    config = dict(dataset_dir=str(work / "shards"), tokenizer_name_or_path=str(work / "tokenizer"),
                  model_preset=args.preset, max_seq_length=args.seq_len, per_device_train_batch_size=args.batch_size,
                  max_steps=args.steps, warmup_steps=5, eval_steps=10 * args.steps, sample_steps=10 * args.steps,
                  save_steps=10 * args.steps, logging_steps=10, torch_compile=args.compile, eval_batches=1)
    build_missing_inputs(PretrainConfig(**config))
    loop, bare = [], []
    for repeat in range(args.repeats):
        loop.append(loop_throughput(PretrainConfig(**config, output_dir=str(work / f"run{repeat}")), args.warmup))
        bare.append(bare_loop(PretrainConfig(**config), args.warmup))
    result = {"preset": args.preset, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU",
              "mixed_precision": mixed_precision(PretrainConfig(**config).bf16),
              "loop_tokens_per_s": round(statistics.median(loop)), "bare_tokens_per_s": round(statistics.median(bare)),
              "ratio_loop_over_bare": round(statistics.median(loop) / statistics.median(bare), 3)}
    print(json.dumps(result, indent=2))
    print(f"pretraining loop {result['loop_tokens_per_s']:,} tok/s vs bare PyTorch loop "
          f"{result['bare_tokens_per_s']:,} tok/s: overhead {100 * (1 - result['ratio_loop_over_bare']):.1f}%")


if __name__ == "__main__":
    main()
