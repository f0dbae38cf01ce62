"""Byte-level BPE training, the ChatForge tokenizer and its chat format, and a token viewer."""

from .tokenization_chatforge import (
    CHAT_ROLES,
    CHAT_TEMPLATE,
    RESPONSE_TEMPLATE,
    SPECIAL_TOKENS,
    ChatForgeTokenizer,
)
from .training import (
    GPT4_SPLIT_PATTERN,
    bytes_per_token,
    train_tokenizer,
    train_tokenizer_from_sources,
)
from .visualize import render_tokens, token_pieces

__all__ = [
    "CHAT_ROLES",
    "CHAT_TEMPLATE",
    "GPT4_SPLIT_PATTERN",
    "RESPONSE_TEMPLATE",
    "SPECIAL_TOKENS",
    "ChatForgeTokenizer",
    "bytes_per_token",
    "render_tokens",
    "token_pieces",
    "train_tokenizer",
    "train_tokenizer_from_sources",
]
