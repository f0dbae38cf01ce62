"""Saving what a TRL trainer trained: the whole weights however the run was sharded, LoRA adapters merged."""

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path

ADAPTER_DIR = "adapter"


def save_trained_model(trainer, output_dir: str, load_base: Callable | None = None) -> None:
    """Save the trained model and the trainer's tokenizer into ``output_dir`` with ``trainer.save_model``, which
    gathers the weights from every process under FSDP and ZeRO-3 (so every process must call this).

    A LoRA run passes ``load_base``, which builds its base model: the adapters are saved, then merged into the
    base on the main process, so ``output_dir`` holds a plain model."""
    if load_base is None:
        trainer.save_model(output_dir)
        return
    adapters = Path(output_dir) / ADAPTER_DIR
    trainer.save_model(str(adapters))
    if trainer.accelerator.is_main_process:
        from peft import PeftModel

        merged = PeftModel.from_pretrained(load_base(), adapters).merge_and_unload()
        merged.save_pretrained(output_dir)
        trainer.processing_class.save_pretrained(output_dir)
        shutil.rmtree(adapters)
    trainer.accelerator.wait_for_everyone()


@contextlib.contextmanager
def evaluated_on_main(trainer, auto_class, output_dir: str):
    """The model :func:`save_trained_model` wrote, loaded whole on the main process for evaluation inside (None
    on the others); the other processes wait for the main one to finish, so that none leaves while another still
    works."""
    trainer.accelerator.wait_for_everyone()
    yield auto_class.from_pretrained(output_dir) if trainer.accelerator.is_main_process else None
    trainer.accelerator.wait_for_everyone()
