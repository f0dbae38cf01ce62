"""The OpenAI-compatible request bodies the server accepts, validated field by field.

Unknown fields are refused (a 400 naming the field) so that nothing a client asks for is silently misread;
fields that OpenAI clients send by default and that change nothing here (``user``, ``metadata``, ``store``,
``service_tier``) are accepted and ignored. Sampling fields the server does not implement are refused
unless they hold their no-op value.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Fields refused unless they hold the value that leaves sampling unchanged.
NO_OP_VALUES = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None, "logprobs": None,
                "top_logprobs": None, "response_format": None, "echo": False, "suffix": None, "best_of": None}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: str


class ToolCallMessage(BaseModel):
    """A call the assistant made, as the client sends it back in the conversation."""

    model_config = ConfigDict(extra="forbid")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """One chat message; content as a string or as text parts."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCallMessage] | None = None

    @model_validator(mode="after")
    def _calls_from_the_assistant(self):
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages have tool_calls")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""

    def for_template(self) -> dict:
        """The message as chat templates take it."""
        message = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class Function(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class ToolDeclaration(BaseModel):
    """A tool the client declares (OpenAI's ``tools`` entries)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: Function


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by both endpoints."""

    model_config = ConfigDict(extra="forbid")
    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=8)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict | None = None
    store: bool | None = None
    service_tier: str | None = None
    presence_penalty: float | None = 0
    frequency_penalty: float | None = 0
    logit_bias: dict | None = None
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    response_format: dict | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops

    @model_validator(mode="after")
    def _no_unsupported(self):
        for name, no_op in NO_OP_VALUES.items():
            value = getattr(self, name, no_op)
            if value not in (no_op, None, False) and not (name == "best_of" and value == self.n):
                raise ValueError(f"{name} is not supported by this server (leave it unset)")
        return self

    def stops(self) -> list[str]:
        return list(self.stop or [])


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[ToolDeclaration] | None = None
    tool_choice: Literal["none", "auto"] | None = None
    parallel_tool_calls: bool | None = None

    def declared_tools(self) -> list[dict] | None:
        """The tools to render for the model (None with ``tool_choice="none"``, as in OpenAI's API)."""
        if not self.tools or self.tool_choice == "none":
            return None
        return [tool.model_dump(exclude_none=True) for tool in self.tools]

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    """``POST /v1/completions`` (plain prompt continuation, for base models)."""

    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, prompt):
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not prompts or len(prompts) > 8:
            raise ValueError("between 1 and 8 prompts")
        return prompts

    def token_limit(self) -> int:
        return self.max_tokens


__all__ = ["ChatCompletionRequest", "CompletionRequest", "Message", "NO_OP_VALUES", "ToolDeclaration"]
