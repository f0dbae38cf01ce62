"""``chatforge generate`` (a base model's completions) and ``chatforge chat`` (a chat in the terminal)."""

import argparse
import json


def add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--stop", nargs="*", help="extra stop strings")
    parser.add_argument("--seed", type=int, default=None, help="make sampling reproducible")


def add_commands(stages) -> None:
    generate = stages.add_parser("generate", help="sample completions of a prompt from a (base) model")
    generate.add_argument("model", help="model folder or Hub id")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--n", type=int, default=3, help="number of samples (shows the stochasticity)")
    generate.add_argument("--few-shot", default=None,
                          help="JSONL of {input, output} examples to put before the prompt")
    generate.add_argument("--as-assistant", action="store_true",
                          help="wrap the prompt in a conversation transcript (assistant by prompting)")
    add_sampling_arguments(generate, max_new_tokens=64)
    generate.set_defaults(func=_generate)

    chat = stages.add_parser("chat", help="chat with a model in the terminal (streaming, tools)")
    chat.add_argument("model", help="model folder or Hub id")
    chat.add_argument("--system", default=None, help="system prompt")
    chat.add_argument("--no-tools", action="store_true", help="do not run tool calls")
    chat.add_argument("--search-index", default=None, help="folder of a search index (chatforge tools index)")
    add_sampling_arguments(chat, max_new_tokens=256)
    chat.set_defaults(func=_chat)


def _sampling_params(args: argparse.Namespace, stop=()):
    from .engine import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                          stop=tuple(args.stop or ()) + tuple(stop))


def _generate(args: argparse.Namespace) -> None:
    from .engine import Engine
    from .prompts import ASSISTANT_STOP, assistant_prompt, few_shot_prompt

    prompt, stop = args.prompt, ()
    if args.few_shot:
        with open(args.few_shot, encoding="utf-8") as handle:
            examples = [tuple(json.loads(line).values())[:2] for line in handle if line.strip()]
        prompt, stop = few_shot_prompt(examples, args.prompt), ("\n",)
    elif args.as_assistant:
        prompt, stop = assistant_prompt(args.prompt), ASSISTANT_STOP
    engine = Engine.from_pretrained(args.model)
    completions = engine.complete([prompt], _sampling_params(args, stop), n=args.n)[0]
    for number, completion in enumerate(completions, 1):
        for marker in stop:
            completion = completion.split(marker)[0]
        print(f"--- sample {number}/{args.n}\n{args.prompt if not (args.few_shot or args.as_assistant) else ''}"
              f"{completion}")


def _chat(args: argparse.Namespace) -> None:
    from ..tools import default_toolbox
    from .chat_cli import chat_loop
    from .engine import Engine

    toolbox = None if args.no_tools else default_toolbox(args.search_index)
    engine = Engine.from_pretrained(args.model, toolbox=toolbox)
    chat_loop(engine, _sampling_params(args), system=args.system, use_tools=not args.no_tools)
