"""Linear layers with their weights packed for oneDNN, for inference on a CPU.

``nn.Linear`` multiplies through MKL's GEMM, which lays its weight out afresh at every call. oneDNN can lay a
weight out once, in the blocked format its kernels read (``torch.ops.mkldnn._reorder_linear_weight``), and
multiply against that ever after (``torch.ops.mkldnn._linear_pointwise``, what ``torch.compile`` freezes CPU
linear layers to). On 2 cores of an AMD EPYC, fp32, a 576 × 1536 layer streamed from memory: 0.21 ms against
0.51 at 16 rows (a decode step), 0.57 against 1.05 at 64, 4.4 against 5.9 at 512 (a prefill). A SmolLM2-135M
decode step of 16 sequences takes 50 ms against 104 (transposed weight copies), of 128 sequences 190 against 287
(``nn.Linear``), the greedy replies the same (``bench/packed_linear.py``).

:func:`packed_linears` gives each fp32 CPU linear layer a packed copy of its weight for the time of a generation
or scoring pass; the products are ``nn.Linear``'s up to fp32 rounding. Under gradients or autocast the layer's own
product runs. The copies take as much memory again as the layers' weights; where PyTorch has no oneDNN, nothing
changes.
"""

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def packing_available() -> bool:
    """Whether this PyTorch build multiplies through oneDNN on a CPU."""
    return torch.backends.mkldnn.is_available()


class _PackedForward:
    """``layer``'s forward against a oneDNN-packed copy of its weight, outside autograd and autocast."""

    def __init__(self, layer: nn.Linear):
        self.layer = layer
        self.packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if x.dtype != torch.float32 or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
            return nn.functional.linear(x, layer.weight, layer.bias)
        bias = None if layer.bias is None else layer.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, "none", [], "")


def _fits(layer: nn.Module) -> bool:
    weight = getattr(layer, "weight", None)
    return (type(layer) is nn.Linear and type(weight.data) is torch.Tensor and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and weight.numel() > 0 and "forward" not in vars(layer))


@contextlib.contextmanager
def packed_linears(model: nn.Module) -> Iterator[None]:
    """Inside, ``model``'s fp32 CPU linear layers multiply by a oneDNN-packed copy of their weights (module
    docstring); the weights must not change inside. Layers already given one are left as they are; on a GPU, for
    other layers, or without oneDNN, nothing changes."""
    given = [layer for layer in model.modules() if _fits(layer)] if packing_available() else []
    for layer in given:
        layer.forward = _PackedForward(layer)
    try:
        yield
    finally:
        for layer in given:
            vars(layer).pop("forward", None)


__all__ = ["packed_linears", "packing_available"]
