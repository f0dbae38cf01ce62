"""``chatforge <stage> ...``: the command line of every pipeline stage."""

import argparse
import json
import sys
from pathlib import Path

from .data.samples import SourceUnavailable
from .data.text_sources import InputError
from .io import atomic_write_text
from .serving.command import add_serve_command
from .speedrun.stages import StageError


def _tokenizer_train(args: argparse.Namespace) -> None:
    from .tokenization import train_tokenizer_from_sources

    _, summary = train_tokenizer_from_sources(
        args.input,
        args.output,
        args.vocab_size,
        text_field=args.text_field,
        max_chars=args.max_chars,
        min_frequency=args.min_frequency,
        max_number_digits=args.max_number_digits,
    )
    print(
        f"tokenizer: {summary['vocab_size']} tokens, {summary['bytes_per_token']} bytes/token on the "
        f"training text, {summary['seconds']} s -> {summary['output_dir']}"
    )


def _tokenizer_show(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from .tokenization import render_tokens

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    print(render_tokens(tokenizer, args.text, color=not args.no_color and sys.stdout.isatty()))


def _model_info(args: argparse.Namespace) -> None:
    from .modeling import (
        ChatForgeConfig,
        ChatForgeForCausalLM,
        flops_per_token,
        num_parameters,
    )

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


def _demo(args: argparse.Namespace) -> None:
    from .demo import DemoConfig, run_core_demo

    summary = run_core_demo(DemoConfig(output_dir=args.output, max_steps=args.max_steps, seed=args.seed))
    for prompt, continuation in summary["samples"].items():
        print(f"  {prompt!r} -> {continuation!r}")
    print(
        f"core demo: {summary['parameters'] / 1e6:.2f}M-parameter model, validation loss "
        f"{summary['val_loss_before']:.3f} -> {summary['val_loss_after']:.3f} nats/token "
        f"(unigram baseline {summary['unigram_val_loss']:.3f}) in {summary['seconds']} s; "
        f"model in {summary['model_dir']}"
    )


def _data_pipeline(args: argparse.Namespace) -> None:
    from .data.web.config import WebPipelineConfig
    from .data.web.pipeline import run_web_pipeline

    config = WebPipelineConfig.from_yaml(args.config) if args.config else WebPipelineConfig.from_preset(args.preset)
    if args.no_keep_dropped:
        config.keep_dropped = False
    options = json.loads(args.executor_options) if args.executor_options else None
    stats = run_web_pipeline(args.input, args.output, config, executor=args.executor, workers=args.workers,
                             tasks=args.tasks, executor_options=options, limit=args.limit)
    if not stats:
        print(f"submitted to {args.executor}; logs in {args.output}/logs")
        return
    first, last = stats["funnel"][0], stats["funnel"][-1]
    print(f"data pipeline: {first['documents']:,} documents in, {last['documents']:,} kept "
          f"({last['characters']:,} characters), {stats['input_errors']} unreadable inputs -> "
          f"{stats['output']['folder']}; report in {args.output}/report.md")


def _data_tokenize(args: argparse.Namespace) -> None:
    from .data.shards import tokenize_to_shards

    meta = tokenize_to_shards(args.tokenizer, args.input, args.output, text_field=args.text_field,
                              val_fraction=args.val_fraction, seed=args.seed, workers=args.workers,
                              shard_tokens=args.shard_tokens, max_documents=args.max_documents)
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    print(f"token shards: train {train['tokens']:,} tokens ({train['documents']:,} documents), val "
          f"{val['tokens']:,} tokens ({val['documents']:,} documents), {meta['dtype']} -> {args.output}")


def _data_samples(args: argparse.Namespace) -> None:
    from .data.samples import build_samples

    summary = build_samples(args.output, skip_debian=args.skip_debian)
    parts = ", ".join(f"{part} ({info['items']})" for part, info in summary.items())
    print(f"samples: {parts} -> {args.output} (sources and licenses in {args.output}/SOURCES.md)")


def _sft_data_build(args: argparse.Namespace) -> None:
    from .posttrain.sft_data import SFTDataConfig, build_sft_data

    summary = build_sft_data(args.output, SFTDataConfig(seed=args.seed))
    parts = ", ".join(f"{name} {info['train']}+{info['test']}" for name, info in summary["sources"].items())
    print(f"sft data (train+test conversations): {parts} -> {args.output}")


def _preference_data_build(args: argparse.Namespace) -> None:
    from .posttrain.preferences import PreferenceDataConfig, build_preference_data

    config = PreferenceDataConfig(seed=args.seed, policy_samples=args.policy_samples)
    summary = build_preference_data(args.output, config, policy=args.policy)
    splits = ", ".join(f"{name} {info['rankings']} rankings / {info['pairs']} pairs "
                       f"({info.get('policy_replies', 0)} replies of the policy)"
                       for name, info in summary["splits"].items())
    print(f"preference data (ranked by the gold reward): {splits} -> {args.output}")


def _problems_build(args: argparse.Namespace) -> None:
    from .posttrain.verifiable import ProblemConfig, build_problems

    summary = build_problems(args.output, ProblemConfig(seed=args.seed, train=args.train, test=args.test,
                                                        low=args.low, high=args.high,
                                                        gsm_symbolic_test=args.gsm_symbolic_test))
    print(f"problems: {summary['train']} train, {summary['test']} test -> {args.output}")


def _probe(args: argparse.Namespace) -> None:
    from .posttrain.probe import ProbeConfig, run_probe

    summary = run_probe(args.model, args.questions, args.output,
                        ProbeConfig(samples=args.samples, temperature=args.temperature, threshold=args.threshold,
                                    seed=args.seed, known_copies=args.known_copies,
                                    unknown_copies=args.unknown_copies))
    groups = ", ".join(f"{name} {g['known_share']:.0%}" for name, g in summary["by_group"].items())
    print(f"probe: {summary['known']}/{summary['questions']} questions known ({groups}) -> {args.output}")


def _sampling_params(args: argparse.Namespace, stop=()):
    from .inference.engine import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                          stop=tuple(args.stop or ()) + tuple(stop))


