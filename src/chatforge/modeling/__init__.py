"""The ChatForge Transformer, its configuration and size/compute helpers."""

from .compute import estimate_mfu, flops_per_token, num_parameters, peak_bf16_flops
from .configuration_chatforge import PRESETS, ChatForgeConfig
from .document_attention import NAME as DOCUMENT_ATTENTION
from .factory import config_for_tokenizer, set_generation_defaults
from .modeling_chatforge import (
    ChatForgeForCausalLM,
    ChatForgeForSequenceClassification,
    ChatForgeModel,
    ChatForgePreTrainedModel,
)

__all__ = [
    "DOCUMENT_ATTENTION",
    "PRESETS",
    "ChatForgeConfig",
    "ChatForgeForCausalLM",
    "ChatForgeForSequenceClassification",
    "ChatForgeModel",
    "ChatForgePreTrainedModel",
    "config_for_tokenizer",
    "estimate_mfu",
    "flops_per_token",
    "num_parameters",
    "peak_bf16_flops",
    "set_generation_defaults",
]
