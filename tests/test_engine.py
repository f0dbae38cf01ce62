import copy
import io
import time

import pytest
import torch
from conftest import assert_drawn_from, learn_texts, memorize

from chatforge.eval.chat import format_adherence
from chatforge.inference.batching import Batcher, Job, chat_many
from chatforge.inference.chat_cli import chat_loop
from chatforge.inference.engine import Engine, SamplingParams, end_of_turn_token, tool_token_ids
from chatforge.inference.open_calls import open_call_rows
from chatforge.inference.prompts import assistant_prompt, few_shot_prompt
from chatforge.tools import default_toolbox, tool_exchange

QUESTION = "What is 123 * 456?"
# The recorded output is wrong on purpose: only an engine that really runs the tool can show 56088.
TRAINED_REPLY = "Let me compute. " + tool_exchange("calculator", "123 * 456", "11111") + "Done."
GREEDY = SamplingParams(temperature=0, max_new_tokens=40)


@pytest.fixture
def tool_model(model, tokenizer):
    """The tiny model after memorising one conversation that calls the calculator."""
    return memorize(model, tokenizer, [[{"role": "user", "content": QUESTION},
                                        {"role": "assistant", "content": TRAINED_REPLY}]])


def test_seeded_sampling_is_reproducible_and_samples_differ(model, tokenizer):
    engine = Engine(model, tokenizer)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)
    first = engine.complete(["The river", "In 1990 the"], params, n=3)
    assert first == engine.complete(["The river", "In 1990 the"], params, n=3)
    assert len(first) == 2 and all(len(samples) == 3 for samples in first)
    assert len(set(first[0])) > 1  # stochastic across the n samples


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_unrestricted_sampling_draws_from_the_model_softmax(model, tokenizer, temperature):
    """top_k=None samples from the whole distribution: neither transformers' default top_k (50) nor the
    truncation a model's own generation config asks for applies; truncation is detected by the same test."""
    model.generation_config.update(do_sample=True, top_k=5, top_p=0.5, min_p=0.1)  # as Hub chat models ship
    engine, draws = Engine(model, tokenizer), 4000
    prompt = tokenizer("The history of", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([prompt])).logits[0, -1].double() / temperature, -1)
    assert probs.sort(descending=True).values[:50].sum() < 0.8  # top-50 truncation would cut a fifth of the mass

    def engine_draws(top_k):
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=None, max_new_tokens=1, seed=0)
        return [(ids or [engine.pad_id])[0] for ids in engine.generate_ids([prompt], params, n=draws)]

    assert assert_drawn_from(engine_draws(None), probs) > 1e-3
    assert assert_drawn_from(engine_draws(0), probs) > 1e-3
    assert assert_drawn_from(engine_draws(50), probs) < 1e-6


def test_samples_of_a_prompt_run_it_once_and_continue_as_it_alone(model, tokenizer):
    """Three samples each of two prompts of different lengths: each distinct prompt but its last token runs once,
    then every row's last token, and each row continues as its prompt alone does (greedy, the same log-probabilities
    of its tokens)."""
    engine = Engine(model, tokenizer)
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"]
               for text in ("The river", "In 1990 the history of")]
    params = SamplingParams(temperature=0, max_new_tokens=12)
    alone = [engine.generate_ids_with_logprobs([prompt], params) for prompt in prompts]
    shapes = []
    hook = model.get_input_embeddings().register_forward_hook(lambda module, args, output: shapes.append(
        tuple(args[0].shape)))
    samples, logprobs = engine.generate_ids_with_logprobs(prompts, params, n=3)
    hook.remove()
    assert samples == [alone[0][0][0]] * 3 + [alone[1][0][0]] * 3
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor([alone[0][1][0]] * 3 + [alone[1][1][0]] * 3),
                               atol=1e-5, rtol=0)
    assert shapes[:2] == [(2, max(map(len, prompts)) - 1), (6, 1)]


def test_sampled_tokens_log_probabilities_are_those_of_the_sampling_distribution(model, tokenizer):
    engine = Engine(model, tokenizer)
    prompt = tokenizer("The history of", add_special_tokens=False)["input_ids"]
    params = SamplingParams(temperature=0.7, top_k=None, max_new_tokens=6, seed=1)
    (reply,), (logprobs,) = engine.generate_ids_with_logprobs([prompt], params)
    assert (reply,) == tuple(engine.generate_ids([prompt], params))
    with torch.no_grad():
        logits = model(torch.tensor([prompt + reply])).logits[0, len(prompt) - 1:-1].double() / 0.7
    logits[:, tool_token_ids(tokenizer)] = float("-inf")  # a plain continuation cannot open a tool call
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(reply).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(torch.tensor(logprobs, dtype=torch.double), expected, atol=1e-4, rtol=0)


