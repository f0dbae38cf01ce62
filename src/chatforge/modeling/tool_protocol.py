"""ChatForge's tool protocol for a ChatML-style model (SmolLM2, Qwen, ...): the tool-call and tool-output tokens
added to its vocabulary and ChatForge's tool-aware template written in the model's own turn format. The engine
then runs its tools, and SFT teaches the model to call them.

The tokens that open and close a call start as copies of ``<|im_end|>`` (input embedding and output row): the
model stops its text at a call as it stops at the end of a turn, so SFT only has to tell the two apart. Started
at the mean of the embeddings instead, their logits sit far below the tokens the model already writes, and
AdamW's small steps barely move a row in a short SFT (SmolLM2-135M, 60 steps at 2e-4: no call made). The
tool-output tokens, which the model reads but never writes, start at the mean."""

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from ..io import atomic_directory
from ..tokenization.tokenization_chatforge import (
    IM_END,
    TOOL_CALL_END,
    TOOL_CALL_START,
    TOOL_OUTPUT_END,
    TOOL_OUTPUT_START,
)
from ..tokenization.turn_format import tool_chat_template
from .factory import load_tokenizer, set_generation_defaults

TOOL_TOKENS = (TOOL_CALL_START, TOOL_CALL_END, TOOL_OUTPUT_START, TOOL_OUTPUT_END)
#: The existing token whose embeddings a new token starts from (the others start at the mean).
STARTS_AS = {TOOL_CALL_START: IM_END, TOOL_CALL_END: IM_END}


def add_tool_protocol(model, tokenizer) -> list[str]:
    """Give ``model`` and ``tokenizer`` the tool tokens they lack and the tool-aware chat template (checked first,
    see :func:`~chatforge.tokenization.turn_format.tool_chat_template`); the tokens added."""
    template = tool_chat_template(tokenizer)
    missing = [token for token in TOOL_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        _start_as_existing_tokens(model, tokenizer, [token for token in missing if token in STARTS_AS])
    tokenizer.chat_template = template
    set_generation_defaults(model, tokenizer)
    return missing


@torch.no_grad()
def _start_as_existing_tokens(model, tokenizer, tokens: list[str]) -> None:
    """Copy the embedding (and output row, where the head is not tied) of each token's :data:`STARTS_AS`."""
    matrices = {id(matrix): matrix for matrix in (model.get_input_embeddings().weight,
                                                  getattr(model.get_output_embeddings(), "weight", None))
                if matrix is not None}
    for token in tokens:
        new, existing = tokenizer.convert_tokens_to_ids([token, STARTS_AS[token]])
        for matrix in matrices.values():
            matrix[new] = matrix[existing]


def write_with_tool_protocol(model_dir: str | Path, output_dir: str | Path) -> list[str]:
    """The model folder ``model_dir`` written to ``output_dir`` with the tool protocol; the tokens added."""
    tokenizer = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    added = add_tool_protocol(model, tokenizer)
    with atomic_directory(output_dir) as tmp_dir:
        model.save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
    return added


__all__ = ["STARTS_AS", "TOOL_TOKENS", "add_tool_protocol", "write_with_tool_protocol"]
