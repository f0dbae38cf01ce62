"""Held-out checks of a chat model: does it answer in the chat format, solve word problems and questions that need
a program (with and without its tools), and know what it knows?"""

from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from ..inference.batching import chat_many
from ..inference.engine import ChatEvent, Engine, SamplingParams
from ..tasks.sft_data import stated_result
from ..tasks.word_problems import extract_answer
from ..tasks.world import is_correct, says_dont_know
from ..tokenization.tokenization_chatforge import IM_START
from .intervals import wilson_interval

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=96)


def format_adherence(engine: Engine, prompts: Sequence[list[dict]], params: SamplingParams = GREEDY,
                     examples: int = 3) -> dict:
    """Share of replies that are non-empty, start no new turn and end with the template's end-of-turn token
    (``<|im_end|>`` for ChatForge) within the token budget; a few (prompt, reply) pairs for the report. The
    model's tools run as in a chat (where it has them): a prompt taught with a tool call is asked as it is used,
    not with the call suppressed."""
    adherent, shown = 0, []
    replies = chat_many(engine, list(prompts), params, use_tools=True, desc="format adherence")
    for messages, (*_, last) in zip(prompts, replies):
        ended = last.finish_reason == "stop" and engine.end_of_turn in (None, last.stop_token)
        ok = ended and bool(last.text.strip()) and IM_START not in last.text
        adherent += ok
        if len(shown) < examples:
            shown.append({"prompt": messages[-1]["content"], "reply": last.text, "adherent": ok})
    return {"format_adherence": adherent / max(1, len(prompts)), "prompts": len(prompts),
            "interval_95": list(wilson_interval(adherent, len(prompts))), "examples": shown}


def tool_task_accuracy(engine: Engine, tasks: Sequence[dict], judge: Callable[[str, dict], bool], name: str,
                       params: SamplingParams = GREEDY,
                       diagnostics: dict[str, Callable[[list[ChatEvent], dict], bool]] | None = None) -> dict:
    """Share of tasks (``question`` + reference) whose reply ``judge`` accepts, asked with the model's tools
    (``with_tools``) and without them (``without_tools``); ``tool_calls`` counts the replies that called a tool;
    each of ``diagnostics`` (a test of a reply's events) adds the share it holds for with tools. The tasks are
    generated together, each pausing for its own tool calls. Greedy, a reply that never chose the call token (it
    touched no tool, and did not run out of tokens inside a call) is the reply without tools too (that token is all
    that is withheld), so only the others are generated again."""
    conversations = [[{"role": "user", "content": task["question"]}] for task in tasks]
    with_tools = chat_many(engine, conversations, params, use_tools=True, desc=f"{name} (with tools)")
    redo = [row for row, events in enumerate(with_tools)
            if params.temperature > 0 or _touched_a_tool(events) or events[-1].open_call
            or events[-1].finish_reason not in ("stop", "length")]
    without_tools = list(with_tools)
    again = chat_many(engine, [conversations[row] for row in redo], params, use_tools=False,
                      desc=f"{name} (without tools, {len(redo)} of {len(tasks)} replies differ)")
    for row, events in zip(redo, again):
        without_tools[row] = events
    return {"with_tools": _scored(tasks, with_tools, judge, diagnostics or {}),
            "without_tools": _scored(tasks, without_tools, judge, {})}


def _touched_a_tool(events: list[ChatEvent]) -> bool:
    return any(event.kind in ("tool_call", "tool_output") for event in events)


def _scored(tasks: Sequence[dict], replies: list[list[ChatEvent]], judge: Callable[[str, dict], bool],
            diagnostics: dict[str, Callable[[list[ChatEvent], dict], bool]]) -> dict:
    correct = sum(judge(events[-1].text, task) for task, events in zip(tasks, replies))
    held = {key: sum(test(events, task) for task, events in zip(tasks, replies)) for key, test in diagnostics.items()}
    return {"accuracy": correct / max(1, len(tasks)), "tasks": len(tasks),
            "interval_95": list(wilson_interval(correct, len(tasks))),
            "tool_calls": sum(any(event.kind == "tool_call" for event in events) for events in replies),
            **{key: count / max(1, len(tasks)) for key, count in held.items()}}


