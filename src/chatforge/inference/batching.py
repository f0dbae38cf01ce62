"""Concurrent requests decoded together: one worker thread owns the model and steps every active sequence
as one batch, each with its own sampling settings, random stream, stop conditions and tools.

Sequences that arrive while a batch runs are prefilled and join it at the next step (their cache rows are
left-padded to the batch's width). Within a batch, a sequence whose tool is running
(in a thread pool, so that a slow tool stalls no one) steps with a masked position until the tool's output is
fed to it; finished and cancelled sequences leave the batch (their cache rows are dropped).
"""

import contextlib
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from ..tokenization.tokenization_chatforge import TOOL_CALL_START
from ..tools import ToolError, format_tool_output, parse_tool_call
from .batch_sampling import sample_tokens
from .detokenize import IncrementalText
from .engine import ChatEvent, Engine, SamplingParams
from .growing_cache import growing_cache, is_full_attention
from .packed_linear import packed_linears
from .stops import StopStrings

#: What a job does with the model's tool calls: keep it from starting one, run the engine's tools inside the turn,
#: or return them (text passed on verbatim, markup included, and a ChatForge call ending the sequence).
TOOL_CALLS = ("suppress", "run", "return")


@dataclass
class Job:
    """One request: ``n`` sequences continuing ``prompt_ids``. ``emit(index, event)`` receives each sequence's
    :class:`ChatEvent` s from the worker thread (``done`` last, with ``tokens`` generated); ``cancelled`` set by
    the caller ends its sequences at the next step. ``tool_calls``: one of :data:`TOOL_CALLS`."""

    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[int, ChatEvent], None]
    n: int = 1
    tool_calls: str = "suppress"
    cancelled: threading.Event = field(default_factory=threading.Event)
    ended: set[int] = field(default_factory=set)  # the sequences whose ``done`` was emitted

    def __post_init__(self):
        if self.tool_calls not in TOOL_CALLS:
            raise ValueError(f"Job.tool_calls={self.tool_calls!r}: one of {TOOL_CALLS}")


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
        self.call_open = False  # a call was started and not yet closed: the turn cannot end

    def finish(self, reason: str, stop_token: str | None = None) -> None:
        if (tail := self.stops.flush()) and not self.calling:
            self.job.emit(self.index, ChatEvent("text", tail))
        self.finished = True
        self.job.ended.add(self.index)
        self.job.emit(self.index, ChatEvent("done", finish_reason=reason, stop_token=stop_token, tokens=self.generated,
                                            open_call=reason == "length" and self.calling))

    def text(self, piece: str) -> None:
        """Pass on generated text up to a tool call (reported by its own events) or a stop string."""
        if self.calling or not piece:
            return
        if self.job.tool_calls != "return":
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
        if token in (engine.tool_call_start_id, engine.tool_call_end_id):
            self.call_open = token == engine.tool_call_start_id
        if token in engine.stop_ids:
            self.finish("stop", engine.tokenizer.convert_ids_to_tokens(token))
            return
        self.text(self.segment.add(token))
        if self.finished:
            return
        if self.job.tool_calls == "return" and token == engine.tool_call_end_id:
            self.finish("tool_calls")
        elif self.job.tool_calls == "run" and token == engine.tool_call_end_id and self.budget > 0:
            self.calling = False
            self._call_tool(tools)
        elif self.budget <= 0:  # (a call that closes on the last token is not run, as in Engine.chat)
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


