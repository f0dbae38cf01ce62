"""``chatforge model info``."""

import argparse
import json

from .configuration_chatforge import PRESETS


def add_commands(stages) -> None:
    model = stages.add_parser("model", help="inspect model presets")
    commands = model.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="parameters and FLOPs per token of a preset")
    info.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    info.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> None:
    from . import ChatForgeConfig, ChatForgeForCausalLM, flops_per_token, num_parameters

    config = ChatForgeConfig.from_preset(args.preset)
    model = ChatForgeForCausalLM(config)
    info = {
        "preset": args.preset,
        "parameters": num_parameters(model),
        "training_flops_per_token": flops_per_token(config, config.max_position_embeddings),
        **{key: getattr(config, key) for key in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                  "num_attention_heads", "num_key_value_heads",
                                                  "intermediate_size", "max_position_embeddings")},
    }
    print(json.dumps(info, indent=2))
