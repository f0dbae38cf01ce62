"""ChatForge's tool protocol for a ChatML-style model (SmolLM2, Qwen, ...): the tool-call and tool-output tokens
added to its vocabulary (embeddings initialised at the mean of the others) and ChatForge's tool-aware template
written in the model's own turn format. The engine then runs its tools, and SFT teaches the model to call them."""

from pathlib import Path

from transformers import AutoModelForCausalLM

from ..io import atomic_directory
from ..tokenization.tokenization_chatforge import TOOL_CALL_END, TOOL_CALL_START, TOOL_OUTPUT_END, TOOL_OUTPUT_START
from ..tokenization.turn_format import tool_chat_template
from .factory import load_tokenizer, set_generation_defaults

TOOL_TOKENS = (TOOL_CALL_START, TOOL_CALL_END, TOOL_OUTPUT_START, TOOL_OUTPUT_END)


def add_tool_protocol(model, tokenizer) -> list[str]:
    """Give ``model`` and ``tokenizer`` the tool tokens they lack and the tool-aware chat template (checked first,
    see :func:`~chatforge.tokenization.turn_format.tool_chat_template`); the tokens added."""
    template = tool_chat_template(tokenizer)
    missing = [token for token in TOOL_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    tokenizer.chat_template = template
    set_generation_defaults(model, tokenizer)
    return missing


def write_with_tool_protocol(model_dir: str | Path, output_dir: str | Path) -> list[str]:
    """The model folder ``model_dir`` written to ``output_dir`` with the tool protocol; the tokens added."""
    tokenizer = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    added = add_tool_protocol(model, tokenizer)
    with atomic_directory(output_dir) as tmp_dir:
        model.save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
    return added


__all__ = ["TOOL_TOKENS", "add_tool_protocol", "write_with_tool_protocol"]
