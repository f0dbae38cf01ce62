"""Saving what a TRL trainer trained (the whole weights however the run was sharded, LoRA adapters merged), and
evaluating a stage's model before and after training once per run, on the main process and its device."""

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


def interpolate_with_start(accelerator, output_dir: str, load_start: Callable, share: float) -> None:
    """Weight-space interpolation with the starting model (WiSE-FT): the model saved in ``output_dir`` becomes
    ``share`` of its own weights plus ``1 - share`` of ``load_start()``'s, which gives back part of what training
    overwrote (facts it knew) while keeping most of what it taught. On the main process; every process calls this."""
    if accelerator.is_main_process:
        import torch
        from transformers import AutoModelForCausalLM

        trained = AutoModelForCausalLM.from_pretrained(output_dir)
        start = load_start().state_dict()
        trained.load_state_dict({name: start[name].to(torch.float32).lerp(weight.to(torch.float32), share).to(
            weight.dtype) for name, weight in trained.state_dict().items()})
        trained.save_pretrained(output_dir)
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def evaluated_on_main(trainer, auto_class, output_dir: str):
    """The model :func:`save_trained_model` wrote, loaded whole on the main process for evaluation inside (None
    on the others); the other processes wait for the main one to finish, so that none leaves while another still
    works."""
    trainer.accelerator.wait_for_everyone()
    yield auto_class.from_pretrained(output_dir) if trainer.accelerator.is_main_process else None
    trainer.accelerator.wait_for_everyone()


def evaluated_before_training(model, evaluate: Callable[[], dict]) -> dict | None:
    """``evaluate()`` of the freshly loaded ``model``, moved to this process's device, on the main process only
    (the others wait, and get None): one evaluation per run, on the accelerator, not one per process on the
    CPU."""
    from accelerate import PartialState

    state = PartialState()
    figures = None
    if state.is_main_process:
        print(f"evaluating the model before training on process {state.process_index} of {state.num_processes} "
              f"({state.device})", flush=True)
        model.to(state.device)
        figures = evaluate()
    state.wait_for_everyone()
    return figures
