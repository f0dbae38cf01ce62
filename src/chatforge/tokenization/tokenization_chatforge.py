"""The ChatForge tokenizer: byte-level BPE with GPT-4-style pre-splitting and a chat format.

A chat renders as ``<|im_start|>role<|im_sep|>content<|im_end|>`` per message, with no separator
between messages. This file is copied next to saved tokenizers (``auto_map``), so it imports
nothing but transformers.
"""

from transformers import PreTrainedTokenizerFast

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_SEP = "<|im_sep|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
TOOL_CALL_START = "<|tool_call_start|>"
TOOL_CALL_END = "<|tool_call_end|>"
TOOL_OUTPUT_START = "<|tool_output_start|>"
TOOL_OUTPUT_END = "<|tool_output_end|>"

#: Every special token, in id order (they take ids 0..len-1 in a trained vocabulary).
SPECIAL_TOKENS = [
    ENDOFTEXT,
    IM_START,
    IM_SEP,
    IM_END,
    PAD,
    TOOL_CALL_START,
    TOOL_CALL_END,
    TOOL_OUTPUT_START,
    TOOL_OUTPUT_END,
]

CHAT_ROLES = ("system", "user", "assistant", "tool")

#: Jinja chat template; ``{% generation %}`` marks the tokens an assistant-only loss trains on: the
#: assistant's text and tool calls, not the tool output segments the engine inserts.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{- raise_exception('Unknown chat role ' + message['role'] + ' in message ' ~ loop.index0"
    " ~ '; expected system, user, assistant or tool') -}}"
    "{%- endif -%}"
    "{%- if message['content'] is not string -%}"
    "{{- raise_exception('Message ' ~ loop.index0 ~ ' has non-string content') -}}"
    "{%- endif -%}"
    "{{- '" + IM_START + "' + message['role'] + '" + IM_SEP + "' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- set message_index = loop.index0 -%}"
    "{%- set segments = message['content'].split('" + TOOL_OUTPUT_START + "') -%}"
    "{%- generation -%}{{- segments[0] -}}{%- endgeneration -%}"
    "{%- for segment in segments[1:] -%}"
    "{%- set parts = segment.split('" + TOOL_OUTPUT_END + "', 1) -%}"
    "{%- if parts | length < 2 -%}"
    "{{- raise_exception('Message ' ~ message_index ~ ' has " + TOOL_OUTPUT_START + " without "
    + TOOL_OUTPUT_END + "') -}}"
    "{%- endif -%}"
    "{{- '" + TOOL_OUTPUT_START + "' + parts[0] + '" + TOOL_OUTPUT_END + "' -}}"
    "{%- generation -%}{{- parts[1] -}}{%- endgeneration -%}"
    "{%- endfor -%}"
    "{%- generation -%}{{- '" + IM_END + "' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- message['content'] + '" + IM_END + "' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + IM_START + "assistant" + IM_SEP + "' -}}{%- endif -%}"
)


class ChatForgeTokenizer(PreTrainedTokenizerFast):
    """Byte-level BPE tokenizer of ChatForge models (train one with ``chatforge tokenizer train``).

    Any string round-trips exactly: ``decode(encode(s)) == s``. Its chat template renders
    ``<|im_start|>role<|im_sep|>content<|im_end|>`` turns and marks assistant replies for
    ``return_assistant_tokens_mask``.
    """

    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"


__all__ = ["CHAT_ROLES", "CHAT_TEMPLATE", "SPECIAL_TOKENS", "ChatForgeTokenizer"]