def test_streamed_pieces_add_up_to_the_batched_greedy_completion(model, tokenizer):
    engine = Engine(model, tokenizer)
    params = SamplingParams(max_new_tokens=15, temperature=0)
    pieces = list(engine.stream("The history of", params))
    assert len(pieces) > 1
    assert "".join(pieces) == engine.complete(["The history of"], params)[0][0]
    # Left padding in a batch does not change a greedy completion.
    assert engine.complete(["A", "The history of"], params)[1][0] == "".join(pieces)


def test_stop_strings_and_parameter_checks(model, tokenizer):
    engine = Engine(model, tokenizer)
    full = engine.complete(["The"], SamplingParams(max_new_tokens=20, temperature=0))[0][0]
    stop = full.strip().split()[1]
    stopped = engine.complete(["The"], SamplingParams(max_new_tokens=20, temperature=0, stop=[stop]))[0][0]
    assert stopped.endswith(stop) and len(stopped) < len(full)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=1.5)


def test_chat_pauses_at_a_tool_call_runs_the_tool_and_continues(tool_model, tokenizer):
    engine = Engine(tool_model, tokenizer, toolbox=default_toolbox())
    events = list(engine.chat([{"role": "user", "content": QUESTION}], GREEDY))
    kinds = [event.kind for event in events]
    call, output, done = events[kinds.index("tool_call")], events[kinds.index("tool_output")], events[-1]
    assert (call.tool, call.text) == ("calculator", "123 * 456")
    assert output.text == "56088"
    assert done.finish_reason == "stop" and done.stop_token == "<|im_end|>"
    assert done.text == "Let me compute. " + tool_exchange("calculator", "123 * 456", "56088") + "Done."
    # Streamed text shows the prose, not the raw call tokens.
    assert "".join(e.text for e in events if e.kind == "text") == "Let me compute. Done."


def test_a_call_closed_but_never_opened_is_answered_with_an_error(model, tokenizer):
    broken = "<|tool_call_end|>Hello there."
    engine = Engine(memorize(model, tokenizer, [[{"role": "user", "content": QUESTION},
                                                 {"role": "assistant", "content": broken}]]),
                    tokenizer, toolbox=default_toolbox())
    events = list(engine.chat([{"role": "user", "content": QUESTION}], GREEDY))
    outputs = [event for event in events if event.kind == "tool_output"]
    assert outputs and outputs[0].tool is None and outputs[0].text.startswith("error: no <|tool_call_start|>")
    assert not any(event.kind == "tool_call" for event in events)
    assert events[-1].kind == "done" and events[-1].text.startswith("<|tool_call_end|><|tool_output_start|>error")


def _merged(events) -> list[tuple]:
    """Events as (kind, text, tool), consecutive text pieces joined; ``done`` as its finish reason, stop token
    and token count."""
    merged = []
    for event in events:
        if event.kind == "done":
            merged.append(("done", event.finish_reason, event.stop_token, event.tokens))
        elif event.kind == "text" and merged and merged[-1][0] == "text":
            merged[-1] = ("text", merged[-1][1] + event.text, None)
        else:
            merged.append((event.kind, event.text, event.tool))
    return merged


@pytest.mark.parametrize("use_tools", [True, False])
def test_conversations_decoded_together_reply_as_each_alone(model, tokenizer, use_tools):
    trained = memorize(model, tokenizer, [[{"role": "user", "content": QUESTION},
                                           {"role": "assistant", "content": TRAINED_REPLY}],
                                          [{"role": "user", "content": "Hello!"},
                                           {"role": "assistant", "content": "Hi there, how can I help?"}]])
    engine = Engine(trained, tokenizer, toolbox=default_toolbox())
    conversations = [[{"role": "user", "content": text}] for text in (QUESTION, "Hello!", "Tell me a story", QUESTION)]
    together = chat_many(engine, conversations, GREEDY, use_tools=use_tools, max_batch=3)
    alone = [list(engine.chat(messages, GREEDY, use_tools=use_tools)) for messages in conversations]
    assert [_merged(events) for events in together] == [_merged(events) for events in alone]
    assert [events[-1].text for events in together] == [
        "".join(event.text for event in events if event.kind == "text") for events in alone]
    assert ("tool_output", "56088", "calculator") in _merged(together[0]) if use_tools else "56088" not in str(together)


