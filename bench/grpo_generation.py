"""GRPO rollout throughput against the generate() call TRL's GRPOTrainer makes by default (each prompt repeated
``num_generations`` times, left-padded, one ``model.generate(do_sample=True)``): the same call decoded greedily
with the inverse-transform sampler (``inverse_transform``), that and each distinct prompt run once into the cache
the rows start from (``grpo_trainer``: what chatforge's GRPO trainer makes), and chatforge's sampling engine.

All three sample the same prompts at the same temperature; rounds rotate the order so machine noise hits each
alike. Prints completions/s of each and the median per-round ratio to TRL's call (above 1.0 means faster).

    python bench/grpo_generation.py --model runs/tiny/sft
    python bench/grpo_generation.py --preset tiny        # a randomly initialised model, no checkpoint needed
"""

import argparse
import random
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from chatforge.inference.engine import Engine, SamplingParams
from chatforge.inference.inverse_transform import as_greedy_with_sampler
from chatforge.modeling import ChatForgeForCausalLM, config_for_tokenizer, set_generation_defaults
from chatforge.posttrain.grpo_trainer import generating_with
from chatforge.tasks.word_problems import word_problem


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a model folder (default: --preset, randomly initialised)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--tokenizer", default="runs/tiny/tokenizer", help="tokenizer for --preset")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    return parser.parse_args()


def load(args):
    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    model = ChatForgeForCausalLM(config_for_tokenizer(tokenizer, args.preset))
    set_generation_defaults(model, tokenizer)
    return model, tokenizer


def main() -> None:
    args = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load(args)
    model = model.to(device).eval()
    engine = Engine(model, tokenizer)
    rng = random.Random(0)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": word_problem(rng, False).question}],
                                             add_generation_prompt=True, tokenize=True, return_dict=False)
               for _ in range(args.prompts)]
    params = SamplingParams(temperature=1.0, top_k=None, top_p=1.0, max_new_tokens=args.max_new_tokens)
    config = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=args.max_new_tokens,
                              eos_token_id=engine.stop_ids, pad_token_id=engine.pad_id, disable_compile=True)

    repeated = [ids for ids in prompts for _ in range(args.num_generations)]
    width = max(map(len, repeated))
    input_ids = torch.tensor([[engine.pad_id] * (width - len(ids)) + ids for ids in repeated], device=device)
    attention_mask = (torch.arange(width, device=device) >= torch.tensor(
        [width - len(ids) for ids in repeated], device=device)[:, None]).long()

    def generate_path(generation_config, processors):
        def run(seed: int) -> int:
            torch.manual_seed(seed)
            with torch.no_grad():
                output = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                        generation_config=generation_config,
                                        **({} if processors is None else {"logits_processor": processors}))
            return output.shape[0]
        return run

    sampler_config, sampler = as_greedy_with_sampler(config)

    def grpo_trainer_path(seed: int) -> int:
        with generating_with(model, sampler):
            return generate_path(sampler_config, None)(seed)

    def engine_path(seed: int) -> int:
        return len(engine.generate_ids(prompts, SamplingParams(**{**params.__dict__, "seed": seed}),
                                       n=args.num_generations))

    runners = {"trl_generate": generate_path(config, None),
               "inverse_transform": generate_path(sampler_config, sampler), "grpo_trainer": grpo_trainer_path,
               "engine": engine_path}
    for runner in runners.values():
        runner(0)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(args.rounds):
        names = list(runners)
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:
            start = time.perf_counter()
            completions = runners[name](round_index + 1)
            rates[name].append(completions / (time.perf_counter() - start))
    for name, values in rates.items():
        ratios = [rate / reference for rate, reference in zip(values, rates["trl_generate"])]
        print(f"{name:>17}: {statistics.median(values):8.1f} completions/s (median of {args.rounds} rounds), "
              f"ratio to TRL's call {statistics.median(ratios):.3f} (rounds {min(ratios):.2f}-{max(ratios):.2f})")
    print(f"{args.prompts} prompts x {args.num_generations} generations x up to {args.max_new_tokens} tokens on "
          f"{device}")


if __name__ == "__main__":
    main()
