"""The tool-call protocol in tokens, inside an assistant turn::

    <|tool_call_start|>calculator
    23 * 47<|tool_call_end|><|tool_output_start|>1081<|tool_output_end|>So the total is 1081.

The model writes the call (tool name on the first line, its argument after); generation pauses at
``<|tool_call_end|>``; the engine runs the tool and appends the output segment; generation goes on.
The chat template keeps output segments out of the assistant-only loss (the model never predicts them).
"""

from collections.abc import Callable

from ..tokenization.tokenization_chatforge import TOOL_CALL_END, TOOL_CALL_START, TOOL_OUTPUT_END, TOOL_OUTPUT_START
from .errors import ToolError

Tool = Callable[[str], str]


def format_tool_call(name: str, argument: str) -> str:
    return f"{TOOL_CALL_START}{name}\n{argument}{TOOL_CALL_END}"


def format_tool_output(output: str) -> str:
    return f"{TOOL_OUTPUT_START}{output}{TOOL_OUTPUT_END}"


def tool_exchange(name: str, argument: str, output: str) -> str:
    """A call and its output, as they appear in an assistant message of the training data."""
    return format_tool_call(name, argument) + format_tool_output(output)


def parse_tool_call(text: str) -> tuple[str, str]:
    """``(name, argument)`` of the last call in ``text`` (which may hold the whole generated turn)."""
    start = text.rfind(TOOL_CALL_START)
    if start < 0:
        raise ToolError(f"no {TOOL_CALL_START} before {TOOL_CALL_END}")
    body = text[start + len(TOOL_CALL_START):].split(TOOL_CALL_END, 1)[0]
    name, _, argument = body.partition("\n")
    return name.strip(), argument


class Toolbox:
    """Named tools; :meth:`run` never raises: a failure becomes an ``error: …`` output for the model."""

    def __init__(self, tools: dict[str, Tool]):
        self.tools = dict(tools)

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def __bool__(self) -> bool:
        return bool(self.tools)

    def run(self, name: str, argument: str) -> str:
        if name not in self.tools:
            return f"error: unknown tool {name!r}; available: {', '.join(sorted(self.tools))}"
        try:
            return self.tools[name](argument)
        except ToolError as error:
            return f"error: {error}"
