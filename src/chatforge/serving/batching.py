"""Concurrent requests decoded together: one worker thread owns the model and steps every waiting sequence
as one batch, each with its own sampling settings, random stream, stop conditions and tools.

Sequences that arrive while a batch runs join the next one. Within a batch, a sequence whose tool is running
(in a thread pool, so that a slow tool stalls no one) steps with a masked position until the tool's output is
fed to it; finished and cancelled sequences leave the batch (their cache rows are dropped).
"""

import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field

import torch

from ..inference.detokenize import IncrementalText
from ..inference.engine import ChatEvent, Engine, SamplingParams
from ..tokenization.tokenization_chatforge import TOOL_CALL_START
from ..tools import ToolError, format_tool_output, parse_tool_call
from .stops import StopStrings


@dataclass
class Job:
    """One request: ``n`` sequences continuing ``prompt_ids``. ``emit(index, event)`` receives each sequence's
    :class:`ChatEvent` s from the worker thread (``done`` last, with ``tokens`` generated); ``cancelled`` set by
    the caller ends its sequences at the next step."""

    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[int, ChatEvent], None]
    n: int = 1
    use_tools: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)


class _Sequence:
    """One sequence's state inside a batch."""

    def __init__(self, job: Job, index: int, engine: Engine, device: torch.device):
        self.job, self.index, self.engine = job, index, engine
        seed = job.params.seed + index if job.params.seed is not None else int.from_bytes(os.urandom(8), "little")
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.budget = job.params.max_new_tokens
        self.generated = 0
        self.length = len(job.prompt_ids)
        self.calls = 0
        self.segment = IncrementalText(engine.tokenizer)
        self.calling = False
        self.stops = StopStrings(job.params.stop)
        self.forced: deque[int] = deque()
        self.tool: Future | None = None
        self.finished = False

    def finish(self, reason: str, stop_token: str | None = None) -> None:
        if (tail := self.stops.flush()) and not self.calling:
            self.job.emit(self.index, ChatEvent("text", tail))
        self.finished = True
        self.job.emit(self.index, ChatEvent("done", finish_reason=reason, stop_token=stop_token, tokens=self.generated))

    def text(self, piece: str) -> None:
        """Pass on generated text up to a tool call (reported by its own events) or a stop string."""
        if self.calling or not piece:
            return
        piece, start, _ = piece.partition(TOOL_CALL_START)
        self.calling = bool(start)
        shown, stopped = self.stops.feed(piece)
        if shown:
            self.job.emit(self.index, ChatEvent("text", shown))
        if stopped:
            self.finish("stop")

    def sampled(self, token: int, tools: ThreadPoolExecutor) -> None:
        """Account for a token this sequence sampled (it is fed to the model next unless the sequence ends)."""
        engine = self.engine
        self.generated += 1
        self.budget -= 1
        if token in engine.stop_ids:
            self.finish("stop", engine.tokenizer.convert_ids_to_tokens(token))
            return
        self.text(self.segment.add(token))
        if self.finished:
            return
        if self.job.use_tools and token == engine.tool_call_end_id:
            self.calling = False
            self._call_tool(tools)
        elif self.budget <= 0:
            self.text(self.segment.flush())
            if not self.finished:
                self.finish("length")

    def _call_tool(self, tools: ThreadPoolExecutor) -> None:
        if self.calls == self.engine.max_tool_calls:
            self.finish("length")
            return
        self.calls += 1
        try:
            name, argument = parse_tool_call(self.segment.text)
        except ToolError as error:  # a call closed but never opened: the model is told, as for any failure
            self.tool = Future()
            self.tool.set_result((None, f"error: {error}"))
            return
        self.job.emit(self.index, ChatEvent("tool_call", argument, tool=name))
        self.tool = tools.submit(lambda: (name, self.engine.toolbox.run(name, argument)))

    def tool_returned(self) -> None:
        """Queue the finished tool's output to be fed to the model, and start a new text segment."""
        name, output = self.tool.result()
        self.tool = None
        self.job.emit(self.index, ChatEvent("tool_output", output, tool=name))
        self.forced.extend(self.engine.tokenizer(format_tool_output(output), add_special_tokens=False)["input_ids"])
        self.segment = IncrementalText(self.engine.tokenizer)

    @property
    def waiting(self) -> bool:
        return self.tool is not None and not self.tool.done()


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token from a row of logits: greedy at temperature 0, else temperature, top-k and top-p as asked."""
    if params.temperature == 0:
        return int(logits.argmax())
    logits = logits / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(ordered, -1).cumsum(-1)
        beyond = cumulative - torch.softmax(ordered, -1) >= params.top_p  # keeps the token that crosses top_p
        logits = logits.scatter(0, order[beyond], float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))


class Batcher:
    """The worker that decodes submitted jobs in batches of at most ``max_batch`` sequences."""

    def __init__(self, engine: Engine, max_batch: int = 32, tool_threads: int = 4):
        self.engine = engine
        self.max_batch = max_batch
        self.context = getattr(engine.model.config, "max_position_embeddings", None)
        self.waiting: queue.Queue[Job | None] = queue.Queue()
        self.tools = ThreadPoolExecutor(tool_threads, thread_name_prefix="chatforge-tool")
        self.suppressed = engine.tokenizer.convert_tokens_to_ids(TOOL_CALL_START) if engine.tools_supported else None
        self.batches = self.largest_batch = 0
        self.worker = threading.Thread(target=self._serve, name="chatforge-batcher", daemon=True)
        self.worker.start()

    def submit(self, job: Job) -> None:
        self.waiting.put(job)

    def close(self) -> None:
        self.waiting.put(None)
        self.worker.join()
        self.tools.shutdown(wait=False, cancel_futures=True)

    def _serve(self) -> None:
        while (job := self.waiting.get()) is not None:
            jobs = [job]  # (a job cancelled while it waited ends at the first step)
            while sum(j.n for j in jobs) < self.max_batch:
                try:
                    following = self.waiting.get_nowait()
                except queue.Empty:
                    break
                if following is None:
                    self.waiting.put(None)
                    break
                jobs.append(following)
            self.batches += 1
            self.largest_batch = max(self.largest_batch, sum(j.n for j in jobs))
            try:
                self._decode(jobs)
            except Exception as error:  # every sequence of the batch learns why, the worker lives on
                for j in jobs:
                    for index in range(j.n):
                        j.emit(index, ChatEvent("done", finish_reason="error", text=f"{type(error).__name__}: {error}"))

    @torch.inference_mode()
    def _decode(self, jobs: list[Job]) -> None:
        engine, device = self.engine, self.engine.device
        sequences = [_Sequence(job, index, engine, device) for job in jobs for index in range(job.n)]
        prompts = [job.prompt_ids for job in jobs for _ in range(job.n)]
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), engine.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.as_tensor(prompt)
            mask[row, width - len(prompt):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        output = engine.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache, logits, lengths = output.cache, output.logits[:, -1].float(), mask.sum(-1)
        fresh = [True] * len(sequences)  # the row's logits follow a token it was fed
        while True:
            feed = []
            for row, sequence in enumerate(sequences):
                feed.append(self._next_input(sequence, logits[row], fresh[row]))
            keep = [row for row, sequence in enumerate(sequences) if not sequence.finished]
            if not keep:
                return
            if len(keep) < len(sequences):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, lengths = mask[index], lengths[index]
                sequences, feed = [sequences[row] for row in keep], [feed[row] for row in keep]
            if all(token is None for token in feed):  # every sequence waits on a tool
                running = [s.tool for s in sequences if s.tool is not None]
                if not running:
                    raise RuntimeError("no sequence of the batch can step")
                wait_for_futures(running, return_when="FIRST_COMPLETED")
                fresh = [False] * len(sequences)
                continue
            real = torch.tensor([token is not None for token in feed], device=device, dtype=torch.long)
            step = torch.tensor([[engine.pad_id if token is None else token] for token in feed], device=device)
            mask = torch.cat([mask, real[:, None]], 1)
            output = engine.model(input_ids=step, attention_mask=mask, position_ids=lengths[:, None], cache=cache,
                                  use_cache=True)
            cache, logits, lengths = output.cache, output.logits[:, -1].float(), lengths + real
            fresh = real.bool().tolist()

    def _next_input(self, sequence: _Sequence, logits: torch.Tensor, fresh: bool) -> int | None:
        """The token this sequence feeds at this step (None: a masked step while its tool runs)."""
        if sequence.finished:
            return None
        if sequence.job.cancelled.is_set():
            sequence.finish("cancelled")
            return None
        if sequence.tool is not None:
            if sequence.waiting:
                return None
            sequence.tool_returned()
        if sequence.forced:
            return self._fed(sequence, sequence.forced.popleft())
        if not fresh:
            return None
        if self.suppressed is not None and not sequence.job.use_tools:
            logits[self.suppressed] = float("-inf")  # without tools, the model answers in its own words
        token = sample_token(logits, sequence.job.params, sequence.generator)
        sequence.sampled(token, self.tools)
        if not sequence.finished and self.context and sequence.length >= self.context:
            sequence.finish("length")  # no position left to feed the token at
        return None if sequence.finished else self._fed(sequence, token)

    @staticmethod
    def _fed(sequence: _Sequence, token: int) -> int:
        sequence.length += 1
        return token


__all__ = ["Batcher", "Job", "sample_token"]
