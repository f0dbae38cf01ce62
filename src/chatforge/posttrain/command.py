"""``chatforge sft|reward|ppo|grpo --config ...`` (what the recipe scripts run under ``accelerate launch``) and
``chatforge probe``."""

import argparse

from ..training.command import PRETRAIN, StageCommand, add_stage_command


def _posttraining(name: str, help: str, module: str, parser: str, run: str) -> StageCommand:
    """A post-training stage: its module's ``check_inputs`` takes the script and model arguments."""
    return StageCommand(name, help, f"{module}:{parser}", f"{module}:{run}", f"{module}:check_inputs", (0, 2))


SFT = _posttraining("sft", "supervised fine-tuning into an assistant (recipes/sft.py)", "chatforge.posttrain.sft",
                    "sft_parser", "run_sft")
REWARD = _posttraining("reward", "a reward model from preference rankings (recipes/reward.py)",
                       "chatforge.posttrain.reward", "reward_parser", "run_reward")
PPO = _posttraining("ppo", "RLHF with PPO against the reward model (recipes/ppo.py)", "chatforge.posttrain.rlhf",
                    "ppo_parser", "run_ppo")
GRPO = _posttraining("grpo", "GRPO on problems with checkable answers (recipes/grpo.py)",
                     "chatforge.posttrain.grpo", "grpo_parser", "run_grpo")
#: Every training stage's command by name.
STAGE_COMMANDS = {command.name: command for command in (PRETRAIN, SFT, REWARD, PPO, GRPO)}


def add_commands(stages) -> None:
    for command in (SFT, REWARD, PPO, GRPO):
        add_stage_command(stages, command)

    probe = stages.add_parser("probe", help="label questions known/unknown by sampling; write SFT examples")
    probe.add_argument("--model", required=True, help="model folder or Hub id (a chat model)")
    probe.add_argument("--questions", required=True,
                       help="JSONL/parquet file or Hub dataset with question and answer (optional name, reply)")
    probe.add_argument("--output", required=True)
    probe.add_argument("--held-out", default=None, help="held-out questions to label known / unknown as well "
                                                        "(written to OUTPUT/held_out.jsonl for the knowledge eval)")
    probe.add_argument("--samples", type=int, default=4, help="answers sampled per question")
    probe.add_argument("--temperature", type=float, default=0.7)
    probe.add_argument("--threshold", type=float, default=0.5, help="share of right answers that counts as known")
    probe.add_argument("--unknown-below", type=float, default=None,
                       help="unknown only below this share of right answers; those in between are left out of "
                            "the examples (default: all below --threshold are unknown)")
    probe.add_argument("--known-copies", type=int, default=1, help="copies of each answered example")
    probe.add_argument("--unknown-copies", type=int, default=1, help='copies of each "I don\'t know" example')
    probe.add_argument("--known-share", type=float, default=None,
                       help="share of each group's examples that answer (known ones copied to reach it; "
                            "instead of --known-copies)")
    probe.add_argument("--seed", type=int, default=0)
    probe.set_defaults(func=_probe)


def _probe(args: argparse.Namespace) -> None:
    from .probe import COMMAND_OPTIONS, ProbeConfig, run_probe

    summary = run_probe(args.model, args.questions, args.output,
                        ProbeConfig(**{name: getattr(args, name) for name in COMMAND_OPTIONS}), args.held_out)
    groups = ", ".join(f"{name} {g['known_share']:.0%}" for name, g in summary["by_group"].items())
    print(f"probe: {summary['known']}/{summary['questions']} questions known ({groups}) -> {args.output}")
