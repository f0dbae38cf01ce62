"""Model size and compute: parameter counts, training FLOPs per token, model FLOPs utilisation."""

from torch import nn

from ..errors import InvalidValue
from .configuration_chatforge import ChatForgeConfig


def num_parameters(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Number of distinct parameters (tied weights counted once), optionally without input embeddings."""
    params = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in params.values())
    if exclude_embeddings:
        embeddings = model.get_input_embeddings().weight
        output = model.get_output_embeddings()
        tied = output is not None and output.weight is embeddings
        if not tied:
            total -= embeddings.numel()
    return total


def flops_per_token(config: ChatForgeConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token, PaLM appendix B style.

    ``6 * N`` for the matmul parameters (input embedding lookups excluded, output head included)
    plus ``12 * L * d * T`` for the attention scores and weighted sums over a ``seq_len`` window.
    """
    d, layers = config.hidden_size, config.num_hidden_layers
    kv_width = config.num_key_value_heads * config.head_dim
    mlp_matrices = 3 if config.gated_mlp else 2
    per_layer = 2 * d * d + 2 * d * kv_width + mlp_matrices * d * config.intermediate_size
    matmul_params = layers * per_layer + d * config.vocab_size
    return 6.0 * matmul_params + 12.0 * layers * d * seq_len


#: Dense bf16 peak FLOP/s of common accelerators, by their exact device name (``torch.cuda.get_device_name()``):
#: variants of one chip differ (H100 SXM 989 TFLOP/s, PCIe 756), and a substring would also match others ("L4"
#: in "L40S").
PEAK_BF16_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989e12,  # SXM5
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H200": 989e12,  # SXM
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA L4": 121e12,
}


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a known accelerator, or None (no MFU rather than a wrong one)."""
    return PEAK_BF16_FLOPS.get(device_name.strip())


def estimate_mfu(config: ChatForgeConfig, seq_len: int, tokens_per_second: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak FLOP/s."""
    if peak_flops <= 0:
        raise InvalidValue(f"peak_flops must be positive, got {peak_flops}")
    return flops_per_token(config, seq_len) * tokens_per_second / peak_flops
