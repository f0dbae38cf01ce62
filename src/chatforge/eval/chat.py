"""Held-out checks of a chat model: does it answer in the chat format, and solve word problems
(with and without its tools)?"""

from collections.abc import Sequence

from tqdm.auto import tqdm

from ..inference.engine import Engine, SamplingParams
from ..posttrain.word_problems import extract_answer
from ..tokenization.tokenization_chatforge import IM_END, IM_START

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=96)


def format_adherence(engine: Engine, prompts: Sequence[list[dict]], params: SamplingParams = GREEDY,
                     examples: int = 3) -> dict:
    """Share of replies that are non-empty, start no new turn and end with ``<|im_end|>`` within the token
    budget; a few (prompt, reply) pairs for the report."""
    adherent, shown = 0, []
    for messages in tqdm(prompts, desc="format adherence", leave=False):
        *_, last = engine.chat(messages, params, use_tools=False)
        ok = last.stop_token == IM_END and bool(last.text.strip()) and IM_START not in last.text
        adherent += ok
        if len(shown) < examples:
            shown.append({"prompt": messages[-1]["content"], "reply": last.text, "adherent": ok})
    return {"format_adherence": adherent / max(1, len(prompts)), "prompts": len(prompts), "examples": shown}


def word_problem_accuracy(engine: Engine, problems: Sequence[dict], use_tools: bool,
                          params: SamplingParams = GREEDY) -> dict:
    """Share of problems whose reply states the right answer (``The answer is N``); ``tool_calls`` counts
    replies that used a tool."""
    correct, calls = 0, 0
    desc = f"word problems ({'with' if use_tools else 'without'} tools)"
    for problem in tqdm(problems, desc=desc, leave=False):
        events = list(engine.chat([{"role": "user", "content": problem["question"]}], params, use_tools=use_tools))
        calls += any(event.kind == "tool_call" for event in events)
        correct += extract_answer(events[-1].text) == problem["answer"]
    return {"accuracy": correct / max(1, len(problems)), "problems": len(problems), "tool_calls": calls}
