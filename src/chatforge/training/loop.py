"""The pretraining loop on Accelerate: next-token prediction over token shards, with live observation,
checkpoints and exact resume."""

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..data.shards import META_FILE, TokenShards
from ..eval import unigram_cross_entropy
from ..inference import sample_continuations
from ..io import atomic_write_text, require_input
from ..modeling import (
    ChatForgeForCausalLM,
    config_for_tokenizer,
    estimate_mfu,
    peak_bf16_flops,
    set_generation_defaults,
)
from ..modeling.factory import require_model
from .checkpoint import STATE_FILE, export_final_model, resolve_checkpoint, save_checkpoint, set_rng_state
from .config import PretrainConfig, accumulation_steps
from .data import BatchPrefetcher, StreamingWindows, WindowSampler, split_batches, validation_batches
from .distributed import (
    deepspeed_zero3,
    fill_deepspeed_config,
    fresh_accelerator,
    load_optimizer_state,
    model_state,
    optimizer_state,
    parameters_sharded,
    sharding,
)
from .optim import build_optimizer
from .precision import mixed_precision

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"


def lr_factor(step: int, config: PretrainConfig) -> float:
    """Multiplier of the peak learning rate: linear warmup, then cosine (or warmup-stable-decay) to ``min_lr_ratio``."""
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    floor = config.min_lr_ratio
    if config.lr_scheduler_type == "wsd":
        decay_start = config.max_steps - int(config.decay_steps_ratio * config.max_steps)
        if step < decay_start:
            return 1.0
        progress = (step - decay_start) / max(config.max_steps - decay_start, 1)
        return 1.0 - (1.0 - floor) * progress
    progress = (step - config.warmup_steps) / max(config.max_steps - config.warmup_steps, 1)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def unigram_loss(train: TokenShards, val: TokenShards) -> float:
    """Validation cross-entropy (nats/token) of the add-one unigram model of the training tokens."""
    return unigram_cross_entropy(train.token_counts(), val.token_counts())


def model_inputs(batch: dict, device: torch.device, document_masking: bool) -> dict:
    """``input_ids``, ``labels`` and, with document masking, the ``position_ids`` that restart per document."""
    keys = ("input_ids", "labels", "position_ids") if document_masking else ("input_ids", "labels")
    return {key: batch[key].to(device, non_blocking=True) for key in keys}  # asynchronous from pinned memory


def next_token_loss_sum(model, batch: dict, fused: bool = False) -> torch.Tensor:
    """The next-token loss summed over a batch (``labels`` already shifted). ``fused``: the model is a ChatForge
    model, whose head computes the loss chunk by chunk without holding every token's logits
    (:func:`~chatforge.modeling.modeling_chatforge.linear_cross_entropy`)."""
    if fused:
        return model(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"),
                     shift_labels=batch["labels"], skip_logits=True).loss * batch["labels"].numel()
    logits = model(input_ids=batch["input_ids"], position_ids=batch.get("position_ids")).logits
    return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), reduction="sum")


@torch.no_grad()
def evaluate(model, batches: list[dict], accelerator: Accelerator, document_masking: bool, fused: bool) -> dict:
    """Validation loss (nats/token) and bits per byte over fixed batches (``fused``: see
    :func:`next_token_loss_sum`)."""
    model.eval()
    nats = tokens = n_bytes = 0.0
    for batch in batches:
        inputs = model_inputs(batch, accelerator.device, document_masking)
        with accelerator.autocast():
            nats += next_token_loss_sum(model, inputs, fused).item()
        tokens += batch["labels"].numel()
        n_bytes += batch["bytes"]
    model.train()
    return {"val_loss": nats / tokens, "val_bpb": nats / math.log(2) / max(n_bytes, 1)}


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def settle(pending: list[dict], tokens_per_step: int, seconds: float, started: float) -> list[dict]:
    """The metrics records of the steps in ``pending`` (their losses and gradient norms still on the device),
    read in one host sync; tokens/s is their average over the ``seconds`` they took together."""
    norms = [record["grad_norm"] for record in pending if record["grad_norm"] is not None]
    losses = torch.stack([record["loss"] for record in pending]).tolist()
    norms = iter(torch.stack([torch.as_tensor(norm, dtype=torch.float32) for norm in norms]).tolist() if norms else [])
    tokens_per_s, elapsed = tokens_per_step * len(pending) / seconds, time.perf_counter() - started
    return [{"step": record["step"], "loss": loss, "lr": record["lr"], "tokens_per_s": tokens_per_s,
             "grad_norm": None if record["grad_norm"] is None else next(norms),
             "tokens": record["step"] * tokens_per_step, "elapsed_s": elapsed}
            for record, loss in zip(pending, losses)]


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop records after ``last_step`` (a resumed run writes them again)."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
        path.write_text("".join(line + "\n" for line in kept))