def _generate(args: argparse.Namespace) -> None:
    from .inference.engine import Engine
    from .inference.prompts import ASSISTANT_STOP, assistant_prompt, few_shot_prompt

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
    from .inference.chat_cli import chat_loop
    from .inference.engine import Engine
    from .tools import default_toolbox

    toolbox = None if args.no_tools else default_toolbox(args.search_index)
    engine = Engine.from_pretrained(args.model, toolbox=toolbox)
    chat_loop(engine, _sampling_params(args), system=args.system, use_tools=not args.no_tools)


def _tools_index(args: argparse.Namespace) -> None:
    from .data import iter_documents
    from .tools import SearchIndex

    index = SearchIndex.build(iter_documents(args.input, text_field=args.text_field))
    index.save(args.output)
    print(f"search index: {len(index.documents):,} documents -> {args.output}")


def _speedrun(args: argparse.Namespace) -> None:
    from .speedrun import speedrun

    report = speedrun(args.recipe, args.output, start=args.start, until=args.until)
    output = Path(args.output)
    print(f"speedrun: {report['run']['stages_seconds'] / 60:.1f} minutes of stages -> {output}")
    if (output / "report.md").exists():
        print(f"  report card: {output / 'report.md'} (figures in {output / 'report.json'})")
    if (output / "export/grpo").exists():
        print(f"  chat model:  {output / 'export/grpo'}   (chatforge chat {output / 'export/grpo'})")
        print(f"  serve it:    chatforge serve {output / 'export/grpo'} --tools calculator,python"
              "   (OpenAI API and chat page on http://127.0.0.1:8000)")


def _eval(args: argparse.Namespace) -> None:
    from .eval.suite import EvalConfig, EvalData, evaluate_model

    data = EvalData.from_run(args.run) if args.run else EvalData()
    for name in ("val_text", "prompts", "problems", "questions", "corpus", "pairs", "cloze"):
        if getattr(args, name) is not None:
            setattr(data, name, getattr(args, name))
    config = EvalConfig(limit=args.limit, k=args.k, seed=args.seed)
    results = evaluate_model(args.model, args.tasks.split(","), data, config)
    text = json.dumps(results, indent=2, ensure_ascii=False)
    if args.output:
        atomic_write_text(args.output, text)
    print(text)


