"""ChatForge model configuration.

This file is copied next to saved checkpoints (``auto_map``), so it imports nothing but transformers.
"""

from transformers import PreTrainedConfig

PRESETS: dict[str, dict] = {
    # ~4M parameters with a 4k vocabulary: trains on a laptop CPU in minutes.
    "tiny": dict(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    ),
    # GPT-2 small shape (124M with GPT-2's 50k vocabulary), modernised: RoPE, RMSNorm, SwiGLU.
    "gpt2-124m": dict(
        vocab_size=50304,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    ),
}

_POSITIVE_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
)
_SPECIAL_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


class ChatForgeConfig(PreTrainedConfig):
    r"""Configuration of a ChatForge decoder-only Transformer.

    Field names follow [`LlamaConfig`]; ``ChatForgeConfig()`` is the ``tiny`` preset and
    ``ChatForgeConfig.from_preset("gpt2-124m", vocab_size=...)`` builds the others.

    Args:
        vocab_size: Number of token ids, special tokens included.
        hidden_size: Width of the residual stream.
        intermediate_size: Width of the MLP's hidden layer.
        num_hidden_layers: Number of decoder blocks.
        num_attention_heads: Number of query heads.
        num_key_value_heads: Number of key/value heads (grouped-query attention); must divide
            ``num_attention_heads``. ``None`` means multi-head attention.
        hidden_act: MLP activation, any name of ``transformers.activations.ACT2FN`` (``"silu"``, ``"relu2"``...).
        gated_mlp: ``True`` for a gated MLP (SwiGLU with ``silu``), ``False`` for a plain one (ReLU² with ``relu2``).
        qk_norm: Apply RMSNorm to queries and keys of every head before RoPE.
        max_position_embeddings: Longest sequence the model is meant for.
        rope_theta: Base period of the rotary position embeddings.
        rms_norm_eps: Epsilon of every RMSNorm.
        initializer_range: Standard deviation of the normal weight initialisation; residual output
            projections are scaled down by ``sqrt(2 * num_hidden_layers)``.
        attention_dropout: Dropout on attention probabilities during training.
        tie_word_embeddings: Share the input embedding matrix with the output head.
        use_cache: Return a KV cache from forward passes.
    """

    model_type = "chatforge"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = 2
    hidden_act: str = "silu"
    gated_mlp: bool = True
    qk_norm: bool = False
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    attention_dropout: float = 0.0
    use_cache: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self._check_fields()
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ChatForgeConfig":
        """Build the configuration of a named preset (``tiny``, ``gpt2-124m``), fields overridable."""
        if name not in PRESETS:
            raise ValueError(f"Unknown ChatForge preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    def _check_fields(self) -> None:
        def fail(field: str, why: str):
            raise ValueError(f"ChatForgeConfig.{field}={getattr(self, field)!r}: {why}")

        for field in _POSITIVE_INT_FIELDS:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                fail(field, "must be a positive integer")
        if self.hidden_size % self.num_attention_heads:
            fail("num_attention_heads", f"must divide hidden_size={self.hidden_size}")
        if self.head_dim % 2:
            fail("num_attention_heads", f"gives an odd head size {self.head_dim}; rotary embeddings need an even one")
        if self.num_attention_heads % self.num_key_value_heads:
            fail("num_key_value_heads", f"must divide num_attention_heads={self.num_attention_heads}")
        if self.rope_theta <= 0:
            fail("rope_theta", "must be positive")
        if self.rms_norm_eps <= 0:
            fail("rms_norm_eps", "must be positive")
        if not 0.0 <= self.attention_dropout < 1.0:
            fail("attention_dropout", "must be in [0, 1)")
        for field in _SPECIAL_TOKEN_FIELDS:
            ids = getattr(self, field)
            for token_id in ids if isinstance(ids, list) else [ids]:
                if token_id is not None and not 0 <= token_id < self.vocab_size:
                    fail(field, f"is outside the vocabulary (vocab_size={self.vocab_size}); "
                         "vocab_size must cover every special token")


__all__ = ["ChatForgeConfig", "PRESETS"]
