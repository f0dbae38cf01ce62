"""Held-out accuracy on problems with checkable answers: greedy pass@1, sampled pass@1 and pass@k."""

from collections.abc import Sequence
from math import comb

from ..inference.batching import chat_many
from ..inference.engine import Engine, SamplingParams
from ..tasks.verifiable import is_correct_answer


def pass_at_k(samples: int, correct: int, k: int) -> float:
    """The unbiased pass@k estimate from ``samples`` draws of which ``correct`` were right (Chen et al. 2021)."""
    if samples - correct < k:
        return 1.0
    return 1.0 - comb(samples - correct, k) / comb(samples, k)


def problem_accuracy(engine: Engine, problems: Sequence[dict], k: int = 8, temperature: float = 1.0,
                     max_new_tokens: int = 96, max_batch: int = 64, seed: int = 0) -> dict:
    """Greedy pass@1, and pass@1 / pass@k over ``k`` samples at ``temperature`` per problem; the mean reply
    length in tokens (greedy). Replies are decoded ``max_batch`` at a time, each row taking the next reply as
    soon as its own has ended."""
    conversations = [problem["prompt"] for problem in problems]
    greedy = chat_many(engine, conversations, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens),
                       use_tools=False, max_batch=max_batch, desc="problems (greedy)")
    sampled = chat_many(engine, conversations, SamplingParams(temperature=temperature, top_k=None,
                                                              max_new_tokens=max_new_tokens, seed=seed),
                        use_tools=False, max_batch=max_batch, desc=f"problems ({k} samples)", n=k)
    greedy_right, pass1, passk, lengths = 0, 0.0, 0.0, []
    for index, problem in enumerate(problems):
        reply = greedy[index][-1].text
        greedy_right += is_correct_answer(reply, problem["answer"])
        lengths.append(len(engine.tokenizer(reply, add_special_tokens=False)["input_ids"]))
        samples = sampled[index * k:(index + 1) * k]
        right = sum(is_correct_answer(events[-1].text, problem["answer"]) for events in samples)
        pass1 += pass_at_k(k, right, 1)
        passk += pass_at_k(k, right, k)
    count = max(1, len(problems))
    return {"pass@1_greedy": greedy_right / count, "pass@1": pass1 / count, f"pass@{k}": passk / count,
            "problems": len(problems), "mean_reply_tokens": sum(lengths) / max(1, len(lengths))}
