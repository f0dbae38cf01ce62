"""The sampling engine: seeded, batched, streaming generation on ``model.generate`` (KV cache), and
tool-aware chat that pauses at a tool call, runs the tool and continues on the same cache."""

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from queue import Queue

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessorList
from transformers.generation.streamers import BaseStreamer

from ..errors import InvalidValue
from ..tokenization.tokenization_chatforge import (
    ENDOFTEXT,
    IM_END,
    TOOL_CALL_END,
    TOOL_CALL_START,
    TOOL_OUTPUT_END,
    TOOL_OUTPUT_START,
)
from ..tools import Toolbox, format_tool_output, parse_tool_call
from ..tools.errors import ToolError
from .detokenize import IncrementalText
from .growing_cache import fits_generation, growing_cache
from .inverse_transform import InverseTransformSampler, as_greedy_with_sampler
from .open_calls import CloseOpenCalls
from .packed_linear import packed_linears
from .prompt_cache import prefilled_cache


@dataclass
class SamplingParams:
    """How to sample. ``temperature=0`` is greedy decoding; ``top_k`` None or 0 and ``top_p`` None or 1 keep the
    whole distribution (no default of the model's or of transformers' applies); ``seed`` makes sampling
    reproducible."""

    max_new_tokens: int = 256
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = 1.0
    repetition_penalty: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None

    def __post_init__(self):
        for name, bad in (("max_new_tokens", self.max_new_tokens < 1), ("temperature", self.temperature < 0),
                          ("top_k", self.top_k is not None and self.top_k < 0),
                          ("top_p", self.top_p is not None and not 0 < self.top_p <= 1),
                          ("repetition_penalty", self.repetition_penalty <= 0)):
            if bad:
                raise InvalidValue(f"SamplingParams.{name}={getattr(self, name)!r} is out of range")


@dataclass
class ChatEvent:
    """One step of a chat reply: ``text`` (a streamed piece), ``tool_call``, ``tool_output`` or ``done`` (with
    ``finish_reason``, the ``stop_token`` that ended it, the number of ``tokens`` generated, and ``open_call``:
    whether the token budget ran out on a tool call the model had opened, which was never run)."""

    kind: str
    text: str = ""
    tool: str | None = None
    finish_reason: str | None = None
    stop_token: str | None = None
    tokens: int = 0
    open_call: bool = False


class _TokenQueue(BaseStreamer):
    """Receives generated token ids from ``generate`` (in another thread) and hands them over one by one."""

    def __init__(self):
        self.queue: Queue = Queue()
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.queue.put(token)

    def end(self) -> None:
        self.queue.put(None)


def end_of_turn_token(tokenizer) -> str | None:
    """The special token the chat template puts right after an assistant message (``<|im_end|>`` for
    ChatForge, ``<|eot_id|>`` for Llama 3), or None when there is no template or no such token."""
    if tokenizer.chat_template is None:
        return None
    marker = "§reply§"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": marker}], tokenize=False)
    following = rendered.split(marker, 1)[-1]
    return next((token for token in tokenizer.all_special_tokens if following.startswith(token)), None)


def tool_token_ids(tokenizer) -> list[int]:
    """The ids of the tokens that open a tool call or frame its output, where the vocabulary has them: what a
    generation without a tool loop must not write, since no call it opened would be answered."""
    vocab = tokenizer.get_vocab()
    return [vocab[token] for token in (TOOL_CALL_START, TOOL_OUTPUT_START, TOOL_OUTPUT_END) if token in vocab]


