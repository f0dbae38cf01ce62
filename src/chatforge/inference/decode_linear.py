"""Linear layers fit for decoding a few sequences at a time on a CPU.

A decode step multiplies one token of each sequence by every weight matrix: an fp32 ``x @ W.T`` of a few dozen
rows. For that shape MKL's GEMM reading ``W`` transposed in place (what ``nn.Linear`` asks for) runs 2-4x slower
than the same product against a contiguous copy of ``W.T``; from about 64 rows on, and for prefill, the two run
alike. :func:`transposed_linears` gives each linear layer such a copy for the time of a generation and uses it for
inputs of at most :data:`MAX_ROWS` rows: a SmolLM2-135M decode step of 16 sequences in about 60% of the time
(``bench/decode_linear.py``). The products are the same up to fp32 rounding. Only where it pays: CPU weights in
fp32, no gradients, no autocast; the copies take as much memory again as the layers' weights.
"""

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

#: Inputs of more rows (prefill, large batches) run through ``nn.Linear`` as they are.
MAX_ROWS = 48


class _TransposedForward:
    """``layer``'s forward with a contiguous transposed copy of its weight, for inputs of a few rows."""

    def __init__(self, layer: nn.Linear):
        self.layer = layer
        self.transposed = layer.weight.detach().t().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if x.numel() > MAX_ROWS * x.shape[-1] or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
            return nn.functional.linear(x, layer.weight, layer.bias)
        out = torch.matmul(x, self.transposed)
        return out if layer.bias is None else out + layer.bias


def _fits(layer: nn.Module) -> bool:
    weight = getattr(layer, "weight", None)
    return (type(layer) is nn.Linear and type(weight.data) is torch.Tensor and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and weight.numel() > 0 and "forward" not in vars(layer))


@contextlib.contextmanager
def transposed_linears(model: nn.Module) -> Iterator[None]:
    """Inside, ``model``'s fp32 CPU linear layers multiply inputs of a few rows by a transposed copy of their
    weights (module docstring); the weights must not change inside. Layers already given one are left as they
    are; on a GPU, or for other layers, nothing changes."""
    given = [layer for layer in model.modules() if _fits(layer)]
    for layer in given:
        layer.forward = _TransposedForward(layer)
    try:
        yield
    finally:
        for layer in given:
            vars(layer).pop("forward", None)


__all__ = ["MAX_ROWS", "transposed_linears"]
