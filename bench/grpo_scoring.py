"""GRPO's training step as chatforge's PackedGRPOTrainer scores it, each distinct prompt run once
(``shared_prompts``) or every sequence packed into one row (``packed``), against TRL's fused head over the padded
grid (``padded_grid``: what GRPOTrainer does where Triton is missing).

All run the same step (log-probabilities and entropies of the completion tokens, a policy-gradient loss,
backward, AdamW) of the same model on the same batch, in rounds of rotating order so that machine noise hits
all alike. The batch is laid out as GRPOTrainer lays it out: ``--generations`` completions of each prompt,
prompts left-padded to the longest, completions right-padded to the longest. Prints the completion tokens scored
per second of each and the median per-round ratios against ``shared_prompts`` (above 1.0: it is faster).

A transformers model from a folder (``--model``, e.g. the smollm2 run's SmolLM2) scores the packed rows with
``sdpa_documents`` (each completion attended alone); ``packed_whole_row`` is the same packed step under ``sdpa``,
which attends over the whole row under a block-diagonal mask. ChatForge's model attends by document on a CPU with
plain ``sdpa``.

    python bench/grpo_scoring.py    # the tiny speedrun's GRPO shape: 4 prompts x 16 completions
    python bench/grpo_scoring.py --preset gpt2-124m --completions 16
    python bench/grpo_scoring.py --model runs/smollm2/sft-probe --completions 32 --generations 8 \
        --prompt-tokens 50 70 --completion-tokens 20 128 --temperature 1      # the smollm2 GRPO recipe's shape
"""

import argparse
import sys
from functools import partial
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

sys.path.insert(0, str(Path(__file__).parent))
from side_by_side import rates_in_alternating_rounds, report, training_model  # noqa: E402

from chatforge.inference.prompt_cache import find_shared_prompts  # noqa: E402
from chatforge.modeling import DOCUMENT_ATTENTION  # noqa: E402
from chatforge.posttrain.packed_scoring import (  # noqa: E402
    completion_logps_and_entropies,
    on_grid,
    pack_completions,
    scored_logps_and_entropies,
)
from chatforge.posttrain.shared_prompts import completion_logits  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model", default=None, help="a transformers model folder instead of --preset")
    parser.add_argument("--completions", type=int, default=64, help="completions per step")
    parser.add_argument("--generations", type=int, default=16, help="completions per prompt")
    parser.add_argument("--prompt-tokens", type=int, nargs=2, default=(34, 45), help="prompt length range")
    parser.add_argument("--completion-tokens", type=int, nargs=2, default=(20, 34), help="completion length range")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    return parser.parse_args()


def grpo_batch(args: argparse.Namespace, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Random prompts (left-padded, each ``generations`` times) and completions (right-padded) of lengths drawn
    from the given ranges."""
    generator = torch.Generator().manual_seed(0)
    groups = -(-args.completions // args.generations)
    prompts = torch.randint(args.prompt_tokens[0], args.prompt_tokens[1] + 1, (groups,), generator=generator)
    prompts = prompts.repeat_interleave(args.generations)[:args.completions]
    replies = torch.randint(args.completion_tokens[0], args.completion_tokens[1] + 1, (args.completions,),
                            generator=generator)
    width, keep = int(prompts.max()), int(replies.max())
    columns = torch.arange(width + keep)
    mask = ((columns >= width - prompts[:, None]) & (columns < width + replies[:, None])).long()
    prompt_ids = torch.randint(1, vocab_size, (groups, width + keep), generator=generator)
    prompt_ids = prompt_ids.repeat_interleave(args.generations, dim=0)[:args.completions]
    ids = torch.where(columns < width, prompt_ids, torch.randint(1, vocab_size, mask.shape, generator=generator))
    return ids * mask, mask, keep


def main() -> None:
    args = parse_args()
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation=DOCUMENT_ATTENTION).train()
    else:
        model = training_model(args.preset)
    add_fused_lm_head(model, temperature=args.temperature, outputs=("log_probs", "entropy"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids, mask, keep = grpo_batch(args, model.config.vocab_size)
    scored = mask[:, -keep:].bool()
    advantages = torch.randn(ids.shape[0], 1)

    def padded_grid() -> torch.Tensor:
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :-keep] = -100
        return model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs[:, -keep:]

    def packed() -> torch.Tensor:
        logps, _ = completion_logps_and_entropies(model, pack_completions(ids, mask, keep), args.temperature,
                                                  entropy_requires_grad=False)
        return logps

    def shared_prompts() -> torch.Tensor:
        shared = find_shared_prompts(ids, mask, keep)
        logits = completion_logits(model, model.config, ids, mask, keep, shared)
        logps, _ = scored_logps_and_entropies(logits[scored], ids[:, -keep:][scored], args.temperature,
                                              entropy_requires_grad=False)
        return on_grid(logps, scored)

    def step(score, attention: str) -> None:
        model.set_attn_implementation(attention)
        (-(score() * advantages)[scored].mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    attention = model.config._attn_implementation
    steps = {"shared_prompts": partial(step, shared_prompts, attention), "packed": partial(step, packed, attention),
             "padded_grid": partial(step, padded_grid, attention)}
    if attention == DOCUMENT_ATTENTION:
        steps["packed_whole_row"] = partial(step, packed, "sdpa")
    rates = rates_in_alternating_rounds(steps, args.rounds, args.steps, int(scored.sum()))
    print(f"{args.model or args.preset}, {ids.shape[0]} completions ({args.generations} a prompt), grid "
          f"{tuple(ids.shape)}, {int(mask.sum())} real tokens ({1 - mask.float().mean():.0%} padding), "
          f"{int(scored.sum())} scored, {torch.get_num_threads()} threads")
    report(rates, "completion tokens/s", "shared_prompts", *[name for name in steps if name != "shared_prompts"])


if __name__ == "__main__":
    main()