@dataclass
class _Batch:
    """The sequences decoding together: their cache, attention mask (left-padded), fed lengths, last logits and
    whether each row's logits follow a token it was fed."""

    sequences: list[_Sequence]
    cache: DynamicCache
    mask: torch.Tensor
    lengths: torch.Tensor
    logits: torch.Tensor
    fresh: list[bool]

    def keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.lengths, self.logits = self.mask[index], self.lengths[index], self.logits[index]
        self.sequences = [self.sequences[row] for row in rows]
        self.fresh = [self.fresh[row] for row in rows]

    def trim(self) -> None:
        """Drop the leading columns that no remaining row attends to (those of rows that have left), so that the
        cache a long-lived batch carries does not grow with every step it has run."""
        first = int(self.mask.any(dim=0).long().argmax())
        if first == 0 or not self.joinable():
            return
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        self.mask = self.mask[:, first:]

    def joinable(self) -> bool:
        """Whether rows can be added: full-attention layers only (a sliding window's cache cannot be padded)."""
        return all(is_full_attention(layer) for layer in self.cache.layers)

    def join(self, other: "_Batch") -> None:
        """Append ``other``'s rows, left-padding the shorter cache and mask (keys keep their rotary positions)."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)])
            mine.values = torch.cat([_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(other.mask, width, 1)])
        self.lengths = torch.cat([self.lengths, other.lengths])
        self.logits = torch.cat([self.logits, other.logits])
        self.sequences += other.sequences
        self.fresh += other.fresh


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim)


class Batcher:
    """The worker that decodes submitted jobs in batches of at most ``max_batch`` sequences; jobs that arrive
    while a batch runs join it at the next step where there is room (continuous batching). ``jobs`` are queued
    before the worker starts: batches then form from them the same way on every run."""

    def __init__(self, engine: Engine, max_batch: int = 32, tool_threads: int = 4, jobs: Iterable[Job] = ()):
        self.engine = engine
        self.max_batch = max_batch
        self.context = getattr(engine.model.config, "max_position_embeddings", None)
        self.waiting: queue.Queue[Job | None] = queue.Queue()
        for job in jobs:
            self.waiting.put(job)
        self.held: Job | None = None  # taken from the queue, waiting for room
        self.closing = False
        self.tools = ThreadPoolExecutor(tool_threads, thread_name_prefix="chatforge-tool")
        self.suppressed = engine.tool_call_start_id if engine.tools_supported else None
        self.batches = self.largest_batch = self.joined = self.widest = 0  # widest: the most cache columns a batch had
        self.worker = threading.Thread(target=self._serve, name="chatforge-batcher", daemon=True)
        self.worker.start()

    def submit(self, job: Job) -> None:
        self.waiting.put(job)

    def close(self) -> None:
        self.waiting.put(None)
        self.worker.join()
        self.tools.shutdown(wait=False, cancel_futures=True)

    def _take(self, room: int, block: bool) -> list[Job]:
        """Jobs of at most ``room`` sequences in all (the first one waits for a job when ``block``)."""
        jobs = []
        while not self.closing:
            if self.held is not None:
                job, self.held = self.held, None
            else:
                try:
                    job = self.waiting.get(block=block and not jobs)
                except queue.Empty:
                    break
            if job is None:
                self.closing = True
            elif jobs and sum(j.n for j in jobs) + job.n > room:
                self.held = job
                break
            else:
                jobs.append(job)
        return jobs

    def _serve(self) -> None:
        fast_linears = contextlib.nullcontext() if self.engine.synced_processes else packed_linears(
            self.engine.model)
        with fast_linears:
            while jobs := self._take(self.max_batch, block=True):
                self.batches += 1
                try:
                    self._decode(self._prefill(jobs), jobs)
                except Exception as error:  # every sequence of the batch learns why, the worker lives on
                    failure = ChatEvent("done", finish_reason="error", text=f"{type(error).__name__}: {error}")
                    for job in jobs:
                        for index in set(range(job.n)) - job.ended:
                            job.emit(index, failure)

    def _prefill(self, jobs: list[Job]) -> _Batch:
        """The jobs' prompts run through the model together (left-padded), each once however many sequences its
        job samples (their cache rows are copies): a batch ready to decode."""
        engine, device = self.engine, self.engine.device
        sequences = [_Sequence(job, index, engine, device) for job in jobs for index in range(job.n)]
        width = max(len(job.prompt_ids) for job in jobs)
        ids = torch.full((len(jobs), width), engine.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, job in enumerate(jobs):
            ids[row, width - len(job.prompt_ids):] = torch.as_tensor(job.prompt_ids)
            mask[row, width - len(job.prompt_ids):] = 1
        ids, mask = ids.to(device), mask.to(device)
        with torch.inference_mode():
            output = engine.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                                  cache=growing_cache(engine.model.config), use_cache=True)
        cache, logits = output.cache, output.logits[:, -1].float()
        if len(sequences) > len(jobs):
            rows = torch.tensor([row for row, job in enumerate(jobs) for _ in range(job.n)], device=device)
            cache.batch_select_indices(rows)
            mask, logits = mask[rows], logits[rows]
        return _Batch(sequences, cache, mask, mask.sum(-1), logits, [True] * len(sequences))

    @torch.inference_mode()
    def _decode(self, batch: _Batch, jobs: list[Job]) -> None:
        """Step ``batch`` until every sequence has ended; jobs that join it are added to ``jobs``."""
        engine, device = self.engine, self.engine.device
        while True:
            if len(batch.sequences) < self.max_batch and batch.joinable() and (joining := self._take(
                    self.max_batch - len(batch.sequences), block=False)):
                jobs += joining
                batch.join(self._prefill(joining))
                self.joined += sum(job.n for job in joining)
            self.largest_batch = max(self.largest_batch, len(batch.sequences))
            feed = self._inputs(batch)
            keep = [row for row, sequence in enumerate(batch.sequences) if not sequence.finished]
            if not keep:
                return
            if len(keep) < len(batch.sequences):
                feed = [feed[row] for row in keep]
                batch.keep(keep)
                batch.trim()
            if all(token is None for token in feed):  # every sequence waits on a tool
                running = [s.tool for s in batch.sequences if s.tool is not None]
                if not running:
                    raise RuntimeError("no sequence of the batch can step")
                wait_for_futures(running, return_when="FIRST_COMPLETED")
                batch.fresh = [False] * len(batch.sequences)
                continue
            real = torch.tensor([token is not None for token in feed], device=device, dtype=torch.long)
            step = torch.tensor([[engine.pad_id if token is None else token] for token in feed], device=device)
            batch.mask = torch.cat([batch.mask, real[:, None]], 1)
            self.widest = max(self.widest, batch.mask.shape[1])
            # Without padding or masked steps, every row attends to all it has: no mask to build.
            mask = None if bool(batch.mask.all()) else batch.mask
            output = engine.model(input_ids=step, attention_mask=mask, position_ids=batch.lengths[:, None],
                                  cache=batch.cache, use_cache=True)
            batch.cache, batch.logits = output.cache, output.logits[:, -1].float()
            batch.lengths = batch.lengths + real
            batch.fresh = real.bool().tolist()

    def _inputs(self, batch: _Batch) -> list[int | None]:
        """The token each sequence feeds at this step (None: finished, or a masked step while its tool runs):
        forced tool-output tokens, or tokens sampled for all the others at once."""
        feed, sampling = [], []
        for row, sequence in enumerate(batch.sequences):
            token = self._forced_input(sequence)
            if token is None and not sequence.finished and not sequence.waiting and batch.fresh[row]:
                sampling.append(row)
            feed.append(token)
        if sampling:
            logits = batch.logits[sampling]
            logits[:, self.engine.tool_output_ids] = float("-inf")  # the engine writes tool outputs
            if self.suppressed is not None:  # without tools, the model answers in its own words
                without = [i for i, row in enumerate(sampling) if batch.sequences[row].job.tool_calls == "suppress"]
                logits[without, self.suppressed] = float("-inf")
                calling = [i for i, row in enumerate(sampling) if batch.sequences[row].call_open]
                if calling:  # a call, once opened, is closed before the turn can end (see open_calls)
                    logits[torch.tensor(calling)[:, None], torch.tensor(self.engine.stop_ids)] = float("-inf")
            chosen = [batch.sequences[row] for row in sampling]
            tokens = sample_tokens(logits, [s.job.params for s in chosen], [s.generator for s in chosen])
            for row, sequence, token in zip(sampling, chosen, tokens):
                sequence.sampled(token, self.tools)
                if not sequence.finished and self.context and sequence.length >= self.context:
                    sequence.finish("length")  # no position left to feed the token at
                feed[row] = None if sequence.finished else self._fed(sequence, token)
        return feed

    def _forced_input(self, sequence: _Sequence) -> int | None:
        """A tool-output token the sequence must feed next, if any (ending it if its client went away)."""
        if sequence.finished:
            return None
        if sequence.job.cancelled.is_set():
            sequence.finish("cancelled")
            return None
        if sequence.tool is not None and not sequence.waiting:
            sequence.tool_returned()
        return self._fed(sequence, sequence.forced.popleft()) if sequence.forced else None

    @staticmethod
    def _fed(sequence: _Sequence, token: int) -> int:
        sequence.length += 1
        return token


def chat_many(engine: Engine, conversations: list[list[dict]], params: SamplingParams = SamplingParams(),
              use_tools: bool = True, max_batch: int = 64, desc: str | None = None,
              n: int = 1) -> list[list[ChatEvent]]:
    """The events of the assistant's ``n`` replies to each conversation (conversation i's are items ``i*n`` to
    ``i*n+n-1``), as :meth:`Engine.chat` yields them, the conversations decoded together (``max_batch`` replies at
    a time, each pausing for its own tool calls: on 2 CPU cores SmolLM2-135M's replies come 1.2–1.3× faster at 64
    than at 32). Seeded ``params`` draw conversation i's replies with seeds ``seed + i*n`` onwards. The ``done``
    event's ``text`` is the reply's text (tool calls and outputs are their own events)."""
    tools = "run" if use_tools and engine.toolbox and engine.tools_supported else "suppress"
    replies: list[list[ChatEvent]] = [[] for _ in range(len(conversations) * n)]
    finished: queue.Queue[int] = queue.Queue()

    def collector(row: int) -> Callable[[int, ChatEvent], None]:
        def emit(index: int, event: ChatEvent) -> None:
            replies[row * n + index].append(event)
            if event.kind == "done":
                finished.put(row)
        return emit

    jobs = []
    for row, messages in enumerate(conversations):
        ids = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
        seeded = params if params.seed is None else replace(params, seed=params.seed + row * n)
        jobs.append(Job(list(ids), seeded, collector(row), n=n, tool_calls=tools))
    batcher = Batcher(engine, max_batch=max_batch, jobs=jobs)
    try:
        for _ in tqdm(replies, desc=desc, leave=False, disable=desc is None):
            finished.get()
    finally:
        batcher.close()
    for events in replies:
        done = events[-1]
        if done.finish_reason == "error":
            raise RuntimeError(f"batched generation failed: {done.text}")
        done.text = "".join(event.text for event in events if event.kind == "text")
    return replies


__all__ = ["TOOL_CALLS", "Batcher", "Job", "chat_many"]