def test_several_replies_to_each_conversation_are_drawn_apart_and_the_same_on_every_run(model, tokenizer):
    """Reply j to conversation i is drawn from seed ``seed + i*n + j``: the same alone as among the others."""
    engine = Engine(model, tokenizer)
    conversations = [[{"role": "user", "content": f"What is {number} plus 1?"}] for number in range(5)]
    params = SamplingParams(temperature=1.0, top_k=None, max_new_tokens=8, seed=3)
    replies = [[events[-1].text for events in chat_many(engine, conversations, params, use_tools=False, max_batch=4,
                                                        n=3)] for _ in range(2)]
    assert replies[0] == replies[1] and len(replies[0]) == 15
    assert all(len(set(replies[0][row * 3:row * 3 + 3])) > 1 for row in range(5))
    alone = chat_many(engine, conversations[2:3], SamplingParams(**{**vars(params), "seed": 3 + 2 * 3}),
                      use_tools=False, n=3)
    assert [events[-1].text for events in alone] == replies[0][6:9]


def _decode_jobs(engine: Engine, prompts: list[list[int]], budgets: list[int], max_batch: int
                 ) -> tuple[list[str], Batcher]:
    """Greedy replies to ``prompts`` (``budgets`` tokens each) through a batcher of ``max_batch`` rows."""
    replies = [[] for _ in prompts]
    batcher = Batcher(engine, max_batch=max_batch)
    try:
        for row, (prompt, budget) in enumerate(zip(prompts, budgets)):
            params = SamplingParams(max_new_tokens=budget, temperature=0)
            batcher.submit(Job(prompt, params, lambda _, event, row=row: replies[row].append(event)))
        while not all(events and events[-1].kind == "done" for events in replies):
            time.sleep(0.01)
    finally:
        batcher.close()
    return ["".join(event.text for event in events if event.kind == "text") for events in replies], batcher


def test_a_long_lived_batch_keeps_only_the_columns_its_rows_attend_to(model, tokenizer):
    """Twelve prompts through two rows, with replies of 4 to 8 tokens: most join as another leaves, and the
    batch's cache drops the columns of rows that left, so it stays about as wide as one prompt and its reply (it
    grew by a column a step, to the batch's whole run, before). Each reply is the one it gets alone."""
    engine = Engine(model, tokenizer)
    prompts = [tokenizer(f"Story {index}: once upon a time", add_special_tokens=False)["input_ids"]
               for index in range(12)]
    budgets = [4 + index % 5 for index in range(12)]
    together, batcher = _decode_jobs(engine, prompts, budgets, max_batch=2)
    assert batcher.joined >= 8
    assert batcher.widest <= max(map(len, prompts)) + max(budgets) + 1
    assert together == [_decode_jobs(engine, [prompt], [budget], max_batch=1)[0][0]
                        for prompt, budget in zip(prompts, budgets)]


def test_a_call_once_opened_must_close_before_the_turn_ends(model, tokenizer):
    """Taught to end its turn inside a call, the model cannot: the engine and the batcher keep end-of-turn tokens
    out while a call is open, so the reply runs on (to its budget, or to a call end) instead of stopping there."""
    unclosed = "<|tool_call_start|>calculator\n123 * 456"
    engine = Engine(memorize(model, tokenizer, [[{"role": "user", "content": QUESTION},
                                                 {"role": "assistant", "content": unclosed}]]),
                    tokenizer, toolbox=default_toolbox())
    alone = list(engine.chat([{"role": "user", "content": QUESTION}], GREEDY))
    together = chat_many(engine, [[{"role": "user", "content": QUESTION}]], GREEDY)[0]
    for events in (alone, together):
        assert events[-1].finish_reason != "stop" or any(event.kind == "tool_call" for event in events)
    ids = torch.tensor([[5, 9, 6, 9], [5, 9, 9, 9], [9, 9, 9, 9]])  # start=5, end=6: closed, open, none
    assert open_call_rows(ids, 5, 6).tolist() == [False, True, False]


