import pytest

from chatforge.modeling import (
    PRESETS,
    ChatForgeConfig,
    ChatForgeForCausalLM,
    config_for_tokenizer,
    estimate_mfu,
    flops_per_token,
    num_parameters,
    peak_bf16_flops,
)


def test_default_config_is_the_tiny_preset():
    default = ChatForgeConfig()
    tiny = ChatForgeConfig.from_preset("tiny")
    for field, value in PRESETS["tiny"].items():
        assert getattr(default, field) == value == getattr(tiny, field)


def test_preset_sizes():
    tiny = num_parameters(ChatForgeForCausalLM(ChatForgeConfig()))
    assert 1e6 <= tiny <= 5e6
    gpt2 = ChatForgeConfig.from_preset("gpt2-124m")
    assert (gpt2.num_hidden_layers, gpt2.hidden_size, gpt2.num_attention_heads) == (12, 768, 12)
    assert gpt2.max_position_embeddings == 1024 and 50_000 <= gpt2.vocab_size <= 51_000
    # Count without building the 124M model: embeddings (tied) + 12 blocks + final norm.
    d, f = gpt2.hidden_size, gpt2.intermediate_size
    per_block = 4 * d * d + 3 * d * f + 2 * d
    assert gpt2.vocab_size * d + 12 * per_block + d == pytest.approx(124e6, rel=0.01)


@pytest.mark.parametrize("fields, message", [
    (dict(hidden_size=-256), "ChatForgeConfig.hidden_size=-256: must be a positive integer"),
    (dict(num_hidden_layers=0), "ChatForgeConfig.num_hidden_layers=0: must be a positive integer"),
    (dict(vocab_size=2.5), "ChatForgeConfig.vocab_size=2.5: must be a positive integer"),
    (dict(num_attention_heads=5), "ChatForgeConfig.num_attention_heads=5: must divide hidden_size=256"),
    (dict(num_key_value_heads=3), "ChatForgeConfig.num_key_value_heads=3: must divide num_attention_heads=4"),
    (dict(hidden_size=12, num_attention_heads=4, num_key_value_heads=4),
     "ChatForgeConfig.num_attention_heads=4: gives an odd head size 3"),
    (dict(vocab_size=4, pad_token_id=4), "ChatForgeConfig.pad_token_id=4: is outside the vocabulary"),
    (dict(rope_theta=0.0), "ChatForgeConfig.rope_theta=0.0: must be positive"),
])
def test_bad_fields_raise_one_clear_error_naming_the_field(fields, message):
    with pytest.raises(ValueError) as error:
        ChatForgeConfig(**fields)
    assert str(error.value).startswith(message)


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="Unknown ChatForge preset 'gpt5'"):
        ChatForgeConfig.from_preset("gpt5")


def test_config_for_tokenizer_covers_the_vocabulary(tokenizer):
    config = config_for_tokenizer(tokenizer)
    assert config.vocab_size == 1024 and config.eos_token_id == 0 and config.pad_token_id == 4
    with pytest.raises(ValueError, match="vocab_size=512 is smaller than the tokenizer's 1024 tokens"):
        config_for_tokenizer(tokenizer, vocab_size=512)


def test_config_round_trips_through_json(tmp_path):
    config = ChatForgeConfig(qk_norm=True, gated_mlp=False, hidden_act="relu2", num_key_value_heads=1)
    config.save_pretrained(tmp_path)
    loaded = ChatForgeConfig.from_pretrained(tmp_path)
    fields = (loaded.qk_norm, loaded.gated_mlp, loaded.hidden_act, loaded.num_key_value_heads)
    assert fields == (True, False, "relu2", 1)


def test_flops_per_token_is_six_n_plus_attention():
    config = ChatForgeConfig.from_preset("gpt2-124m")
    model_matmul_params = 12 * (4 * 768 * 768 + 3 * 768 * 2048) + 768 * config.vocab_size
    assert flops_per_token(config, 1024) == 6 * model_matmul_params + 12 * 12 * 768 * 1024
    # 100k tokens/s at that cost on a 1 PFLOP/s chip
    assert estimate_mfu(config, 1024, 1e5, 1e15) == pytest.approx(flops_per_token(config, 1024) * 1e5 / 1e15)
    with pytest.raises(ValueError):
        estimate_mfu(config, 1024, 1e5, 0)


def test_mfu_peaks_match_exact_device_names():
    """Variants of one chip have different peaks, and one name may contain another ("L4" in "L40S"): an unknown
    device gets no peak (no MFU) rather than a wrong one."""
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA L4") == 121e12
    for unknown in ("NVIDIA L40S", "NVIDIA L40", "NVIDIA H100 NVL", "NVIDIA H200 NVL", "NVIDIA GeForce RTX 4090"):
        assert peak_bf16_flops(unknown) is None, unknown
