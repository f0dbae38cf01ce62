"""The ChatForge tokenizer: byte-level BPE with GPT-4-style pre-splitting and a chat format.

A chat renders as ``<|im_start|>role<|im_sep|>content<|im_end|>`` per message, with no separator
between messages. This file is copied next to saved tokenizers (``auto_map``), so it imports
nothing but transformers.
"""

import json
import re

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

#: How declared tools are introduced to the model (in the system turn, one JSON schema per line after it).
TOOLS_PREAMBLE = ("You can call these tools. To call one, write its name on a line of its own, then its arguments as "
                  "JSON.")

#: Jinja chat template, with ``@...@`` markers that :func:`chat_template` fills in.
_TEMPLATE = (
    "{%- set ns = namespace(open=false) -%}"
    "{%- set default_system = @DEFAULT_SYSTEM@ -%}"
    "{%- set system_given = messages and messages[0]['role'] == 'system' -%}"
    "{%- if tools -%}"
    "{{- '@START@system@SEP@' -}}"
    "{%- if system_given -%}{{- messages[0]['content'] + '\n\n' -}}"
    "{%- elif default_system -%}{{- default_system + '\n\n' -}}{%- endif -%}"
    "{{- '@PREAMBLE@' -}}"
    "{%- for tool in tools -%}{{- '\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '@END@@AFTER@' -}}"
    "{%- elif default_system and not system_given -%}"
    "{{- '@START@system@SEP@' + default_system + '@END@@AFTER@' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{- raise_exception('Unknown chat role ' + message['role'] + ' in message ' ~ loop.index0"
    " ~ '; expected system, user, assistant or tool') -}}"
    "{%- endif -%}"
    "{%- set calls = message['tool_calls'] if message['role'] == 'assistant' and message['tool_calls'] else [] -%}"
    "{%- set given = message['content'] is defined and message['content'] is not none -%}"
    "{%- set content = message['content'] if given else ('' if calls else none) -%}"
    "{%- if content is not string -%}"
    "{{- raise_exception('Message ' ~ loop.index0 ~ ' has non-string content') -}}"
    "{%- endif -%}"
    "{%- if tools and loop.first and message['role'] == 'system' -%}{%- continue -%}{%- endif -%}"
    "{%- if message['role'] == 'tool' and ns.open -%}"
    "{{- '@OUT_START@' + content + '@OUT_END@' -}}"
    "{%- continue -%}"
    "{%- endif -%}"
    "{%- if ns.open and message['role'] != 'assistant' -%}{{- '@END@@AFTER@' -}}{%- set ns.open = false -%}"
    "{%- endif -%}"
    "{%- if not ns.open -%}{{- '@START@' + message['role'] + '@SEP@' -}}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- set message_index = loop.index0 -%}"
    "{%- set segments = content.split('@OUT_START@') -%}"
    "{%- generation -%}{{- segments[0] -}}{%- endgeneration -%}"
    "{%- for segment in segments[1:] -%}"
    "{%- set parts = segment.split('@OUT_END@', 1) -%}"
    "{%- if parts | length < 2 -%}"
    "{{- raise_exception('Message ' ~ message_index ~ ' has @OUT_START@ without @OUT_END@') -}}"
    "{%- endif -%}"
    "{{- '@OUT_START@' + parts[0] + '@OUT_END@' -}}"
    "{%- generation -%}{{- parts[1] -}}{%- endgeneration -%}"
    "{%- endfor -%}"
    "{%- for call in calls -%}"
    "{%- set call = call['function'] if call['function'] is defined else call -%}"
    "{%- set arguments = call['arguments'] if call['arguments'] is string else call['arguments'] | tojson -%}"
    "{%- generation -%}{{- '@CALL_START@' + call['name'] + '\n' + arguments + '@CALL_END@' -}}{%- endgeneration -%}"
    "{%- endfor -%}"
    "{%- set ns.open = calls | length > 0 -%}"
    "{%- if not ns.open -%}{%- generation -%}{{- '@END@' -}}{%- endgeneration -%}{{- '@AFTER@' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- content + '@END@@AFTER@' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt and not ns.open -%}{{- '@START@assistant@SEP@' -}}{%- endif -%}"
)


