"""Held-out checks of a chat model: does it answer in the chat format, solve word problems (with and
without its tools), and know what it knows?"""

from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from ..inference.engine import Engine, SamplingParams
from ..posttrain.word_problems import extract_answer
from ..posttrain.world import is_correct, says_dont_know
from ..tokenization.tokenization_chatforge import IM_START

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=96)


def format_adherence(engine: Engine, prompts: Sequence[list[dict]], params: SamplingParams = GREEDY,
                     examples: int = 3) -> dict:
    """Share of replies that are non-empty, start no new turn and end with the template's end-of-turn token
    (``<|im_end|>`` for ChatForge) within the token budget; a few (prompt, reply) pairs for the report."""
    adherent, shown = 0, []
    for messages in tqdm(prompts, desc="format adherence", leave=False):
        *_, last = engine.chat(messages, params, use_tools=False)
        ended = last.finish_reason == "stop" and engine.end_of_turn in (None, last.stop_token)
        ok = ended and bool(last.text.strip()) and IM_START not in last.text
        adherent += ok
        if len(shown) < examples:
            shown.append({"prompt": messages[-1]["content"], "reply": last.text, "adherent": ok})
    return {"format_adherence": adherent / max(1, len(prompts)), "prompts": len(prompts), "examples": shown}


def tool_task_accuracy(engine: Engine, tasks: Sequence[dict], use_tools: bool, judge: Callable[[str, dict], bool],
                       name: str, params: SamplingParams = GREEDY) -> dict:
    """Share of tasks (``question`` + reference) whose reply ``judge`` accepts; ``tool_calls`` counts the
    replies that called a tool."""
    correct, calls = 0, 0
    for task in tqdm(tasks, desc=f"{name} ({'with' if use_tools else 'without'} tools)", leave=False):
        events = list(engine.chat([{"role": "user", "content": task["question"]}], params, use_tools=use_tools))
        calls += any(event.kind == "tool_call" for event in events)
        correct += judge(events[-1].text, task)
    return {"accuracy": correct / max(1, len(tasks)), "tasks": len(tasks), "tool_calls": calls}


def word_problem_accuracy(engine: Engine, problems: Sequence[dict], use_tools: bool) -> dict:
    """Word problems: right when the reply's ``The answer is N`` matches."""
    return tool_task_accuracy(engine, problems, use_tools, lambda reply, p: extract_answer(reply) == p["answer"],
                              "word problems")


def look_up_accuracy(engine: Engine, requests: Sequence[dict], use_tools: bool) -> dict:
    """Look-ups of people: right when the reply states the reference fact."""
    return tool_task_accuracy(engine, requests, use_tools, lambda reply, r: is_correct(reply, r["answer"]),
                              "look-ups")


def knowledge(engine: Engine, questions: Sequence[dict], params: SamplingParams = GREEDY) -> dict:
    """Per group of the fictional world (frequent / rare / unseen people): the share of questions answered
    correctly and the share answered "I don't know"."""
    prompts = [engine.chat_prompt(q["question"]) for q in questions]
    replies = [batch[0] for start in tqdm(range(0, len(prompts), 32), desc="knowledge", leave=False)
               for batch in engine.complete(prompts[start:start + 32], params)]
    figures: dict = {}
    for question, reply in zip(questions, replies):
        group = figures.setdefault(question.get("group", "all"), {"questions": 0, "accuracy": 0.0,
                                                                   "dont_know_rate": 0.0})
        group["questions"] += 1
        group["accuracy"] += is_correct(reply, question["answer"])
        group["dont_know_rate"] += says_dont_know(reply)
    for group in figures.values():
        group["accuracy"] /= group["questions"]
        group["dont_know_rate"] /= group["questions"]
    return figures
