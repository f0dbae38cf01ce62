"""``chatforge sft-data|preference-data|problems build``: the embedded task data."""

import argparse

from .word_problems import KINDS


def add_commands(stages) -> None:
    sft_data = stages.add_parser("sft-data", help="the embedded SFT conversation mixture")
    sft_build = sft_data.add_subparsers(dest="command", required=True).add_parser(
        "build", help="build train/test conversations and tool-use examples")
    sft_build.add_argument("--output", required=True)
    sft_build.add_argument("--seed", type=int, default=0)
    sft_build.set_defaults(func=_sft_data)

    preference_data = stages.add_parser("preference-data", help="the embedded preference set for reward modelling")
    preference_build = preference_data.add_subparsers(dest="command", required=True).add_parser(
        "build", help="K-way rankings and pairs ranked by construction, and prompts for RL")
    preference_build.add_argument("--output", required=True)
    preference_build.add_argument("--seed", type=int, default=0)
    preference_build.add_argument("--policy", help="a chat model whose sampled replies join the ranked candidates")
    preference_build.add_argument("--policy-samples", type=int, default=2, help="replies sampled per prompt")
    preference_build.set_defaults(func=_preference_data)

    problems = stages.add_parser("problems", help="problems with checkable answers for GRPO")
    problems_build = problems.add_subparsers(dest="command", required=True).add_parser(
        "build", help="generated word problems, split by question")
    problems_build.add_argument("--output", required=True)
    problems_build.add_argument("--train", type=int, default=4000)
    problems_build.add_argument("--test", type=int, default=200)
    problems_build.add_argument("--low", type=int, default=1, help="smallest operand")
    problems_build.add_argument("--high", type=int, default=9, help="largest operand")
    problems_build.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS,
                                help="kinds of word problem")
    problems_build.add_argument("--gsm-symbolic-test", type=int, default=0,
                                help="also write held-out reasoning-gym gsm_symbolic problems")
    problems_build.add_argument("--seed", type=int, default=0)
    problems_build.set_defaults(func=_problems)


def _sft_data(args: argparse.Namespace) -> None:
    from .sft_data import SFTDataConfig, build_sft_data

    summary = build_sft_data(args.output, SFTDataConfig(seed=args.seed))
    parts = ", ".join(f"{name} {info['train']}+{info['test']}" for name, info in summary["sources"].items())
    print(f"sft data (train+test conversations): {parts} -> {args.output}")


def _preference_data(args: argparse.Namespace) -> None:
    from .preferences import PreferenceDataConfig, build_preference_data

    config = PreferenceDataConfig(seed=args.seed, policy_samples=args.policy_samples)
    summary = build_preference_data(args.output, config, policy=args.policy)
    splits = ", ".join(f"{name} {info['rankings']} rankings / {info['pairs']} pairs "
                       f"({info.get('policy_replies', 0)} replies of the policy)"
                       for name, info in summary["splits"].items())
    print(f"preference data (ranked by the gold reward): {splits} -> {args.output}")


def _problems(args: argparse.Namespace) -> None:
    from .verifiable import ProblemConfig, build_problems

    summary = build_problems(args.output, ProblemConfig(seed=args.seed, train=args.train, test=args.test,
                                                        low=args.low, high=args.high, kinds=tuple(args.kinds),
                                                        gsm_symbolic_test=args.gsm_symbolic_test))
    print(f"problems: {summary['train']} train, {summary['test']} test -> {args.output}")
