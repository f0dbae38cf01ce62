"""The HTTP server: OpenAI's chat-completions and completions APIs over the batcher (FastAPI, with server-sent
events from ``sse-starlette`` for streams), and the chat page at ``/``.

Built-in tools run on the server inside the assistant's turn; the client sees each call and its output as a
``chatforge_tool_call`` / ``chatforge_tool_output`` delta in a stream, and as ``chatforge_tools`` (name,
arguments, output) beside the content of a whole message. Tools a request declares itself are the client's to
run: the model's calls come back as OpenAI ``tool_calls`` (finish reason ``tool_calls``), and the server's own
tools are not used for that request. Errors use OpenAI's ``{"error": {...}}`` shape.
"""

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import TemplateError
from sse_starlette import EventSourceResponse

from ..inference.batching import Batcher, Job
from ..inference.engine import ChatEvent, Engine, SamplingParams
from .protocol import ChatCompletionRequest, CompletionRequest
from .relay import EventRelay
from .tool_calls import ToolCall, ToolCallReader, tool_call_template

#: What a reply is built from: the batcher's events, and the calls read out of a reply for declared tools.
Event = ChatEvent | ToolCall
#: The chat page (``GET /``) and its scripts.
STATIC = Path(__file__).parent / "static"
#: The page runs only its own scripts and talks only to this server, whatever a reply contains.
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one request may ask: body size, tokens to generate (``default_max_tokens`` when a chat
    request names none), sequences decoded together."""

    max_request_bytes: int = 1 << 20
    max_tokens: int = 2048
    default_max_tokens: int = 512
    max_batch: int = 32


class APIError(Exception):
    """A request the server refuses: HTTP ``status`` and OpenAI's error fields."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": str(self), "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


