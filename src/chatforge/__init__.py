"""chatforge: from web pages to a ChatGPT-style assistant on the Hugging Face stack.

Importing the package registers the ChatForge model and tokenizer with transformers' Auto classes, and turns off
transformers' Hub kernels unless ``USE_HUB_KERNELS`` is set: otherwise every model put on a GPU and switched
between ``train()`` and ``eval()`` swaps layers (SiLU, RMSNorm, rotary) for kernels downloaded from the Hub, which
fails without a network and changes the numbers a run measures. ``USE_HUB_KERNELS=YES`` turns them back on.
"""

import os

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from .modeling import (
    ChatForgeConfig,
    ChatForgeForCausalLM,
    ChatForgeForSequenceClassification,
    ChatForgeModel,
)
from .tokenization import ChatForgeTokenizer

__version__ = "0.1.0"

os.environ.setdefault("USE_HUB_KERNELS", "NO")


def _register_with_transformers() -> None:
    AutoConfig.register(ChatForgeConfig.model_type, ChatForgeConfig, exist_ok=True)
    AutoModel.register(ChatForgeConfig, ChatForgeModel, exist_ok=True)
    AutoModelForCausalLM.register(ChatForgeConfig, ChatForgeForCausalLM, exist_ok=True)
    AutoModelForSequenceClassification.register(ChatForgeConfig, ChatForgeForSequenceClassification, exist_ok=True)
    AutoTokenizer.register(ChatForgeConfig, tokenizer_class=ChatForgeTokenizer, exist_ok=True)
    # Saved folders then carry auto_map and these classes' source files (trust_remote_code loading).
    ChatForgeConfig.register_for_auto_class()
    ChatForgeModel.register_for_auto_class("AutoModel")
    ChatForgeForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    ChatForgeForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
    ChatForgeTokenizer.register_for_auto_class("AutoTokenizer")


_register_with_transformers()

__all__ = [
    "ChatForgeConfig",
    "ChatForgeForCausalLM",
    "ChatForgeForSequenceClassification",
    "ChatForgeModel",
    "ChatForgeTokenizer",
    "__version__",
]