def _without_spaces(text: str) -> str:
    return "".join(text.split())


def call_copies_expression(events: list[ChatEvent], problem: dict) -> bool:
    """Whether a calculator call holds the problem's expression, numbers copied right from the question."""
    return any(event.kind == "tool_call" and _without_spaces(event.text) == _without_spaces(problem["expression"])
               for event in events)


def answer_copies_tool_output(events: list[ChatEvent], problem: dict) -> bool:
    """Whether the stated answer is the last tool output, copied right (whatever the call computed)."""
    outputs = [event.text.strip() for event in events if event.kind == "tool_output"]
    return bool(outputs) and extract_answer(events[-1].text) == outputs[-1]


def word_problem_accuracy(engine: Engine, problems: Sequence[dict]) -> dict:
    """Word problems: right when the reply's ``The answer is N`` matches. With tools, where the problems carry
    their ``expression``, also the shares of replies that copy it into the call and copy the call's result
    into the answer: the two steps where small models fail."""
    diagnostics = ({"calls_copy_expression": call_copies_expression,
                    "answers_copy_tool_output": answer_copies_tool_output}
                   if all("expression" in problem for problem in problems) else None)
    return tool_task_accuracy(engine, problems, lambda reply, p: extract_answer(reply) == p["answer"],
                              "word problems", diagnostics=diagnostics)


def look_up_accuracy(engine: Engine, requests: Sequence[dict]) -> dict:
    """Look-ups of people: right when the reply states the reference fact."""
    return tool_task_accuracy(engine, requests, lambda reply, r: is_correct(reply, r["answer"]), "look-ups")


def python_accuracy(engine: Engine, problems: Sequence[dict]) -> dict:
    """Questions that need a program: right when the reply's ``The result is ...`` is the program's output. The
    budget leaves room for a program and a long result (a factorial), besides the sentence around them."""
    return tool_task_accuracy(engine, problems, lambda reply, p: stated_result(reply) == p["answer"],
                              "python problems", params=SamplingParams(temperature=0.0, max_new_tokens=192))


def knowledge(engine: Engine, questions: Sequence[dict], params: SamplingParams = GREEDY) -> dict:
    """Per group of questions (the fictional world's frequent / rare / unseen people, or known / unknown as a probe
    found): the share answered correctly and the share answered "I don't know", each with its 95% interval, and
    the questions answered right (``right_questions``, for :func:`kept_right`)."""
    prompts = [engine.chat_prompt(q["question"]) for q in questions]
    replies = [batch[0] for start in tqdm(range(0, len(prompts), 32), desc="knowledge", leave=False)
               for batch in engine.complete(prompts[start:start + 32], params)]
    figures: dict = {}
    for question, reply in zip(questions, replies):
        group = figures.setdefault(question.get("group", "all"), {"questions": 0, "accuracy": 0.0,
                                                                   "dont_know_rate": 0.0, "right_questions": []})
        group["questions"] += 1
        if is_correct(reply, question["answer"]):
            group["accuracy"] += 1
            group["right_questions"].append(question["question"])
        group["dont_know_rate"] += says_dont_know(reply)
    for group in figures.values():
        for share in ("accuracy", "dont_know_rate"):
            group[f"{share}_interval_95"] = list(wilson_interval(round(group[share]), group["questions"]))
            group[share] /= group["questions"]
    return figures


def kept_right(before: dict, after: dict) -> None:
    """Add to each group of ``after`` (:func:`knowledge`'s figures of a model after training) the share of the
    questions that the model before training (``before``, on the same questions) answered right that it still
    answers right: ``kept_right`` of ``right_before`` questions, with its 95% interval."""
    for name, group in after.items():
        right_before = before.get(name, {}).get("right_questions")
        if not right_before:
            continue
        kept = len(set(right_before) & set(group["right_questions"]))
        group |= {"right_before": len(right_before), "kept_right": kept / len(right_before),
                  "kept_right_interval_95": list(wilson_interval(kept, len(right_before)))}