def create_app(engine: Engine, model_name: str, use_tools: bool = False, api_key: str | None = None,
               limits: ServerLimits = ServerLimits()) -> FastAPI:
    """The server of one model. ``use_tools``: run the engine's toolbox inside the assistant's turn."""
    state: dict = {}
    context = getattr(engine.model.config, "max_position_embeddings", None)
    response_template, no_tools_why = tool_call_template(engine.tokenizer, engine.model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["batcher"] = Batcher(engine, max_batch=limits.max_batch)
        yield
        state["batcher"].close()

    app = FastAPI(title="chatforge", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def refused(request: Request, error: APIError):
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:])
        return APIError(400, f"{where}: {first['msg']}" if where else first["msg"], param=where or None).response()

    @app.middleware("http")
    async def bounded(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and int(size) > limits.max_request_bytes:
            return APIError(413, f"request body over {limits.max_request_bytes} bytes").response()
        return await call_next(request)

    async def authorized(request: Request) -> None:
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            raise APIError(401, "missing or wrong API key (Authorization: Bearer KEY)", kind="authentication_error",
                           code="invalid_api_key")

    def checked_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"model {name!r} does not exist; this server serves {model_name!r}", param="model",
                           code="model_not_found")

    def budget(prompt_ids: list[int], asked: int | None) -> int:
        if asked is not None and asked > limits.max_tokens:
            raise APIError(400, f"max_tokens {asked} is over this server's limit of {limits.max_tokens}",
                           param="max_tokens")
        room = context - len(prompt_ids) if context else limits.max_tokens
        if room <= 0:
            raise APIError(400, f"the prompt is {len(prompt_ids)} tokens; this model's context is {context}",
                           param="messages", code="context_length_exceeded")
        return min(asked or limits.default_max_tokens, room)

    async def events(prompts: list[list[int]], params: SamplingParams, n: int,
                     tool_calls: str) -> AsyncIterator[tuple[int, ChatEvent]]:
        """Each choice's events as the batcher makes them (choice ``p * n + i`` is sample i of prompt p); the
        jobs are cancelled when the consumer stops (a client that went away frees its sequences)."""
        relay, jobs = EventRelay(asyncio.get_running_loop()), []
        for p, ids in enumerate(prompts):
            def emit(index: int, event: ChatEvent, offset: int = p * n) -> None:
                relay.emit(offset + index, event)
            jobs.append(Job(ids, params, emit, n=n, tool_calls=tool_calls))
            state["batcher"].submit(jobs[-1])
        remaining = len(prompts) * n
        try:
            while remaining:
                for index, event in await relay.burst():
                    if event.kind == "done":
                        remaining -= 1
                        if event.finish_reason == "error":
                            raise APIError(500, f"generation failed: {event.text}", kind="server_error")
                    yield index, event
        finally:
            for job in jobs:
                job.cancelled.set()

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/health")
    async def health():
        batcher = state["batcher"]
        return {"status": "ok", "model": model_name, "batches": batcher.batches, "largest_batch": batcher.largest_batch,
                "joined": batcher.joined, "widest_cache": batcher.widest}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "chatforge"}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(request: ChatCompletionRequest):
        checked_model(request.model)
        declared = request.declared_tools()
        if declared and no_tools_why:
            raise APIError(400, f"tools: {no_tools_why}", param="tools")
        try:
            ids = list(engine.tokenizer.apply_chat_template([m.for_template() for m in request.messages],
                                                            tools=declared, add_generation_prompt=True, tokenize=True,
                                                            return_dict=False))
        except TemplateError as error:
            raise APIError(400, f"messages: {error}", param="messages") from None
        except ValueError as error:  # no chat template: a base model
            raise APIError(400, f"{error}; for a base model use /v1/completions", param="messages") from None
        params = _params(request, budget(ids, request.token_limit()))
        tool_calls = "return" if declared else "run" if use_tools and engine.toolbox is not None else "suppress"
        stream = events([ids], params, request.n, tool_calls)
        readers = None
        if declared:
            prompt = engine.tokenizer.decode(ids)
            readers = [ToolCallReader(response_template, prompt, declared) for _ in range(request.n)]
        reply = ChatReply(model_name, request.n, len(ids), request.stream_options, readers)
        if request.stream:
            return EventSourceResponse(reply.chunks(stream))
        return await reply.whole(stream)

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(request: CompletionRequest):
        checked_model(request.model)
        prompts = [engine.tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in request.prompt]
        params = _params(request, min(budget(ids, request.token_limit()) for ids in prompts))
        stream = events(prompts, params, request.n, "suppress")
        reply = TextReply(model_name, len(prompts) * request.n, sum(map(len, prompts)) * request.n,
                          request.stream_options)
        if request.stream:
            return EventSourceResponse(reply.chunks(stream))
        return await reply.whole(stream)

    return app


def _params(request, max_tokens: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_tokens, temperature=request.temperature, top_k=None,
                          top_p=request.top_p, stop=request.stops(), seed=request.seed)