def training_data(config: PretrainConfig, tokenizer, accelerator: Accelerator):
    """The batch source, the validation batches and the unigram baseline (counted over every training token: on
    the main process only, and from shards only; None elsewhere)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    batch_size, seq_len = config.per_device_train_batch_size, config.max_seq_length
    if config.dataset_name is not None:
        stream = StreamingWindows([config.dataset_name], tokenizer, seq_len, batch_size, config.eval_batches,
                                  config.dataset_text_field, rank, world)
        return stream, stream.validation_batches(), None
    train, val = TokenShards(config.dataset_dir, "train"), TokenShards(config.dataset_dir, "val")
    sampler = WindowSampler(train, seq_len, batch_size, config.seed, rank, world)
    val_batches = validation_batches(val, seq_len, batch_size, config.eval_batches, tokenizer)
    baseline = unigram_loss(train, val) if accelerator.is_main_process else None
    return sampler, val_batches, baseline


def build_model(config: PretrainConfig, tokenizer, checkpoint: Path | None):
    attention = config.attn_implementation
    source = checkpoint or config.model_name_or_path
    if source:
        return AutoModelForCausalLM.from_pretrained(source, attn_implementation=attention)
    return ChatForgeForCausalLM(config_for_tokenizer(tokenizer, config.model_preset, attn_implementation=attention))


def check_inputs(config: PretrainConfig, processes: int = 1) -> None:
    """Stop before any work where an input is missing (naming the command that makes it), or where the token
    shards cannot fill the recipe's batches on ``processes`` processes."""
    if config.dataset_name is None:
        require_input("dataset_dir", config.dataset_dir, "token shards")
    require_model("tokenizer_name_or_path", config.tokenizer_name_or_path)
    accumulation_steps(config, processes)
    shard_batches(config, processes)


def shard_batches(config: PretrainConfig, processes: int) -> dict[str, int] | None:
    """The batches of the token shards at ``config``'s shapes on ``processes`` processes (see
    :func:`~chatforge.training.data.split_batches`); None where there are no shards (yet)."""
    if config.dataset_name is not None or not (Path(config.dataset_dir) / META_FILE).exists():
        return None
    splits = TokenShards(config.dataset_dir).meta["splits"]
    return split_batches(config, processes, {split: [shard["tokens"] for shard in info["shards"]]
                                             for split, info in splits.items()}, config.dataset_dir)


