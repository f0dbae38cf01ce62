"""Client-declared tools (OpenAI's ``tools`` field): rendered through the model's chat template, and the model's
calls read back out of its text as ``tool_calls`` with transformers' response parser.

A model takes declared tools when its chat template uses ``tools`` and its replies can be parsed: with the
tokenizer's ``response_template``, the one ``transformers serve`` keeps for the model's family (Qwen, Gemma 4,
...), or ChatForge's :data:`~chatforge.tokenization.RESPONSE_TEMPLATE` for a tokenizer with ChatForge's tool-call
tokens.
"""

import copy
import inspect
import json
import uuid
from dataclasses import dataclass

from jinja2 import TemplateError
from transformers.cli.serving.utils import get_response_template
from transformers.utils.chat_parsing import ResponseParser

from ..tokenization.tokenization_chatforge import RESPONSE_TEMPLATE, TOOL_CALL_START

#: A tool and a message to find out whether a chat template shows declared tools to the model.
_PROBE_TOOL = {"type": "function", "function": {"name": "probe_tool", "description": "A probe.",
                                                "parameters": {"type": "object", "properties": {}}}}
_PROBE_CHAT = [{"role": "user", "content": "Hello."}]


def _renders_tools(tokenizer) -> bool:
    try:
        with_tools = tokenizer.apply_chat_template(_PROBE_CHAT, tools=[_PROBE_TOOL], tokenize=False)
        return with_tools != tokenizer.apply_chat_template(_PROBE_CHAT, tokenize=False)
    except (ValueError, TemplateError):  # no chat template, or one that fails on tools
        return False


def _family_argument(model):
    """What ``get_response_template`` finds the model's family by: its config from transformers 5.25 on, the model
    itself before."""
    return model.config if "config" in inspect.signature(get_response_template).parameters else model


def tool_call_template(tokenizer, model) -> tuple[dict | None, str | None]:
    """``(response template, None)`` for a model that takes declared tools, else ``(None, why not)``."""
    if not _renders_tools(tokenizer):
        return None, "this model's chat template does not take tools"
    template = get_response_template(tokenizer, _family_argument(model))  # the tokenizer's own, else its family's
    if template is None and TOOL_CALL_START in tokenizer.get_vocab():
        template = RESPONSE_TEMPLATE
    if template is None:
        return None, ("this model's tool calls cannot be read back: its tokenizer has no response_template "
                      "(transformers' format for parsing replies)")
    return template, None


@dataclass
class ToolCall:
    """One call in OpenAI's shape: ``arguments`` a JSON string; ``index`` its place among the reply's calls."""

    name: str
    arguments: str
    id: str
    index: int

    def openai(self, streamed: bool = False) -> dict:
        call = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return {"index": self.index, **call} if streamed else call


class ToolCallReader:
    """Reads one generated turn as it streams: :meth:`feed` and :meth:`close` return the new pieces of text
    and the :class:`ToolCall` s completed so far, in order. A call the model wrote wrongly (cut off, or not
    JSON where the format wants JSON) stays in the text, where the client can see it."""

    def __init__(self, template: dict, prompt: str, tools: list[dict]):
        template = copy.deepcopy(template)
        for field in template["fields"].values():
            if field.get("content") == "json":
                field.setdefault("content_args", {})["allow_non_json"] = True
        self.parser = ResponseParser(template, prefix=prompt, tools=tools)
        self.parameters = {tool["function"]["name"]: list(tool["function"].get("parameters", {}).get("properties", {}))
                           for tool in tools}
        self.calls = 0
        self.call_text = ""  # what the model has written of the call being read

    def feed(self, text: str) -> list[str | ToolCall]:
        return self._read(self.parser.feed(text))

    def close(self) -> list[str | ToolCall]:
        return self._read(self.parser.finalize()[1], cut_off=True)

    def _read(self, events: list[dict], cut_off: bool = False) -> list[str | ToolCall]:
        """Text and calls from parser events; a call closed only by the end of the reply was ``cut_off``."""
        out = []
        for event in events:
            field, kind = event.get("field"), event["type"]
            if kind == "region_chunk" and field == "content" and not event.get("dirty"):
                out.append(event.get("text") or "")
            elif kind == "region_open" and field == "tool_calls":
                self.call_text = ""
            elif kind == "region_chunk" and field == "tool_calls":
                self.call_text += event.get("text") or ""
            elif kind == "region_close" and field == "tool_calls":
                values = event["value"] if isinstance(event["value"], list) else [event["value"]]
                if cut_off or not all(isinstance(v.get("function"), dict) and "name" in v["function"]
                                      for v in values):
                    out.append(self.call_text)
                else:
                    out += [self._call(value["function"]) for value in values]
        return [piece for piece in out if piece != ""]

    def _call(self, function: dict) -> ToolCall:
        """Arguments as a JSON string; text that is not JSON becomes the value of a one-parameter tool's parameter
        (ChatForge's own tools take one text argument), or a JSON string otherwise."""
        name, arguments = function["name"], function["arguments"]
        if isinstance(arguments, str) and len(self.parameters.get(name, ())) == 1:
            arguments = {self.parameters[name][0]: arguments}
        self.calls += 1
        return ToolCall(name, json.dumps(arguments, ensure_ascii=False), f"call_{uuid.uuid4().hex[:24]}",
                        self.calls - 1)


__all__ = ["ToolCall", "ToolCallReader", "tool_call_template"]
