"""Whole model and optimizer states however Accelerate shards a run (DDP, FSDP2, DeepSpeed ZeRO): checkpoints
hold whole tensors, written by the main process, so a run resumes on any number of processes.

Every process must call the functions that gather (:func:`optimizer_state`, and Accelerate's
``get_state_dict`` for the weights): under FSDP and ZeRO-3 each holds only its part.
"""

import contextlib
import os
import warnings

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, InitProcessGroupKwargs
from transformers import PreTrainedModel


def fresh_accelerator(**kwargs) -> Accelerator:
    """An ``Accelerator`` with this run's own settings: an earlier Accelerator or Trainer in this process fixed
    the mixed precision, and Accelerate refuses a different one. The distributed set-up (``PartialState``) is
    kept."""
    AcceleratorState._reset_state()
    if not torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        # DeepSpeed over CPU processes: Accelerate sets up their process group only when given its backend
        kwargs.setdefault("kwargs_handlers", [InitProcessGroupKwargs(backend="gloo")])
    return Accelerator(**kwargs)


def fill_deepspeed_config(accelerator: Accelerator, micro_batch: int, accumulation: int, max_grad_norm: float) -> None:
    """Under DeepSpeed, give its config what a loop without a dataloader decides itself: rows per micro-batch and
    accumulation steps (this run's, whatever the config says), clipping where it is ``auto``; let ZeRO take this
    project's own optimizers, and ZeRO-3 gather whole weights for checkpoints."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    config = plugin.deepspeed_config
    config.update(train_micro_batch_size_per_gpu=micro_batch, gradient_accumulation_steps=accumulation,
                  train_batch_size=micro_batch * accumulation * accelerator.num_processes)
    if config.get("gradient_clipping", "auto") == "auto":
        config["gradient_clipping"] = max_grad_norm
    config.setdefault("zero_allow_untested_optimizer", True)
    if plugin.zero_stage == 3:  # checkpoints hold whole weights, gathered from the shards
        config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True


def sharding(accelerator: Accelerator) -> str:
    """How the run is split over its processes, for the log: ``DeepSpeed ZeRO-3``, ``FSDP``, ``MULTI_CPU``, ..."""
    plugin = accelerator.state.deepspeed_plugin
    if accelerator.distributed_type == DistributedType.DEEPSPEED and plugin is not None:
        return f"DeepSpeed ZeRO-{plugin.zero_stage}"
    return accelerator.distributed_type.value


def parameters_sharded(accelerator: Accelerator) -> bool:
    """Whether each process holds only part of the parameters (FSDP, ZeRO-3): then every process takes part in
    each forward pass, generation included."""
    return accelerator.distributed_type == DistributedType.FSDP or deepspeed_zero3(accelerator)


def deepspeed_zero3(accelerator: Accelerator) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions the parameters: a weight is whole only inside its own module's
    forward."""
    plugin = accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


@contextlib.contextmanager
def root_parameters_gathered(module):
    """Under FSDP2, ``module``'s own parameters (those outside its separately sharded submodules) all-gathered
    inside, for calls that bypass its forward (a submodule's ``generate``); resharded after."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        yield module
        return
    module.unshard()
    try:
        yield module
    finally:
        module.reshard()


def without_tied_copies(model, state: dict) -> dict:
    """``state`` less the weights that ``model`` ties to another one (a gather from shards returns them as
    separate copies, which ``save_pretrained`` would write twice)."""
    tied = model.get_expanded_tied_weights_keys() if isinstance(model, PreTrainedModel) else {}
    return {name: tensor for name, tensor in state.items() if name not in tied}


def model_state(accelerator: Accelerator, model) -> dict:
    """The model's whole state dict, on the main process (every process must call this; under ZeRO-3 the other
    processes get an empty one)."""
    return without_tied_copies(accelerator.unwrap_model(model), accelerator.get_state_dict(model) or {})


def _torch_optimizers(optimizer) -> list[torch.optim.Optimizer]:
    inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps it
    return list(getattr(inner, "optimizers", [inner]))  # a ChainedOptimizer (Muon + AdamW) holds several


def _full_state_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # whole tensors, gathered on the main process's CPU where there are several processes
    return StateDictOptions(full_state_dict=True, cpu_offload=torch.distributed.is_initialized())


def optimizer_state(accelerator: Accelerator, model, optimizer) -> dict | None:
    """The optimizer's whole state, keyed by parameter name whatever the sharding (on the main process where
    there are several; every process must call this); None under DeepSpeed, whose ZeRO optimizer keeps its
    partitions to itself."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return None
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(accelerator.unwrap_model(model), _torch_optimizers(optimizer),
                                    options=_full_state_options())


def load_optimizer_state(accelerator: Accelerator, model, optimizer, state: dict | None, where: str) -> None:
    """Load what :func:`optimizer_state` saved, on any number of processes (every process, after ``prepare``);
    a warning names ``where`` when there is no state to load."""
    if state is None:
        warnings.warn(f"{where}: no optimizer state (DeepSpeed keeps it split over the processes); the optimizer "
                      "starts afresh from the checkpoint's weights", stacklevel=2)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(accelerator.unwrap_model(model), _torch_optimizers(optimizer), state,
                             options=StateDictOptions(full_state_dict=True))
