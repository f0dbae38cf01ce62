"""Optimizers of pretraining: AdamW, or Muon for the hidden matrices with AdamW for the rest."""

import warnings

import torch
from torch import nn

from .config import PretrainConfig
from .precision import cpu_bf16_is_slow


class ChainedOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped as one; their parameter groups are shared, so one LR scheduler drives all."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        super().__init__([group for optimizer in optimizers for group in optimizer.param_groups], {})
        self.param_groups = [group for optimizer in optimizers for group in optimizer.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for optimizer, state in zip(self.optimizers, state_dict["optimizers"], strict=True):
            optimizer.load_state_dict(state)


def adamw_runs_fused(device: torch.device) -> bool:
    """Whether torch's AdamW runs fused (one kernel for all its tensors) for a model on ``device``: on CUDA and on
    CPUs, where torch's default updates one tensor at a time in several passes (3-4x slower for the tiny model)."""
    return device.type in ("cuda", "cpu")


def _adamw(groups: list[dict], config: PretrainConfig, fused: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                             fused=fused)


def build_optimizer(model: nn.Module, config: PretrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """``optim: adamw``: AdamW with weight decay on matrices only. ``optim: muon``: Muon (``muon_learning_rate``)
    for the 2-D weights inside the decoder blocks, AdamW for embeddings, output head, norms and biases; AdamW fused
    where :func:`adamw_runs_fused` says so for ``device``, where the model will train. torch's Muon orthogonalises
    in bf16: on a CPU that emulates bf16, a warning says Muon is slow there."""
    fused = adamw_runs_fused(device)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if config.optim == "adamw":
        return _adamw([{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": config.weight_decay},
                       {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}], config, fused)
    embeddings = {id(model.get_input_embeddings().weight)}
    if model.get_output_embeddings() is not None:
        embeddings.add(id(model.get_output_embeddings().weight))
    hidden = [p for _, p in named if p.dim() == 2 and id(p) not in embeddings]
    hidden_ids = {id(p) for p in hidden}
    if hidden and device.type == "cpu" and cpu_bf16_is_slow():
        warnings.warn("optim=muon: torch's Muon orthogonalises every update in bf16, which this CPU emulates many "
                      "times slower than fp32; expect steps several times slower than with adamw", stacklevel=2)
    rest = [p for _, p in named if id(p) not in hidden_ids]
    muon = torch.optim.Muon(hidden, lr=config.muon_learning_rate, weight_decay=config.weight_decay,
                            adjust_lr_fn="match_rms_adamw")
    adamw = _adamw([{"params": [p for p in rest if p.dim() >= 2], "weight_decay": config.weight_decay},
                    {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}], config, fused)
    return ChainedOptimizer([muon, adamw])
