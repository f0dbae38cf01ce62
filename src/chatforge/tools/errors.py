"""The error a tool returns to the model instead of crashing the engine."""


class ToolError(Exception):
    """A tool could not do what was asked; the message is shown to the model as the tool's output."""
