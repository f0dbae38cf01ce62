"""Configuration of pretraining; field names follow transformers' TrainingArguments where one exists."""

import dataclasses
import types
import typing
from dataclasses import dataclass, field

from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..errors import InvalidValue


@dataclass
class PretrainConfig:
    """Settings of :func:`chatforge.training.pretrain`, readable from YAML and ``--key value`` (``TrlParser``)."""

    output_dir: str = field(default="runs/pretrain", metadata={"help": "checkpoints, metrics.jsonl, samples"})
    dataset_dir: str = field(default="runs/tiny/shards", metadata={"help": "token shards (chatforge data tokenize)"})
    dataset_name: str | None = field(
        default=None, metadata={"help": "instead of dataset_dir: a Hub dataset (streamed) or text/JSONL/parquet "
                                        "files, tokenized on the fly"})
    dataset_text_field: str = field(default="text", metadata={"help": "text field of dataset_name records"})
    tokenizer_name_or_path: str = field(default="runs/tiny/tokenizer", metadata={"help": "tokenizer folder or Hub id"})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "start from this model (any AutoModelForCausalLM); else a new ChatForge model"})
    model_preset: str = field(default="tiny", metadata={"help": "ChatForge preset of a new model"})
    max_seq_length: int = field(default=256, metadata={"help": "tokens per training row"})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "rows per process per micro-batch"})
    global_batch_size: int | None = field(
        default=None, metadata={"help": "rows per optimizer step over all processes: gradient_accumulation_steps "
                                        "is then derived from it and the number of processes, so that 1 or 8 GPUs "
                                        "train on the same tokens per step"})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "micro-batches per optimizer step"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps to train for"})
    optim: str = field(default="adamw", metadata={"help": "adamw, or muon (hidden matrices) + adamw (the rest)"})
    learning_rate: float = field(default=3e-3, metadata={"help": "peak learning rate of AdamW"})
    muon_learning_rate: float = field(default=0.02, metadata={"help": "peak learning rate of Muon"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final learning rate as a share of the peak"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "cosine or wsd (warmup-stable-decay)"})
    warmup_steps: int = field(default=50, metadata={"help": "steps of linear warm-up from 0"})
    decay_steps_ratio: float = field(default=0.2, metadata={"help": "wsd: share of steps spent decaying"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (matrices only)"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast"})
    torch_compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "attention kernel: sdpa, eager, flex_attention (GPU), flash_attention_2/3 "
                                          "(where installed), or a Hub kernel"})
    document_masking: bool = field(
        default=True, metadata={"help": "packed rows: attend only within each document (false: one causal window "
                                        "per row, as GPT-2 trained, in sdpa's own causal mode)"})
    logging_steps: int = field(default=10, metadata={"help": "steps between logged losses"})
    eval_steps: int = field(default=100, metadata={"help": "steps between held-out evaluations"})
    eval_batches: int = field(default=8, metadata={"help": "held-out batches per evaluation"})
    sample_steps: int = field(default=200, metadata={"help": "steps between printed samples"})
    sample_prompts: list[str] = field(default_factory=lambda: ["The city of", "In 1990, the", "He was born in"],
                                      metadata={"help": "prompts of the printed samples"})
    sample_max_new_tokens: int = field(default=32, metadata={"help": "tokens per printed sample"})
    save_steps: int = field(default=200, metadata={"help": "steps between checkpoints"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept (oldest deleted)"})
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"],
        metadata={"help": "trackers: tensorboard, trackio, wandb, ... (accelerate's names); [] or none for none"})
    seed: int = field(default=42, metadata={"help": "seed of initialisation, data order and sampling"})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' or a checkpoint folder to continue from"})

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = typing.get_type_hints(type(self))[f.name]
            if not _matches(value, expected):
                raise InvalidValue(f"PretrainConfig.{f.name}={value!r}: expected {_type_name(expected)}")
        positive = ("max_seq_length", "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps",
                    "logging_steps", "eval_steps", "eval_batches", "sample_steps", "save_steps", "save_total_limit")
        for name in positive:
            if getattr(self, name) <= 0:
                raise InvalidValue(f"PretrainConfig.{name}={getattr(self, name)!r}: must be positive")
        if self.learning_rate <= 0:
            raise InvalidValue(f"PretrainConfig.learning_rate={self.learning_rate!r}: must be positive")
        if self.optim not in ("adamw", "muon"):
            raise InvalidValue(f"PretrainConfig.optim={self.optim!r}: use 'adamw' or 'muon'")
        if self.lr_scheduler_type not in ("cosine", "wsd"):
            raise InvalidValue(f"PretrainConfig.lr_scheduler_type={self.lr_scheduler_type!r}: use 'cosine' or 'wsd'")
        if self.attn_implementation not in attention_implementations() and "/" not in self.attn_implementation:
            raise InvalidValue(f"PretrainConfig.attn_implementation={self.attn_implementation!r}: use one of "
                               f"{sorted(attention_implementations())} or a Hub kernel ('org/name')")
        if self.global_batch_size is not None and self.global_batch_size % self.per_device_train_batch_size:
            raise InvalidValue(f"PretrainConfig.global_batch_size={self.global_batch_size}: must be a multiple of "
                               f"per_device_train_batch_size={self.per_device_train_batch_size}")
        if not 0 <= self.warmup_steps < self.max_steps:
            raise InvalidValue(f"PretrainConfig.warmup_steps={self.warmup_steps}: must be in [0, max_steps)")


def accumulation_steps(config: PretrainConfig, processes: int) -> int:
    """Micro-batches per optimizer step: ``gradient_accumulation_steps``, or what makes ``global_batch_size`` rows
    over ``processes`` processes."""
    if config.global_batch_size is None:
        return config.gradient_accumulation_steps
    per_micro_step = config.per_device_train_batch_size * processes
    if config.global_batch_size % per_micro_step:
        raise InvalidValue(f"PretrainConfig.global_batch_size={config.global_batch_size} is not a multiple of "
                           f"per_device_train_batch_size={config.per_device_train_batch_size} x {processes} "
                           "processes; choose a batch size or a number of processes that divides it")
    return config.global_batch_size // per_micro_step


def attention_implementations() -> set[str]:
    """The attention kernels transformers knows by name."""
    return {"eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()} - {"paged|eager"}


def _matches(value, expected) -> bool:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(expected)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_name(expected) -> str:
    if typing.get_origin(expected) is not None:
        return str(expected).replace("typing.", "")
    return getattr(expected, "__name__", str(expected))


def pretrain_parser():
    """Pretraining's command line: ``--config YAML`` and ``--field value`` overrides (a ``TrlParser``)."""
    from trl import TrlParser

    return TrlParser(dataclass_types=[PretrainConfig])
