"""Tools an assistant can call: exact calculator, sandboxed Python, local search."""

from pathlib import Path

from .calculator import calculate
from .errors import ToolError
from .isolation import SandboxUnavailable, strongest_available
from .protocol import Tool, Toolbox, format_tool_call, format_tool_output, parse_tool_call, tool_exchange
from .sandbox import SandboxLimits, SandboxResult, execute, run_python
from .search import SearchIndex, search_tool


def default_toolbox(search_index: str | Path | SearchIndex | None = None,
                    limits: SandboxLimits = SandboxLimits()) -> Toolbox:
    """Calculator and sandboxed Python, plus search when an index (or its folder) is given."""
    tools: dict[str, Tool] = {"calculator": calculate, "python": lambda code: run_python(code, limits)}
    if search_index is not None:
        index = search_index if isinstance(search_index, SearchIndex) else SearchIndex.load(search_index)
        tools["search"] = search_tool(index)
    return Toolbox(tools)


__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "SearchIndex",
    "Tool",
    "ToolError",
    "Toolbox",
    "calculate",
    "default_toolbox",
    "execute",
    "format_tool_call",
    "format_tool_output",
    "parse_tool_call",
    "run_python",
    "search_tool",
    "strongest_available",
    "tool_exchange",
]