def test_continuing_on_the_cache_matches_a_fresh_forward_pass(tool_model, tokenizer):
    engine = Engine(tool_model, tokenizer, toolbox=default_toolbox())
    messages = [{"role": "user", "content": QUESTION}]
    reply = engine.reply(messages, GREEDY)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    replay = tokenizer(reply.split("<|tool_output_end|>")[0] + "<|tool_output_end|>",
                       add_special_tokens=False)["input_ids"]
    fresh = tool_model.generate(torch.tensor([prompt + replay]), max_new_tokens=10, do_sample=False)
    assert tokenizer.decode(fresh[0, len(prompt) + len(replay):], skip_special_tokens=True) == "Done."


def test_without_tools_the_model_cannot_open_a_call(tool_model, tokenizer):
    engine = Engine(tool_model, tokenizer, toolbox=default_toolbox())
    reply = engine.reply([{"role": "user", "content": QUESTION}], GREEDY, use_tools=False)
    assert reply.startswith("Let me compute.") and "<|tool_call_start|>" not in reply and "56088" not in reply


def test_format_adherence_asks_a_prompt_taught_with_a_call_with_its_tools_running(tool_model, tokenizer):
    engine = Engine(tool_model, tokenizer, toolbox=default_toolbox())
    figures = format_adherence(engine, [[{"role": "user", "content": QUESTION}]], GREEDY)
    assert figures["format_adherence"] == 1.0
    assert figures["examples"][0]["reply"] == "Let me compute. Done."  # the call ran and the turn ended after it


def test_a_plain_continuation_cannot_open_a_call_it_could_not_have_answered(tool_model, tokenizer):
    engine = Engine(tool_model, tokenizer, toolbox=default_toolbox())
    messages = [{"role": "user", "content": QUESTION}]
    assert any(event.kind == "tool_call" for event in engine.chat(messages, GREEDY))  # the memorised reply calls
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    (reply,) = engine.generate_ids([prompt], GREEDY)  # no tool loop would answer a call here
    assert tokenizer.convert_tokens_to_ids("<|tool_call_start|>") not in reply
    assert tokenizer.decode(reply).startswith("Let me compute.")


def test_chat_cli_streams_turns_and_resets(tool_model, tokenizer):
    engine = Engine(tool_model, tokenizer, toolbox=default_toolbox())
    out = io.StringIO()
    messages = chat_loop(engine, GREEDY, system=None, lines=[QUESTION, "/reset", QUESTION, "/quit", "ignored"],
                         out=out)
    shown = out.getvalue()
    assert shown.count("[calculator] 123 * 456") == 2 and shown.count("[calculator ->] 56088") == 2
    assert "(conversation reset)" in shown and "ignored" not in shown
    assert [m["role"] for m in messages] == ["user", "assistant"]


def test_prompt_helpers_build_documents_a_base_model_continues():
    prompt = few_shot_prompt([("cat", "chat"), ("dog", "chien")], "bird", "English", "French")
    assert prompt.endswith("English: bird\nFrench:") and prompt.count("French:") == 3
    assert assistant_prompt("Why is the sky blue?").endswith("Human: Why is the sky blue?\nAssistant:")


def test_generate_command_prints_n_seeded_samples(saved_model_dir):
    import subprocess
    import sys

    command = [sys.executable, "-m", "chatforge.cli", "generate", str(saved_model_dir), "--prompt", "The river",
               "--n", "2", "--seed", "1", "--max-new-tokens", "8"]
    first = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert first.count("--- sample") == 2 and first.count("The river") == 2
    assert first == subprocess.run(command, capture_output=True, text=True, check=True).stdout


def test_the_end_of_turn_token_comes_from_the_chat_template(tokenizer):
    assert end_of_turn_token(tokenizer) == "<|im_end|>"
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert end_of_turn_token(tokenizer) is None


def test_the_model_never_writes_a_tool_output_itself(model, tokenizer):
    """A tool's output is the engine's to write: a model taught to make one up (its first reply token) writes
    something else, alone and in the batcher."""
    messages = [{"role": "user", "content": QUESTION}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    learn_texts(model, tokenizer, [prompt + "<|tool_output_start|>56088<|tool_output_end|>Done.<|im_end|>"], 60)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    first = model.generate(ids, max_new_tokens=1, do_sample=False)[0, -1].item()
    assert tokenizer.convert_ids_to_tokens(first) == "<|tool_output_start|>"  # what the model would write
    engine = Engine(model, tokenizer, toolbox=default_toolbox())
    for events in (list(engine.chat(messages, GREEDY)), chat_many(engine, [messages], GREEDY)[0]):
        assert not any(event.kind == "tool_output" for event in events)
        assert "<|tool_output_start|>" not in events[-1].text and events[-1].text  # it wrote something else