class ChatReply:
    """Builds ``chat.completion`` responses and ``chat.completion.chunk`` streams from choice events."""

    kind, chunk_kind, prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def __init__(self, model: str, choices: int, prompt_tokens: int, stream_options=None,
                 readers: list[ToolCallReader] | None = None):
        self.model, self.choices, self.prompt_tokens = model, choices, prompt_tokens
        self.include_usage = bool(stream_options and stream_options.include_usage)
        self.id, self.created = f"{self.prefix}-{uuid.uuid4().hex}", int(time.time())
        self.completion_tokens = 0
        self.readers = readers

    async def read(self, stream: AsyncIterator[tuple[int, ChatEvent]]) -> AsyncIterator[tuple[int, Event]]:
        """The choices' events, with text read for declared tools (when the request has them): what is not a
        call stays text, each call comes as a :class:`ToolCall`, and a choice that called ends with
        ``tool_calls``."""
        async for index, event in stream:
            if self.readers is None or event.kind not in ("text", "done"):
                yield index, event
                continue
            reader = self.readers[index]
            for piece in reader.feed(event.text) if event.kind == "text" else reader.close():
                yield index, ChatEvent("text", piece) if isinstance(piece, str) else piece
            if event.kind == "done":
                yield index, dataclasses.replace(event, finish_reason="tool_calls") if reader.calls else event

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def envelope(self, kind: str, choices: list[dict], **extra) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices,
                **extra}

    def delta(self, index: int, event: Event) -> dict | None:
        """The stream delta of one event (None: nothing to send)."""
        if isinstance(event, ToolCall):
            return {"tool_calls": [event.openai(streamed=True)]}
        if event.kind == "text":
            return {"content": event.text}
        if event.kind == "tool_call":
            return {"chatforge_tool_call": {"name": event.tool, "arguments": event.text}}
        if event.kind == "tool_output":
            return {"chatforge_tool_output": {"name": event.tool, "output": event.text}}
        return None

    def opening(self, index: int) -> dict | None:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}

    def streamed_choice(self, index: int, delta: dict, finish_reason: str | None = None) -> dict:
        return {"index": index, "delta": delta, "finish_reason": finish_reason}

    async def chunks(self, stream: AsyncIterator[tuple[int, ChatEvent]]) -> AsyncIterator[dict]:
        usage = {"usage": None} if self.include_usage else {}
        for index in range(self.choices):
            if (opening := self.opening(index)) is not None:
                yield {"data": json.dumps(self.envelope(self.chunk_kind, [opening], **usage))}
        async for index, event in self.read(stream):
            if isinstance(event, ChatEvent) and event.kind == "done":
                self.completion_tokens += event.tokens
                choice = self.streamed_choice(index, {}, event.finish_reason)
            elif (delta := self.delta(index, event)) is not None:
                choice = self.streamed_choice(index, delta)
            else:
                continue
            yield {"data": json.dumps(self.envelope(self.chunk_kind, [choice], **usage))}
        if self.include_usage:
            yield {"data": json.dumps(self.envelope(self.chunk_kind, [], usage=self.usage()))}
        yield {"data": "[DONE]"}

    async def whole(self, stream: AsyncIterator[tuple[int, ChatEvent]]) -> dict:
        texts, tools, finish = [[] for _ in range(self.choices)], [[] for _ in range(self.choices)], {}
        calls = [[] for _ in range(self.choices)]
        async for index, event in self.read(stream):
            if isinstance(event, ToolCall):
                calls[index].append(event.openai())
            elif event.kind == "text":
                texts[index].append(event.text)
            elif event.kind == "tool_call":
                tools[index].append({"name": event.tool, "arguments": event.text})
            elif event.kind == "tool_output":
                if not tools[index] or "output" in tools[index][-1]:
                    tools[index].append({"name": event.tool, "arguments": None})
                tools[index][-1]["output"] = event.text
            elif event.kind == "done":
                self.completion_tokens += event.tokens
                finish[index] = event.finish_reason
        return self.envelope(self.kind, [self.whole_choice(i, "".join(texts[i]), tools[i], finish[i], calls[i])
                                         for i in range(self.choices)], usage=self.usage())

    def whole_choice(self, index: int, text: str, tools: list[dict], finish_reason: str,
                     calls: list[dict]) -> dict:
        message = {"role": "assistant", "content": text or (None if calls else ""),
                   **({"tool_calls": calls} if calls else {}), **({"chatforge_tools": tools} if tools else {})}
        return {"index": index, "message": message, "finish_reason": finish_reason}


class TextReply(ChatReply):
    """``text_completion`` responses and streams (``/v1/completions``)."""

    kind = chunk_kind = "text_completion"
    prefix = "cmpl"

    def delta(self, index: int, event: ChatEvent) -> dict | None:
        return {"text": event.text} if event.kind == "text" else None

    def opening(self, index: int) -> dict | None:
        return None

    def streamed_choice(self, index: int, delta: dict, finish_reason: str | None = None) -> dict:
        return {"index": index, "text": delta.get("text", ""), "logprobs": None, "finish_reason": finish_reason}

    def whole_choice(self, index: int, text: str, tools: list[dict], finish_reason: str,
                     calls: list[dict]) -> dict:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


__all__ = ["APIError", "ServerLimits", "create_app"]