def pretrain(config: PretrainConfig) -> dict:
    """Train a causal LM on ``config.dataset_dir``; returns the final figures (also in ``metrics.jsonl``)."""
    trackers = [name for name in config.report_to if name != "none"]
    accelerator = fresh_accelerator(mixed_precision=mixed_precision(config.bf16), log_with=trackers or None,
                                    project_dir=config.output_dir)
    output_dir = Path(config.output_dir)
    check_inputs(config, accelerator.num_processes)
    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path)
    checkpoint = resolve_checkpoint(output_dir, config.resume_from_checkpoint)
    model = build_model(config, tokenizer, checkpoint)
    set_generation_defaults(model, tokenizer)
    optimizer = build_optimizer(model, config, accelerator.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    accumulation = accumulation_steps(config, accelerator.num_processes)
    accelerator.gradient_accumulation_steps = accumulation
    fill_deepspeed_config(accelerator, config.per_device_train_batch_size, accumulation, config.max_grad_norm)
    model, optimizer = accelerator.prepare(model, optimizer)
    start_step = 0
    if checkpoint is not None:
        # onto the CPU, not cuda:0 on every rank: the optimizer state moves to each parameter's device
        state = torch.load(checkpoint / STATE_FILE, weights_only=False, map_location="cpu")
        load_optimizer_state(accelerator, model, optimizer, state["optimizer"], str(checkpoint))
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_step = state["step"]
    sampler, val_batches, baseline = training_data(config, tokenizer, accelerator)
    if accelerator.device.type != "cpu":  # on a CPU the cores that would build batches ahead are computing
        sampler = BatchPrefetcher(sampler, pin=accelerator.device.type == "cuda")
    metrics_path, samples_path = output_dir / METRICS_FILE, output_dir / SAMPLES_FILE
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for path in (metrics_path, samples_path):
            _truncate_jsonl(path, start_step)

    if trackers:
        tracked = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(config).items()}
        accelerator.init_trackers("pretrain", config=tracked)
    unwrapped = accelerator.unwrap_model(model)
    tokens_per_micro = config.per_device_train_batch_size * config.max_seq_length
    tokens_per_step = tokens_per_micro * accumulation * accelerator.num_processes
    accelerator.print(f"{config.per_device_train_batch_size} rows per device x {accelerator.num_processes} process(es) "
                      f"x {accumulation} accumulation steps = {tokens_per_step:,} tokens per optimizer step "
                      f"({sharding(accelerator)})")
    stepper = torch.compile(model) if config.torch_compile else model
    # the head's loss chunk by chunk where the head's weight is whole in the model's forward (not under ZeRO-3)
    fused_loss = isinstance(unwrapped, ChatForgeForCausalLM) and not deepspeed_zero3(accelerator)
    on_gpu = accelerator.device.type == "cuda"
    peak = peak_bf16_flops(torch.cuda.get_device_name()) if on_gpu and accelerator.mixed_precision == "bf16" else None
    progress = tqdm(range(start_step, config.max_steps), initial=start_step, total=config.max_steps,
                    desc="pretraining", disable=not accelerator.is_main_process)
    last_eval, pending = {}, []
    started = window_started = time.perf_counter()
    for step in progress:
        loss_sum = torch.zeros((), device=accelerator.device)
        for micro in range(accumulation):
            batch = model_inputs(sampler.batch(step * accumulation + micro),
                                 accelerator.device, config.document_masking)
            # gradients synchronised (and, under DeepSpeed, the optimizer stepped) after the last micro-batch only
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    micro_sum = next_token_loss_sum(stepper, batch, fused_loss)
                # Mean over every token of the step on every rank (DDP averages the ranks' gradients); Accelerate,
                # or DeepSpeed, divides by the accumulation steps.
                accelerator.backward(micro_sum / tokens_per_micro)
            loss_sum += micro_sum.detach()
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)  # DeepSpeed's: clipped
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        # kept on the device: read (one host sync) only when the records are written
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        pending.append({"step": done, "loss": accelerator.reduce(loss_sum, reduction="sum") / tokens_per_step,
                        "lr": lr, "grad_norm": grad_norm})
        evaluating = done % config.eval_steps == 0 or done == config.max_steps
        if evaluating or done % config.logging_steps == 0 or any(
                done % every == 0 for every in (config.sample_steps, config.save_steps)):
            records = settle(pending, tokens_per_step, time.perf_counter() - window_started, started)
            pending = []
            if peak and isinstance(unwrapped, ChatForgeForCausalLM):  # one throughput per window: one MFU
                mfu = estimate_mfu(unwrapped.config, config.max_seq_length,
                                   records[-1]["tokens_per_s"] / accelerator.num_processes, peak)
                for record in records:
                    record["mfu"] = mfu
            if evaluating:
                last_eval = evaluate(stepper, val_batches, accelerator, config.document_masking, fused_loss)
                records[-1].update(last_eval)
            for record in records:
                if trackers:
                    accelerator.log({f"train/{k}" if not k.startswith("val_") else f"eval/{k}": v
                                     for k, v in record.items() if k != "step"}, step=record["step"])
                if accelerator.is_main_process:
                    _append_jsonl(metrics_path, record)
            last = records[-1]
            progress.set_postfix(loss=f"{last['loss']:.3f}", lr=f"{last['lr']:.2e}",
                                 tok_s=f"{last['tokens_per_s']:,.0f}",
                                 **({"mfu": f"{last['mfu']:.1%}"} if "mfu" in last else {}),
                                 **({"val": f"{last_eval['val_loss']:.3f}"} if last_eval else {}))
        if (done % config.sample_steps == 0 or done == config.max_steps) and (
                accelerator.is_main_process or parameters_sharded(accelerator)):  # every process joins the gathers
            samples = sample_continuations(unwrapped, tokenizer, config.sample_prompts, config.sample_max_new_tokens,
                                           config.seed)
            if accelerator.is_main_process:
                _append_jsonl(samples_path, {"step": done, "samples": samples})
                progress.write("\n".join([f"step {done} samples:"] + [f"  {p!r} -> {c!r}" for p, c in samples.items()]))
        if done % config.save_steps == 0 or done == config.max_steps:
            weights, optimizer_whole = model_state(accelerator, model), optimizer_state(accelerator, model, optimizer)
            if accelerator.is_main_process:
                save_checkpoint(output_dir, done, unwrapped, tokenizer, weights, optimizer_whole, scheduler,
                                config.save_total_limit)
            accelerator.wait_for_everyone()
        if not pending:
            window_started = time.perf_counter()  # throughput leaves evaluation, samples and saving out
    weights = model_state(accelerator, model)
    if accelerator.is_main_process:
        export_final_model(output_dir, unwrapped, tokenizer, weights)
    accelerator.wait_for_everyone()  # no process leaves (ending the process group) while another still works
    accelerator.end_training()
    summary = {"steps": config.max_steps, "tokens": config.max_steps * tokens_per_step,
               "processes": accelerator.num_processes,
               "unigram_val_loss": baseline, **last_eval, "seconds": round(time.perf_counter() - started, 1),
               "output_dir": str(output_dir)}
    if accelerator.is_main_process:
        atomic_write_text(output_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
        reference = f" (unigram baseline {baseline:.3f})" if baseline is not None else ""
        print(f"pretraining: {summary['steps']} steps, {summary['tokens']:,} tokens on {summary['processes']} "
              f"process(es), validation loss "
              f"{last_eval.get('val_loss', float('nan')):.3f}{reference}, "
              f"{last_eval.get('val_bpb', float('nan')):.3f} bits/byte -> {output_dir}")
    return summary
