"""Training throughput of ChatForgeForCausalLM against two plain-PyTorch references: a GPT of the same
architecture and shape (``reference``), and a GPT of nanoGPT's architecture at the same width, depth, heads
and context (``nanogpt``: learned positions, LayerNorm, GELU MLP).

The models run the same training step (forward, next-token loss, backward, AdamW: ChatForge's as its pretraining
loop builds it, the same kernel for the same-architecture reference, nanoGPT's architecture's as nanoGPT's
train.py sets it up) on the same batches, in
rounds of rotating order so that machine noise hits each alike. Prints tokens/s of each, and the median
per-round ratios (above 1.0 means ChatForge is faster): tokens/s against ``reference``, achieved model
FLOP/s (6N + 12·L·C·T per token, each model's own N) against ``nanogpt``; MFU where a peak is known.

    python bench/model_throughput.py --preset tiny                      # CPU (bf16 where native)
    python bench/model_throughput.py --preset gpt2-124m --compile       # GPU, bf16
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from nanogpt_reference import NanoGPT  # noqa: E402
from nanogpt_reference import flops_per_token as nanogpt_flops_per_token  # noqa: E402
from reference_gpt import ReferenceGPT  # noqa: E402

from chatforge.modeling import (  # noqa: E402
    ChatForgeConfig,
    ChatForgeForCausalLM,
    flops_per_token,
    num_parameters,
    peak_bf16_flops,
)
from chatforge.training import PretrainConfig  # noqa: E402
from chatforge.training.optim import adamw_runs_fused, build_optimizer  # noqa: E402
from chatforge.training.precision import mixed_precision  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 32 on GPU")
    parser.add_argument("--seq-len", type=int, default=None, help="default: the preset's context (CPU: 256)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default: 5 CPU, 20 GPU)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                        help="default: bf16, or fp32 on a CPU that emulates bf16")
    parser.add_argument("--attn", default="sdpa", help="ChatForge attention implementation")
    parser.add_argument("--nanogpt-fused", action="store_true",
                        help="fused AdamW for nanoGPT's architecture on a CPU too (its train.py fuses on CUDA only)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    return parser.parse_args()


def training_step(model, optimizer, batch, is_chatforge: bool, autocast) -> None:
    with autocast():
        loss = model(input_ids=batch, labels=batch, skip_logits=True).loss if is_chatforge else model(batch, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    config = ChatForgeConfig.from_preset(args.preset)
    config._attn_implementation = args.attn
    batch_size = args.batch_size or (32 if on_gpu else 8)
    seq_len = args.seq_len or (config.max_position_embeddings if on_gpu else min(256, config.max_position_embeddings))
    steps = args.steps or (20 if on_gpu else 5)
    args.dtype = args.dtype or ("bf16" if mixed_precision(True) == "bf16" else "fp32")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True

    torch.manual_seed(0)
    models = {"chatforge": ChatForgeForCausalLM(config).to(device), "reference": ReferenceGPT(config).to(device),
              "nanogpt": NanoGPT(config).to(device)}
    n_params = {name: num_parameters(model) for name, model in models.items()}
    if n_params["chatforge"] != n_params["reference"]:
        raise SystemExit(f"shape mismatch: {n_params}")
    flops = {"chatforge": flops_per_token(config, seq_len), "reference": flops_per_token(config, seq_len),
             "nanogpt": nanogpt_flops_per_token(config, seq_len)}
    # ChatForge with its pretraining loop's optimizer, the same-architecture reference with the same AdamW kernel
    # (it isolates the model's code), nanoGPT's architecture as nanoGPT's train.py sets it up: fused on CUDA only,
    # unless --nanogpt-fused
    fused = {"reference": adamw_runs_fused(device), "nanogpt": on_gpu or args.nanogpt_fused}
    optimizers = {name: torch.optim.AdamW(models[name].parameters(), lr=1e-4, fused=fused[name]) for name in fused}
    optimizers["chatforge"] = build_optimizer(models["chatforge"], PretrainConfig(learning_rate=1e-4), device)
    steppers = {name: torch.compile(model) if args.compile else model for name, model in models.items()}

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator).to(device)
               for _ in range(4)]

    def run(name: str, n: int) -> float:
        if on_gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(n):
            training_step(steppers[name], optimizers[name], batches[i % len(batches)], name == "chatforge", autocast)
        if on_gpu:
            torch.cuda.synchronize()
        return batch_size * seq_len * n / (time.perf_counter() - start)

    for name in models:
        run(name, args.warmup)
    # Rounds rotate the order so that drift in machine speed hits every model alike; each ratio is the median
    # of the per-round ratios.
    rates = {name: [] for name in models}
    ratios = {"reference": [], "nanogpt": []}
    for round_index in range(args.rounds):
        names = list(models)
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        measured = {name: run(name, steps) for name in order}
        for name, value in measured.items():
            rates[name].append(value)
        for name, values in ratios.items():
            values.append(measured["chatforge"] * flops["chatforge"] / (measured[name] * flops[name]))
    tokens_per_s = {name: statistics.median(values) for name, values in rates.items()}
    ratio = statistics.median(ratios["reference"])
    flops_ratio = statistics.median(ratios["nanogpt"])

    device_name = torch.cuda.get_device_name() if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    peak = peak_bf16_flops(device_name)
    result = {
        "preset": args.preset,
        "device": device_name,
        "torch": torch.__version__,
        "parameters": n_params["chatforge"],
        "batch_size": batch_size,
        "seq_len": seq_len,
        "dtype": args.dtype,
        "compile": args.compile,
        "attn": args.attn,
        "fused_adamw": {"chatforge": adamw_runs_fused(device), **fused},
        "tokens_per_s": {name: round(value) for name, value in tokens_per_s.items()},
        "model_tflops": {name: round(value * flops[name] / 1e12, 4) for name, value in tokens_per_s.items()},
        "ratio_chatforge_over_reference": round(ratio, 3),
        "ratio_range": [round(min(ratios["reference"]), 3), round(max(ratios["reference"]), 3)],
        "flops_ratio_chatforge_over_nanogpt": round(flops_ratio, 3),
        "flops_ratio_range": [round(min(ratios["nanogpt"]), 3), round(max(ratios["nanogpt"]), 3)],
    }
    if peak and dtype == torch.bfloat16:
        result["mfu"] = {name: round(value * flops[name] / peak, 3) for name, value in tokens_per_s.items()}
    print(json.dumps(result, indent=2))
    print(f"{args.preset} on {device_name}: ChatForge {tokens_per_s['chatforge']:,.0f} tok/s, plain PyTorch "
          f"{tokens_per_s['reference']:,.0f} tok/s -> ratio {ratio:.3f}x; model FLOP/s against nanoGPT's "
          f"architecture ({tokens_per_s['nanogpt']:,.0f} tok/s): {flops_ratio:.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
