"""The core demo: train a tokenizer and a tiny ChatForge model on real text, then sample from it.

Uses transformers' Trainer with :class:`DataCollatorForPackedPretraining`, so it also shows the model,
tokenizer and collator working with the stock Hugging Face machinery.
"""

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainingArguments, set_seed

from ..data import EMBEDDED_WIKIPEDIA, DataCollatorForPackedPretraining, iter_documents
from ..eval import unigram_cross_entropy
from ..inference import sample_continuations
from ..io import atomic_directory, atomic_write_text
from ..modeling import (
    ChatForgeForCausalLM,
    config_for_tokenizer,
    num_parameters,
    set_generation_defaults,
)
from ..tokenization import bytes_per_token, train_tokenizer
from .precision import fit_precision

DEMO_PROMPTS = ("The city of", "In 1990, the", "He was born in")


@dataclass
class DemoConfig:
    """Settings of the core demo; the defaults take a few minutes on a 2-core CPU."""

    output_dir: str = "runs/core-demo"
    sources: tuple[str, ...] = (str(EMBEDDED_WIKIPEDIA),)
    vocab_size: int = 4096
    seq_len: int = 128
    max_steps: int = 300
    per_device_train_batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    validation_fraction: float = 0.1
    bf16: bool = True
    seed: int = 0


def split_documents(documents: list[str], validation_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded shuffle, then the last ``validation_fraction`` of documents held out."""
    shuffled = documents[:]
    random.Random(seed).shuffle(shuffled)
    n_val = max(1, int(len(shuffled) * validation_fraction))
    return shuffled[:-n_val], shuffled[-n_val:]


def _token_counts(documents: list[list[int]], vocab_size: int) -> np.ndarray:
    return np.bincount([token for doc in documents for token in doc], minlength=vocab_size)


def run_core_demo(config: DemoConfig) -> dict:
    """Train tokenizer + tiny model, report held-out loss before/after against a unigram baseline."""
    start = time.perf_counter()
    set_seed(config.seed)
    output = Path(config.output_dir)
    documents = [doc for doc in iter_documents(config.sources) if doc.strip()]
    train_docs, val_docs = split_documents(documents, config.validation_fraction, config.seed)

    tokenizer = train_tokenizer(train_docs, config.vocab_size)
    train_ids = [tokenizer.encode(doc, add_special_tokens=False) for doc in train_docs]
    val_ids = [tokenizer.encode(doc, add_special_tokens=False) for doc in val_docs]

    model = ChatForgeForCausalLM(config_for_tokenizer(tokenizer, "tiny", max_position_embeddings=config.seq_len))
    set_generation_defaults(model, tokenizer)
    collator = DataCollatorForPackedPretraining(tokenizer.eos_token_id, tokenizer.pad_token_id, config.seq_len)
    args = TrainingArguments(
        output_dir=str(output / "trainer"),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=64,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type="cosine",
        weight_decay=0.1,
        max_grad_norm=1.0,
        logging_steps=max(1, config.max_steps // 10),
        save_strategy="no",
        report_to=[],
        bf16=config.bf16,
        use_cpu=not torch.cuda.is_available(),
        seed=config.seed,
        dataloader_drop_last=True,
    )
    fit_precision(args)
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=[{"input_ids": ids} for ids in train_ids],
        eval_dataset=[{"input_ids": ids} for ids in val_ids],
    )
    val_loss_before = trainer.evaluate()["eval_loss"]
    trainer.train()
    val_loss_after = trainer.evaluate()["eval_loss"]

    with atomic_directory(output / "model") as tmp_dir:
        model.save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
    summary = {
        "parameters": num_parameters(model),
        "train_tokens": sum(map(len, train_ids)),
        "bytes_per_token": round(bytes_per_token(tokenizer, val_docs), 3),
        "val_loss_before": val_loss_before,
        "val_loss_after": val_loss_after,
        "unigram_val_loss": unigram_cross_entropy(_token_counts(train_ids, len(tokenizer)),
                                                  _token_counts(val_ids, len(tokenizer))),
        "samples": sample_continuations(model, tokenizer, DEMO_PROMPTS, max_new_tokens=30, seed=config.seed),
        "seconds": round(time.perf_counter() - start, 1),
        "model_dir": str(output / "model"),
        "config": asdict(config),
    }
    atomic_write_text(output / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    return summary