class Engine:
    """Generation for a causal LM and its tokenizer, with optional tools for chat."""

    def __init__(self, model, tokenizer, toolbox: Toolbox | None = None, max_tool_calls: int = 4,
                 synced_processes: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.toolbox = toolbox
        self.max_tool_calls = max_tool_calls
        # every process generates until all are done: where each forward pass gathers sharded parameters (FSDP)
        self.synced_processes = synced_processes
        vocab = tokenizer.get_vocab()
        self.tool_call_start_id, self.tool_call_end_id = vocab.get(TOOL_CALL_START), vocab.get(TOOL_CALL_END)
        self.tools_supported = self.tool_call_end_id is not None and self.tool_call_start_id is not None
        # a tool's output is the engine's to write, never the model's
        self.tool_output_ids = [vocab[token] for token in (TOOL_OUTPUT_START, TOOL_OUTPUT_END) if token in vocab]
        self.plain_suppressed_ids = tool_token_ids(tokenizer)  # what a continuation without the tool loop cannot write
        configured = model.generation_config.eos_token_id
        configured = [configured] if isinstance(configured, int) else list(configured or [])
        self.end_of_turn = end_of_turn_token(tokenizer)
        named = [vocab[token] for token in (ENDOFTEXT, IM_END, self.end_of_turn) if token in vocab]
        self.stop_ids = sorted({*configured, *named, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None
                                                       else [])})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        # a call, once opened, is closed before the turn can end
        self.logits_processors = LogitsProcessorList([CloseOpenCalls(
            self.tool_call_start_id, self.tool_call_end_id, self.stop_ids)] if self.tools_supported else [])

    @classmethod
    def from_pretrained(cls, path: str, toolbox: Toolbox | None = None, device: str | None = None,
                        dtype: str | torch.dtype = "auto", **kwargs) -> "Engine":
        """Load a model folder or Hub id (ChatForge or any AutoModelForCausalLM)."""
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.to(device), tokenizer, toolbox=toolbox)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _generation_config(self, params: SamplingParams, max_new_tokens: int, stop_ids: list[int],
                           suppress: list[int] | None = None) -> tuple[GenerationConfig, LogitsProcessorList]:
        """The config and logits processors of one ``generate`` call; sampling is decoded greedily with the
        :class:`InverseTransformSampler` last (it draws from the same distribution as ``do_sample``)."""
        sampling = params.temperature > 0
        # generate() fills every unset (None) field from the model's generation config, then from transformers'
        # defaults (top_k=50): each warper is set here, to its no-op value unless ``params`` asks for it.
        warpers = dict(temperature=params.temperature, top_k=params.top_k or 0, top_p=params.top_p or 1.0,
                       min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0) if sampling else {}
        config, sampler = as_greedy_with_sampler(GenerationConfig(
            suppress_tokens=suppress or None, **warpers,
            max_new_tokens=max_new_tokens, do_sample=sampling,
            repetition_penalty=params.repetition_penalty, no_repeat_ngram_size=0,
            eos_token_id=stop_ids, pad_token_id=self.pad_id, stop_strings=list(params.stop) or None,
            return_dict_in_generate=True,
        ))
        return config, LogitsProcessorList([*self.logits_processors, *sampler])

    def _generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, config: GenerationConfig,
                  processors: LogitsProcessorList, cache=None, streamer: BaseStreamer | None = None):
        extra = {"tokenizer": self.tokenizer} if config.stop_strings else {}
        if cache is None and fits_generation(config):
            cache = growing_cache(self.model.config)
        fast_linears = contextlib.nullcontext() if self.synced_processes else packed_linears(self.model)
        with torch.inference_mode(), fast_linears:
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                                       cache=cache, streamer=streamer, synced_gpus=self.synced_processes or None,
                                       logits_processor=processors, **extra)

    @contextlib.contextmanager
    def _seeded(self, seed: int | None):
        """Seed sampling inside, leaving the caller's random number streams as they were."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            yield

    def generate_ids(self, prompts: Sequence[Sequence[int]], params: SamplingParams = SamplingParams(),
                     n: int = 1) -> list[list[int]]:
        """``n`` sampled continuations of each tokenized prompt (batched, left-padded), as token ids up to and
        including the first stop token (prompt i's samples are items ``i*n`` to ``i*n+n-1``)."""
        return self.generate_ids_with_logprobs(prompts, params, n, logprobs=False)[0]

    def generate_ids_with_logprobs(self, prompts: Sequence[Sequence[int]], params: SamplingParams = SamplingParams(),
                                   n: int = 1, logprobs: bool = True) -> tuple[list[list[int]], list[list[float]]]:
        """:meth:`generate_ids`, and the log-probability of each generated token under the distribution it was
        drawn from (temperature, truncation and suppressed tokens applied; empty lists with ``logprobs=False``).
        A plain continuation runs no tools, so it cannot open a tool call (:func:`tool_token_ids`)."""
        rows = [ids for ids in prompts for _ in range(n)]
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(rows):
            input_ids[row, width - len(ids):] = torch.as_tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
        config, processors = self._generation_config(params, params.max_new_tokens, self.stop_ids,
                                                     suppress=self.plain_suppressed_ids)
        config.output_scores = logprobs
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        cache = prefilled_cache(self.model, input_ids, attention_mask, config) if n > 1 else None
        with self._seeded(params.seed):
            output = self._generate(input_ids, attention_mask, config, processors, cache=cache)
        generated = output.sequences[:, width:]
        chosen = [[] for _ in range(len(generated))]
        if logprobs:  # scores[t]: the drawn token's log-probability where sampled, else the processed logits
            drawn = any(isinstance(processor, InverseTransformSampler) for processor in processors)
            chosen = torch.stack([(scores if drawn else torch.log_softmax(scores.float(), -1)).gather(
                -1, generated[:, t:t + 1]).squeeze(-1) for t, scores in enumerate(output.scores)], 1).tolist()
        stops = set(self.stop_ids)
        continuations, continuation_logprobs = [], []
        for row, row_logprobs in zip(generated.tolist(), chosen):
            end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
            while end and row[end - 1] == self.pad_id and row[end - 1] not in stops:
                end -= 1
            continuations.append(row[:end])
            continuation_logprobs.append(row_logprobs[:end])
        return continuations, continuation_logprobs

    def complete(self, prompts: Sequence[str], params: SamplingParams = SamplingParams(), n: int = 1,
                 add_special_tokens: bool = False) -> list[list[str]]:
        """``n`` sampled completions of each prompt (batched, left-padded), without the prompt."""
        ids = self.tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
        texts = self.tokenizer.batch_decode(self.generate_ids(ids, params, n), skip_special_tokens=True)
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    def chat_prompt(self, question: str) -> str:
        """The chat-template text of a one-question conversation, ready for the assistant's reply (for
        batched :meth:`complete` over many questions)."""
        return self.tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                                  tokenize=False)

    def _stream_ids(self, ids: list[int], config: tuple[GenerationConfig, LogitsProcessorList], cache,
                    outcome: dict) -> Iterator[int]:
        """Yield generated token ids as they come; at the end ``outcome`` holds ``sequence`` and ``cache``."""
        streamer, result, failure = _TokenQueue(), {}, []
        input_ids = torch.tensor([ids], device=self.device)

        def work():
            try:
                result["output"] = self._generate(input_ids, torch.ones_like(input_ids), *config, cache, streamer)
            except BaseException as error:  # handed to the consuming thread
                failure.append(error)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        while (token := streamer.queue.get()) is not None:
            yield token
        thread.join()
        if failure:
            raise failure[0]
        outcome["sequence"] = result["output"].sequences[0].tolist()
        outcome["cache"] = result["output"].cache

    def stream(self, prompt: str, params: SamplingParams = SamplingParams()) -> Iterator[str]:
        """Text pieces of one sampled completion of ``prompt``, as they are generated."""
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        config = self._generation_config(params, params.max_new_tokens, self.stop_ids)
        with self._seeded(params.seed):
            segment = IncrementalText(self.tokenizer, skip_special_tokens=True)
            for token in self._stream_ids(ids, config, cache=None, outcome={}):
                if token not in self.stop_ids and (piece := segment.add(token)):
                    yield piece
            if piece := segment.flush():
                yield piece

    def chat(self, messages: list[dict], params: SamplingParams = SamplingParams(),
             use_tools: bool = True) -> Iterator[ChatEvent]:
        """Stream the assistant's reply to ``messages``; with tools, each call is run and its output appended;
        without (``use_tools=False``, or no toolbox), ``<|tool_call_start|>`` cannot be generated.

        Ends with a ``done`` event whose text is the whole reply (tool exchanges included, the stop token
        excluded), ``finish_reason`` ``stop``, ``length`` or ``tool_calls`` (too many calls), and the
        ``stop_token`` that ended it.
        """
        tools = use_tools and bool(self.toolbox) and self.tools_supported
        # Without tools the model cannot open a call, so it has to answer in its own words.
        suppress = self.tool_output_ids + ([self.tool_call_start_id] if self.tools_supported and not tools else [])
        ids = list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                      return_dict=False))
        stop_ids = self.stop_ids + ([self.tool_call_end_id] if tools else [])
        budget, reply, outcome, finish, last = params.max_new_tokens, "", {"cache": None}, "length", None
        with self._seeded(params.seed):
            for calls in range(self.max_tool_calls + 1):
                segment, last, calling = IncrementalText(self.tokenizer), None, False
                config = self._generation_config(params, budget, stop_ids, suppress=suppress)
                for token in self._stream_ids(ids, config, outcome["cache"], outcome):
                    last = token
                    if token in self.stop_ids:
                        continue
                    piece = segment.add(token)
                    if calling or not piece:
                        continue
                    # The call itself is reported by the tool_call event, not as text.
                    piece, start, _ = piece.partition(TOOL_CALL_START)
                    calling = bool(start)
                    if piece:
                        yield ChatEvent("text", piece)
                piece = segment.flush()
                if not calling and piece:
                    yield ChatEvent("text", piece)
                ids = outcome["sequence"]
                reply += segment.text
                budget -= len(segment.ids)
                if last in self.stop_ids:
                    finish = "stop"
                    break
                if not (tools and last == self.tool_call_end_id) or budget <= 0:
                    break
                if calls == self.max_tool_calls:
                    finish = "tool_calls"
                    break
                try:
                    name, argument = parse_tool_call(segment.text)
                except ToolError as error:  # a call closed but never opened: the model is told, as for any failure
                    name, output = None, f"error: {error}"
                else:
                    yield ChatEvent("tool_call", argument, tool=name)
                    output = self.toolbox.run(name, argument)
                yield ChatEvent("tool_output", output, tool=name)
                appended = format_tool_output(output)
                reply += appended
                ids = ids + self.tokenizer(appended, add_special_tokens=False)["input_ids"]
        stop_token = self.tokenizer.convert_ids_to_tokens(last) if finish == "stop" else None
        yield ChatEvent("done", reply, finish_reason=finish, stop_token=stop_token,
                        tokens=params.max_new_tokens - budget + (finish == "stop"),  # the stop token counts
                        open_call=finish == "length" and calling)

    def reply(self, messages: list[dict], params: SamplingParams = SamplingParams(), use_tools: bool = True) -> str:
        """The whole assistant reply to ``messages`` (tool exchanges included)."""
        *_, done = self.chat(messages, params, use_tools)
        return done.text


__all__ = ["ChatEvent", "Engine", "SamplingParams"]