def chat_template(separator: str = IM_SEP, after_end: str = "", default_system: str | None = None) -> str:
    """The Jinja chat template of turns written ``<|im_start|>role{separator}content<|im_end|>{after_end}``:
    ChatForge's own (``<|im_sep|>``, nothing after a turn) or ChatML's (a newline after the role and after each
    turn, as SmolLM2 and Qwen write them), with ``default_system`` as the system turn of conversations that bring
    none. ``{% generation %}`` marks the tokens an assistant-only loss trains on: the assistant's text and tool
    calls, not the tool output segments the engine inserts.

    Tools declared with ``tools=`` (JSON schemas, as ``apply_chat_template`` takes them) are listed in the
    system turn. An assistant message with ``tool_calls`` (OpenAI's or transformers' shape) writes each call as
    ``<|tool_call_start|>name\n{arguments}<|tool_call_end|>`` and leaves its turn open: the ``tool`` messages
    after it become output segments inside that turn, and the next assistant message (or the generation prompt)
    continues it, exactly the layout the engine produces when it runs the tools itself.
    """
    fills = {"@START@": IM_START, "@SEP@": separator, "@END@": IM_END, "@AFTER@": after_end,
             "@OUT_START@": TOOL_OUTPUT_START, "@OUT_END@": TOOL_OUTPUT_END, "@CALL_START@": TOOL_CALL_START,
             "@CALL_END@": TOOL_CALL_END, "@PREAMBLE@": TOOLS_PREAMBLE}
    template = _TEMPLATE
    for marker, text in fills.items():  # into single-quoted Jinja strings
        template = template.replace(marker, text.replace("\\", "\\\\").replace("'", "\\'"))
    return template.replace("@DEFAULT_SYSTEM@", "none" if default_system is None
                            else json.dumps(default_system, ensure_ascii=False))


#: ChatForge's chat template: ``<|im_start|>role<|im_sep|>content<|im_end|>`` per message, nothing between.
CHAT_TEMPLATE = chat_template()


#: What transformers needs to read a generated turn back into a message (``tokenizer.parse_response``): text
#: as ``content``, each ``<|tool_call_start|>name\n{arguments}<|tool_call_end|>`` as a ``tool_calls`` entry
#: (arguments that are not JSON are kept as text). ``chatforge serve`` uses it; set it as a tokenizer's
#: ``response_template`` to parse with transformers. Saved tokenizers do not carry it: TRL's GRPOTrainer would then
#: hand its reward functions parsed messages instead of the decoded text they are written for.
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": [IM_SEP, TOOL_OUTPUT_END],
    "fields": {
        "tool_calls": {
            "open_pattern": re.escape(TOOL_CALL_START) + r"(?P<name>[^\n]*)\n",
            "close": TOOL_CALL_END,
            "repeats": True,
            "content": "json",
            "content_args": {"allow_non_json": True},
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}},
        },
        "content": {"close": IM_END, "content": "text"},
    },
}


class ChatForgeTokenizer(PreTrainedTokenizerFast):
    """Byte-level BPE tokenizer of ChatForge models (train one with ``chatforge tokenizer train``).

    Any string round-trips exactly: ``decode(encode(s)) == s``. Its chat template renders
    ``<|im_start|>role<|im_sep|>content<|im_end|>`` turns (declared tools and tool calls included) and marks
    assistant replies for ``return_assistant_tokens_mask``; with :data:`RESPONSE_TEMPLATE` as its
    ``response_template``, ``parse_response`` reads a generated turn back into a message with ``tool_calls``.
    """

    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"


__all__ = ["CHAT_ROLES", "CHAT_TEMPLATE", "RESPONSE_TEMPLATE", "SPECIAL_TOKENS", "TOOLS_PREAMBLE", "ChatForgeTokenizer",
           "chat_template"]
