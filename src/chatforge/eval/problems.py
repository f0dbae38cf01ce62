"""Held-out accuracy on problems with checkable answers: greedy pass@1, sampled pass@1 and pass@k."""

from collections.abc import Sequence
from math import comb

from tqdm.auto import tqdm

from ..inference.engine import Engine, SamplingParams
from ..tasks.verifiable import is_correct_answer


def pass_at_k(samples: int, correct: int, k: int) -> float:
    """The unbiased pass@k estimate from ``samples`` draws of which ``correct`` were right (Chen et al. 2021)."""
    if samples - correct < k:
        return 1.0
    return 1.0 - comb(samples - correct, k) / comb(samples, k)


def problem_accuracy(engine: Engine, problems: Sequence[dict], k: int = 8, temperature: float = 1.0,
                     max_new_tokens: int = 96, batch_size: int = 16, seed: int = 0) -> dict:
    """Greedy pass@1, and pass@1 / pass@k over ``k`` samples at ``temperature`` per problem; the mean reply
    length in tokens (greedy)."""
    prompts = [engine.tokenizer.apply_chat_template(p["prompt"], add_generation_prompt=True, tokenize=False)
               for p in problems]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    sampled = SamplingParams(temperature=temperature, top_k=None, max_new_tokens=max_new_tokens, seed=seed)
    greedy_right, pass1, passk, lengths = 0, 0.0, 0.0, []
    for start in tqdm(range(0, len(prompts), batch_size), desc="problems", leave=False):
        batch, answers = prompts[start:start + batch_size], [p["answer"] for p in problems[start:start + batch_size]]
        for (reply,), answer in zip(engine.complete(batch, greedy), answers):
            greedy_right += is_correct_answer(reply, answer)
            lengths.append(len(engine.tokenizer(reply, add_special_tokens=False)["input_ids"]))
        for replies, answer in zip(engine.complete(batch, sampled, n=k), answers):
            right = sum(is_correct_answer(reply, answer) for reply in replies)
            pass1 += pass_at_k(k, right, 1)
            passk += pass_at_k(k, right, k)
    count = max(1, len(problems))
    return {"pass@1_greedy": greedy_right / count, "pass@1": pass1 / count, f"pass@{k}": passk / count,
            "problems": len(problems), "mean_reply_tokens": sum(lengths) / max(1, len(lengths))}
