"""``chatforge chat MODEL``: multi-turn chat in the terminal, streamed, with tool calls shown as they run.

Commands: ``/reset`` forgets the conversation, ``/system TEXT`` sets the system prompt, ``/quit`` leaves.
"""

import sys
from collections.abc import Iterable
from typing import TextIO

from .engine import Engine, SamplingParams

HELP = "commands: /reset, /system TEXT, /quit"


def _print(text: str, out: TextIO) -> None:
    out.write(text)
    out.flush()


def chat_loop(engine: Engine, params: SamplingParams, system: str | None = None, use_tools: bool = True,
              lines: Iterable[str] | None = None, out: TextIO = sys.stdout) -> list[dict]:
    """Read user turns from ``lines`` (default: the terminal) and stream the replies; the conversation."""
    interactive = lines is None
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    tools = "tools: " + ", ".join(sorted(engine.toolbox.tools)) if use_tools and engine.toolbox and \
        engine.tools_supported else "no tools"
    _print(f"chatforge chat ({tools}); {HELP}\n", out)
    source = iter(lines) if lines is not None else None
    while True:
        try:
            line = input("you> ") if interactive else next(source)
        except (EOFError, StopIteration, KeyboardInterrupt):
            break
        line = line.strip()
        if not line:
            continue
        if line == "/quit":
            break
        if line == "/reset":
            messages = messages[:1] if messages and messages[0]["role"] == "system" else []
            _print("(conversation reset)\n", out)
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip()
            messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]
            _print("(system prompt set)\n", out)
            continue
        if not interactive:
            _print(f"you> {line}\n", out)
        messages.append({"role": "user", "content": line})
        _print("assistant> ", out)
        for event in engine.chat(messages, params, use_tools=use_tools):
            if event.kind == "text":
                _print(event.text, out)
            elif event.kind == "tool_call":
                _print(f"\n  [{event.tool}] {event.text.strip()}", out)
            elif event.kind == "tool_output":
                _print(f"\n  [{event.tool or 'tool'} ->] {event.text.strip()}\n", out)
            elif event.kind == "done":
                messages.append({"role": "assistant", "content": event.text})
                _print("\n" if event.finish_reason == "stop" else f"\n({event.finish_reason})\n", out)
    return messages
