"""The policy's replies that the preference set ranks, sampled as the preference-data stage samples them
(``sample_policy``: ``policy_samples`` replies of each prompt through the continuous batcher, each row taking the
next reply as soon as its own has ended) against the reference of padded batches (``Engine.generate_ids`` on
``policy_batch_size`` prompts at a time, every batch stepping until its longest reply is done or cut off).

Prints prompts a minute of each, the median per-round ratio (above 1.0: the batcher is faster), and each
variant's share of replies that reached their end of turn (the ones ranked) and their mean length in words: other
draws from the same distribution.

    python bench/policy_sampling.py --policy runs/smollm2/sft-probe \
        --prompts runs/smollm2/preference-data/rankings_train.jsonl
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from side_by_side import report  # noqa: E402

from chatforge.inference.engine import Engine, SamplingParams  # noqa: E402
from chatforge.io import read_jsonl  # noqa: E402
from chatforge.tasks.preferences import PreferenceDataConfig, sample_policy  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="a chat model folder")
    parser.add_argument("--prompts", required=True, help="a JSONL file of records with a `prompt` (messages)")
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1)
    return parser.parse_args()


def padded_batches(policy: str, prompts: list[list[dict]], config: PreferenceDataConfig) -> list[tuple[str, ...]]:
    """The reference: batches of ``config.policy_batch_size`` prompts, each sampled ``policy_samples`` times."""
    engine = Engine.from_pretrained(policy)
    params = SamplingParams(temperature=config.policy_temperature, top_k=None, top_p=1.0,
                            max_new_tokens=config.policy_max_new_tokens, seed=config.seed)
    stops, n, replies = set(engine.stop_ids), config.policy_samples, []
    for start in range(0, len(prompts), config.policy_batch_size):
        batch = [engine.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                      return_dict=False)
                 for prompt in prompts[start:start + config.policy_batch_size]]
        generated = engine.generate_ids(batch, params, n)
        for row in range(len(batch)):
            finished = [ids for ids in generated[row * n:(row + 1) * n] if ids and ids[-1] in stops]
            replies.append(tuple(engine.tokenizer.batch_decode(finished, skip_special_tokens=True)))
    return replies


def main() -> None:
    args = parse_args()
    prompts = [record["prompt"] for record in read_jsonl(args.prompts, limit=args.limit)]
    config = PreferenceDataConfig()
    variants = {"batcher": lambda: sample_policy(args.policy, prompts, config),
                "padded": lambda: padded_batches(args.policy, prompts, config)}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    replies: dict[str, list[tuple[str, ...]]] = {}
    for round_index in range(args.rounds):
        for name in list(variants) if round_index % 2 == 0 else list(reversed(variants)):
            start = time.perf_counter()
            replies[name] = variants[name]()
            rates[name].append(60 * len(prompts) / (time.perf_counter() - start))
    print(f"{len(prompts)} prompts, {config.policy_samples} samples each at temperature {config.policy_temperature}, "
          f"at most {config.policy_max_new_tokens} tokens, {torch.get_num_threads()} threads")
    report(rates, "prompts a minute", "batcher", "padded")
    for name, sampled in replies.items():
        finished = [reply for row in sampled for reply in row]
        words = sum(len(reply.split()) for reply in finished) / max(1, len(finished))
        print(f"{name:>12}: {len(finished) / (len(prompts) * config.policy_samples):.1%} of the replies reached "
              f"their end of turn, {words:.1f} words on average")


if __name__ == "__main__":
    main()