def _export(args: argparse.Namespace) -> None:
    from .hub import export_model

    folder = export_model(args.model, args.output, args.kind, args.run, model_name=args.name, stage=args.stage,
                          repo_id=args.repo_id)
    print(f"exported {args.model} -> {folder} (model card: {folder / 'README.md'})")


def _push(args: argparse.Namespace) -> None:
    from .hub import push

    url = push(args.folder, args.repo_id, private=args.private)
    print(f"pushed {args.folder} -> {url}")


def _add_sampling_args(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--stop", nargs="*", help="extra stop strings")
    parser.add_argument("--seed", type=int, default=None, help="make sampling reproducible")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatforge", description=__doc__)
    stages = parser.add_subparsers(dest="stage", required=True)

    tokenizer = stages.add_parser("tokenizer", help="train or inspect a byte-level BPE tokenizer")
    tokenizer_commands = tokenizer.add_subparsers(dest="command", required=True)
    train = tokenizer_commands.add_parser("train", help="train a tokenizer on text files, JSONL/parquet or a dataset")
    train.add_argument("--input", nargs="+", required=True, help="files, folders, globs or a dataset name")
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--output", required=True, help="folder to save the tokenizer in")
    train.add_argument("--text-field", default="text", help="field of JSONL/parquet/dataset records (default: text)")
    train.add_argument("--max-chars", type=int, default=None, help="train on at most this many characters")
    train.add_argument("--min-frequency", type=int, default=2, help="least count of a pair to merge")
    train.add_argument("--max-number-digits", type=int, default=3,
                       help="most digits one token may hold (default 3, as GPT-4; 1 splits numbers into digits)")
    train.set_defaults(func=_tokenizer_train)
    show = tokenizer_commands.add_parser("show", help="show how text splits into tokens")
    show.add_argument("tokenizer", help="tokenizer folder or Hub id")
    show.add_argument("text")
    show.add_argument("--no-color", action="store_true", help="bracket tokens instead of colouring them")
    show.set_defaults(func=_tokenizer_show)

    model = stages.add_parser("model", help="inspect model presets")
    model_commands = model.add_subparsers(dest="command", required=True)
    info = model_commands.add_parser("info", help="parameters and FLOPs per token of a preset")
    info.add_argument("--preset", default="tiny")
    info.set_defaults(func=_model_info)

    data = stages.add_parser("data", help="clean web pages into training text")
    data_commands = data.add_subparsers(dest="command", required=True)
    pipeline = data_commands.add_parser("pipeline", help="FineWeb-style cleaning of HTML/WARC/JSONL/parquet inputs")
    pipeline.add_argument("--input", required=True, help="a folder, file or glob of .html/.warc(.gz)/.jsonl/.parquet")
    pipeline.add_argument("--output", required=True, help="run folder: data/, removed/, logs/, stats.json, report.md")
    pipeline.add_argument("--preset", default="fineweb", help="fineweb (trafilatura) or fast (resiliparse)")
    pipeline.add_argument("--config", default=None, help="YAML with preset/steps/keep_dropped (overrides --preset)")
    pipeline.add_argument("--workers", type=int, default=1, help="parallel processes (local) or workers (ray)")
    pipeline.add_argument("--tasks", type=int, default=None, help="input shards (default: --workers)")
    pipeline.add_argument("--executor", default="local", choices=["local", "slurm", "ray"])
    pipeline.add_argument("--executor-options", default=None,
                          help="JSON keyword arguments of the executor, e.g. "
                               '\'{"partition": "cpu", "time": "4:00:00"}\'')
    pipeline.add_argument("--limit", type=int, default=-1, help="read at most this many documents per task")
    pipeline.add_argument("--no-keep-dropped", action="store_true", help="do not write removed/<step>/")
    pipeline.set_defaults(func=_data_pipeline)

    samples = data_commands.add_parser("samples", help="build the offline sample corpus (prose, web pages)")
    samples.add_argument("--output", required=True)
    samples.add_argument("--skip-debian", action="store_true",
                         help="leave out the real HTML pages fetched as Debian packages")
    samples.set_defaults(func=_data_samples)

    tokenize = data_commands.add_parser("tokenize", help="tokenize a dataset into train/val token shards")
    tokenize.add_argument("--tokenizer", required=True, help="tokenizer folder or Hub id")
    tokenize.add_argument("--input", nargs="+", required=True, help="parquet/JSONL/text files, folders, a dataset")
    tokenize.add_argument("--output", required=True)
    tokenize.add_argument("--text-field", default="text")
    tokenize.add_argument("--val-fraction", type=float, default=0.005, help="share of documents held out")
    tokenize.add_argument("--seed", type=int, default=0)
    tokenize.add_argument("--workers", type=int, default=1, help="tokenizing processes")
    tokenize.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard file")
    tokenize.add_argument("--max-documents", type=int, default=None, help="stop after this many documents")
    tokenize.set_defaults(func=_data_tokenize)

    sft_data = stages.add_parser("sft-data", help="the embedded SFT conversation mixture")
    sft_data_commands = sft_data.add_subparsers(dest="command", required=True)
    sft_build = sft_data_commands.add_parser("build", help="build train/test conversations and tool-use examples")
    sft_build.add_argument("--output", required=True)
    sft_build.add_argument("--seed", type=int, default=0)
    sft_build.set_defaults(func=_sft_data_build)

    preference_data = stages.add_parser("preference-data", help="the embedded preference set for reward modelling")
    preference_commands = preference_data.add_subparsers(dest="command", required=True)
    preference_build = preference_commands.add_parser(
        "build", help="K-way rankings and pairs ranked by construction, and prompts for RL")
    preference_build.add_argument("--output", required=True)
    preference_build.add_argument("--seed", type=int, default=0)
    preference_build.add_argument("--policy", help="a chat model whose sampled replies join the ranked candidates")
    preference_build.add_argument("--policy-samples", type=int, default=2, help="replies sampled per prompt")
    preference_build.set_defaults(func=_preference_data_build)

    problems = stages.add_parser("problems", help="problems with checkable answers for GRPO")
    problems_commands = problems.add_subparsers(dest="command", required=True)
    problems_build = problems_commands.add_parser("build", help="generated word problems, split by question")
    problems_build.add_argument("--output", required=True)
    problems_build.add_argument("--train", type=int, default=4000)
    problems_build.add_argument("--test", type=int, default=200)
    problems_build.add_argument("--low", type=int, default=1, help="smallest operand")
    problems_build.add_argument("--high", type=int, default=9, help="largest operand")
    problems_build.add_argument("--gsm-symbolic-test", type=int, default=0,
                                help="also write held-out reasoning-gym gsm_symbolic problems")
    problems_build.add_argument("--seed", type=int, default=0)
    problems_build.set_defaults(func=_problems_build)

    probe = stages.add_parser("probe", help="label questions known/unknown by sampling; write SFT examples")
    probe.add_argument("--model", required=True, help="model folder or Hub id (a chat model)")
    probe.add_argument("--questions", required=True,
                       help="JSONL/parquet file or Hub dataset with question and answer (optional name, reply)")
    probe.add_argument("--output", required=True)
    probe.add_argument("--samples", type=int, default=4, help="answers sampled per question")
    probe.add_argument("--temperature", type=float, default=0.7)
    probe.add_argument("--threshold", type=float, default=0.5, help="share of right answers that counts as known")
    probe.add_argument("--known-copies", type=int, default=1, help="copies of each answered example")
    probe.add_argument("--unknown-copies", type=int, default=1, help='copies of each "I don\'t know" example')
    probe.add_argument("--seed", type=int, default=0)
    probe.set_defaults(func=_probe)

    generate = stages.add_parser("generate", help="sample completions of a prompt from a (base) model")
    generate.add_argument("model", help="model folder or Hub id")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--n", type=int, default=3, help="number of samples (shows the stochasticity)")
    generate.add_argument("--few-shot", default=None,
                          help="JSONL of {input, output} examples to put before the prompt")
    generate.add_argument("--as-assistant", action="store_true",
                          help="wrap the prompt in a conversation transcript (assistant by prompting)")
    _add_sampling_args(generate, max_new_tokens=64)
    generate.set_defaults(func=_generate)

    chat = stages.add_parser("chat", help="chat with a model in the terminal (streaming, tools)")
    chat.add_argument("model", help="model folder or Hub id")
    chat.add_argument("--system", default=None, help="system prompt")
    chat.add_argument("--no-tools", action="store_true", help="do not run tool calls")
    chat.add_argument("--search-index", default=None, help="folder of a search index (chatforge tools index)")
    _add_sampling_args(chat, max_new_tokens=256)
    chat.set_defaults(func=_chat)

    tools = stages.add_parser("tools", help="tool resources")
    tools_commands = tools.add_subparsers(dest="command", required=True)
    index = tools_commands.add_parser("index", help="build the BM25 index of the search tool")
    index.add_argument("--input", nargs="+", required=True, help="text/JSONL/parquet files, folders, a dataset")
    index.add_argument("--output", required=True)
    index.add_argument("--text-field", default="text")
    index.set_defaults(func=_tools_index)

    speedrun = stages.add_parser("speedrun", help="the whole pipeline in one command: data to exported models")
    speedrun.add_argument("--recipe", default="tiny", help="a name under recipes/ (tiny, smoke) or a speedrun YAML")
    speedrun.add_argument("--output", required=True, help="run folder (report.md, report.json, export/)")
    speedrun.add_argument("--from", dest="start", default=None, help="rerun from this stage (earlier ones finished)")
    speedrun.add_argument("--until", default=None, help="stop after this stage")
    speedrun.set_defaults(func=_speedrun)

    evaluate = stages.add_parser("eval", help="evaluate a model: bits per byte, chat format, arithmetic, ...")
    evaluate.add_argument("model", help="model folder or Hub id")
    evaluate.add_argument("--tasks", required=True,
                          help="comma-separated: bpb, format, arithmetic, knowledge, regurgitation, induction, recall, "
                               "reward, hellaswag, arc_easy, arc_challenge, gsm8k")
    evaluate.add_argument("--run", default=None, help="take the held-out data of this speedrun folder")
    evaluate.add_argument("--val-text", dest="val_text", default=None, help="held-out documents (bpb)")
    evaluate.add_argument("--prompts", default=None, help="JSONL conversations (format)")
    evaluate.add_argument("--problems", default=None, help="JSONL {prompt, answer} (arithmetic)")
    evaluate.add_argument("--questions", default=None, help="JSONL {question, answer, group} (knowledge)")
    evaluate.add_argument("--corpus", default=None, help="training documents (regurgitation)")
    evaluate.add_argument("--pairs", default=None, help="JSONL {chosen, rejected} (reward)")
    evaluate.add_argument("--cloze", default=None, help="JSONL {prompt, answer, group} (recall)")
    evaluate.add_argument("--limit", type=int, default=100, help="records per task")
    evaluate.add_argument("--k", type=int, default=8, help="samples per problem for pass@k")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--output", default=None, help="also write the figures to this JSON file")
    evaluate.set_defaults(func=_eval)

    export = stages.add_parser("export", help="a Hub-ready copy of a model folder with its model card")
    export.add_argument("model", help="trained model folder")
    export.add_argument("--output", required=True)
    export.add_argument("--kind", required=True, choices=["base", "chat", "reward"])
    export.add_argument("--run", default=None, help="speedrun folder whose figures fill the model card")
    export.add_argument("--name", default=None, help="the model's name in the run's eval.json (base, sft, ...)")
    export.add_argument("--stage", default=None, help="the speedrun stage that trained it")
    export.add_argument("--repo-id", default=None, help="Hub repo id shown in the card's code")
    export.set_defaults(func=_export)

    push = stages.add_parser("push", help="upload an exported folder to the Hugging Face Hub")
    push.add_argument("folder")
    push.add_argument("--repo-id", required=True, help="ORG/NAME")
    push.add_argument("--private", action="store_true")
    push.set_defaults(func=_push)

    add_serve_command(stages)

    demo = stages.add_parser("demo", help="core demo: tokenizer + tiny model on embedded text, then samples")
    demo.add_argument("--output", default="runs/core-demo")
    demo.add_argument("--max-steps", type=int, default=300)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (InputError, ValueError, FileNotFoundError, KeyError, SourceUnavailable, StageError) as error:
        sys.exit(f"chatforge {args.stage}: error: {error}")


if __name__ == "__main__":
    main()
