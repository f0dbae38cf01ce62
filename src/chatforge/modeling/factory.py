"""Build ChatForge models that match a tokenizer."""

from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoTokenizer, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import InvalidValue, MissingInput
from ..io import will_exist
from .configuration_chatforge import PRESETS, ChatForgeConfig

STOP_TOKENS = ("<|endoftext|>", "<|im_end|>")


def config_for_tokenizer(
    tokenizer: PreTrainedTokenizerBase, preset: str = "tiny", pad_vocab_to_multiple_of: int = 64, **overrides
) -> ChatForgeConfig:
    """A preset's configuration with the vocabulary and special token ids of ``tokenizer``.

    The vocabulary is rounded up to a multiple of ``pad_vocab_to_multiple_of`` (faster matmuls).
    """
    if preset not in PRESETS:
        raise InvalidValue(f"Unknown ChatForge preset {preset!r}; choose one of {sorted(PRESETS)}.")
    vocab_size = -(-len(tokenizer) // pad_vocab_to_multiple_of) * pad_vocab_to_multiple_of
    fields = {
        **PRESETS[preset],
        "vocab_size": vocab_size,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **overrides,
    }
    if fields["vocab_size"] < len(tokenizer):
        raise InvalidValue(f"vocab_size={fields['vocab_size']} is smaller than the tokenizer's {len(tokenizer)} tokens")
    try:
        return ChatForgeConfig(**fields)
    except ValueError as error:  # the configuration's own checks (its module imports nothing of chatforge's)
        raise InvalidValue(str(error)) from error


def set_generation_defaults(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """Stop generation at end-of-text and at the end of a chat turn; pad with the tokenizer's pad token."""
    stop_ids = [tokenizer.convert_tokens_to_ids(token) for token in STOP_TOKENS if token in tokenizer.get_vocab()]
    model.generation_config.eos_token_id = stop_ids or tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model.generation_config


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder or Hub id, padding with its end-of-text token where it has no pad token
    (batched training and generation need one)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def local_folder(name_or_path: str) -> str | None:
    """``name_or_path`` where it is a local folder (not a Hub id), else None."""
    return name_or_path if Path(name_or_path).is_dir() else None


def require_model(field: str, name_or_path: str) -> None:
    """Raise :class:`~chatforge.errors.MissingInput` where the setting ``field`` names a local model folder that
    is not there: a path that cannot be a Hub id, or one inside a local folder (``runs/sft`` where ``runs/`` is);
    a Hub id, ``org/name``, is left to be downloaded."""
    path = Path(name_or_path)
    if will_exist(path):
        return
    try:
        validate_repo_id(name_or_path)
        local = path.parent.is_dir() and path.parent != Path(".")
    except HFValidationError:
        local = True
    if local:
        raise MissingInput(field, name_or_path, "model")
