"""Pretraining loop throughput: its tokens/s against a bare PyTorch loop over the same model and batches
(the loop's overhead), and against the plain-PyTorch GPT of the same shape (``--reference``).

All loops train on the same token windows with AdamW, LR schedule, gradient clipping and bf16 autocast
(fp32 on a CPU that emulates bf16, as the loop does); the loop adds Accelerate, metrics, progress and
checkpoint logic. Throughput is taken between two steps after warm-up, from wall-clock time; MFU is
printed on an accelerator with a known bf16 peak.

    python bench/pretrain_throughput.py [--preset tiny] [--steps 60] [--compile]
    python bench/pretrain_throughput.py --preset gpt2-124m --vocab-size 50304 --seq-len 1024 \\
        --batch-size 32 --compile --reference                          # GPU
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from chatforge.data.shards import TokenShards
from chatforge.modeling import (
    ChatForgeConfig,
    ChatForgeForCausalLM,
    config_for_tokenizer,
    estimate_mfu,
    peak_bf16_flops,
)
from chatforge.training import PretrainConfig, pretrain
from chatforge.training.data import WindowSampler
from chatforge.training.inputs import embedded_inputs
from chatforge.training.loop import build_model, lr_factor, model_inputs, next_token_loss_sum
from chatforge.training.optim import build_optimizer
from chatforge.training.precision import mixed_precision

sys.path.insert(0, str(Path(__file__).parent))
from reference_gpt import ReferenceGPT  # noqa: E402


def bare_loop(config: PretrainConfig, warmup: int, reference: bool = False) -> float:
    """Tokens/s of a plain PyTorch loop (same batches, optimizer, schedule, clipping, autocast) over the loop's
    model, or with ``reference`` over the plain-PyTorch GPT of its shape."""
    torch.manual_seed(config.seed)
    model = build_model(config, AutoTokenizer.from_pretrained(config.tokenizer_name_or_path), None)
    if reference:
        model = ReferenceGPT(model.config)
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
        batch = model_inputs(sampler.batch(step), device, config.document_masking)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if reference:
                loss = stepper(batch["input_ids"], batch["input_ids"])
            else:
                loss = next_token_loss_sum(stepper, batch, fused=True) / tokens  # as the loop trains ChatForge
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return tokens * (config.max_steps - 1 - warmup) / (marks[1] - marks[0])


def loop_throughput(config: PretrainConfig, warmup: int) -> float:
    pretrain(config)
    records = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    # elapsed_s is stamped when the records are written, every logging_steps: whole windows of steps lie between
    # two such stamps (the last step, followed by an evaluation, is left out).
    stamped = [record for record in records
               if record["step"] % config.logging_steps == 0 and warmup <= record["step"] < config.max_steps]
    first, last = stamped[0], stamped[-1]
    return (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])


def save_initial_model(config: PretrainConfig, vocab_size: int | None, folder: Path) -> ChatForgeConfig:
    """A freshly initialised model of the preset, saved for every loop to start from; ``vocab_size`` token ids
    give the preset's shape whatever the size of the tokenizer built from the embedded corpus."""
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path)
    overrides = {"vocab_size": vocab_size} if vocab_size else {}
    model_config = config_for_tokenizer(tokenizer, config.model_preset, **overrides)
    ChatForgeForCausalLM(model_config).save_pretrained(folder)
    return model_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="model vocabulary (default: the embedded-corpus tokenizer's, padded to 64)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--attn", default="sdpa", help="attention implementation of the ChatForge model")
    parser.add_argument("--no-document-masking", action="store_true",
                        help="one causal window per row (as the reference) instead of attention within documents")
    parser.add_argument("--reference", action="store_true", help="also time the plain-PyTorch GPT of the same shape")
    parser.add_argument("--repeats", type=int, default=3, help="alternate the loops this many times")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.steps < args.warmup + 2:
        parser.error(f"--steps must be at least --warmup + 2 ({args.warmup + 2})")
    work = Path(tempfile.mkdtemp(prefix="chatforge-pretrain-bench-"))
    config = dict(dataset_dir=str(work / "shards"), tokenizer_name_or_path=str(work / "tokenizer"),
                  model_preset=args.preset, max_seq_length=args.seq_len, per_device_train_batch_size=args.batch_size,
                  max_steps=args.steps, warmup_steps=min(5, args.steps - 1), eval_steps=10 * args.steps,
                  sample_steps=10 * args.steps, save_steps=10 * args.steps, logging_steps=10, eval_batches=1,
                  torch_compile=args.compile, attn_implementation=args.attn,
                  document_masking=not args.no_document_masking)
    # A quarter of the embedded corpus held out: one validation batch of 32 x 1024 tokens fits.
    embedded_inputs(work, val_fraction=0.25)
    model_config = save_initial_model(PretrainConfig(**config), args.vocab_size, work / "init")
    config["model_name_or_path"] = str(work / "init")
    rates = {"loop": [], "bare": [], **({"reference": []} if args.reference else {})}
    for repeat in range(args.repeats):
        rates["loop"].append(loop_throughput(PretrainConfig(**config, output_dir=str(work / f"run{repeat}")),
                                             args.warmup))
        rates["bare"].append(bare_loop(PretrainConfig(**config), args.warmup))
        if args.reference:
            rates["reference"].append(bare_loop(PretrainConfig(**config), args.warmup, reference=True))
    tokens_per_s = {name: statistics.median(values) for name, values in rates.items()}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    precision = mixed_precision(PretrainConfig(**config).bf16)
    result = {"preset": args.preset, "device": device, "mixed_precision": precision, "compile": args.compile,
              "attn": args.attn, "document_masking": not args.no_document_masking,
              "vocab_size": model_config.vocab_size, "batch_size": args.batch_size, "seq_len": args.seq_len,
              **{f"{name}_tokens_per_s": round(value) for name, value in tokens_per_s.items()},
              "ratio_loop_over_bare": round(tokens_per_s["loop"] / tokens_per_s["bare"], 3)}
    if args.reference:
        result["ratio_loop_over_reference"] = round(tokens_per_s["loop"] / tokens_per_s["reference"], 3)
    peak = peak_bf16_flops(device)
    if peak and precision == "bf16":
        result["mfu"] = {name: round(estimate_mfu(model_config, args.seq_len, value, peak), 3)
                         for name, value in tokens_per_s.items()}
    print(json.dumps(result, indent=2))
    print(f"pretraining loop {result['loop_tokens_per_s']:,} tok/s vs bare PyTorch loop "
          f"{result['bare_tokens_per_s']:,} tok/s: overhead {100 * (1 - result['ratio_loop_over_bare']):.1f}%")
    if args.reference:
        print(f"against the plain-PyTorch GPT ({result['reference_tokens_per_s']:,} tok/s): "
              f"{result['ratio_loop_over_reference']:.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
