"""The stages of the speedrun, in order: each builds its outputs under the run folder and returns its
figures (stage -> metric -> value in ``report.json``)."""

import json
import random
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UserError
from ..io import atomic_write_text, write_jsonl
from .recipe import SpeedrunRecipe, resolve_stage_config

#: The ``chatforge`` command each training stage runs (in the speedrun's process, or through the recipe's launcher);
#: sft-probe is SFT with the probe's examples.
COMMANDS = {"pretrain": "pretrain", "sft": "sft", "sft-probe": "sft", "reward": "reward", "ppo": "ppo",
            "grpo": "grpo"}


class StageError(UserError, RuntimeError):
    """A stage failed; the message names it and what to do."""


@dataclass
class Run:
    """One speedrun: its recipe and output folder."""

    recipe: SpeedrunRecipe
    output: Path
    _configs: dict = field(default_factory=dict)

    def config(self, stage: str) -> dict:
        """A training stage's recipe as this run resolves it."""
        if stage not in self._configs:
            self._configs[stage] = resolve_stage_config(self.recipe, stage, self.output)
        return self._configs[stage]

    def model_dir(self, stage: str) -> Path:
        return Path(self.config(stage)["output_dir"])

    @property
    def state_dir(self) -> Path:
        return self.output / "speedrun"

    @property
    def stages(self) -> tuple["Stage", ...]:
        """The stages this run's recipe has, in order."""
        return tuple(stage for stage in STAGES if stage.applies(self.recipe))

    @property
    def models(self) -> dict[str, tuple[str, str]]:
        """The models this run evaluates and exports: name -> (the stage that writes it, its kind). The base model
        is a chat model where it was imported rather than pretrained; the SFT model is the probed one, if any."""
        training = self.recipe.training
        models = {"base": ("pretrain", "base") if "pretrain" in training else ("import", "chat"),
                  "sft": ("sft-probe" if "sft-probe" in training else "sft", "chat")}
        models |= {stage: (stage, "chat") for stage in ("ppo", "grpo") if stage in training}
        return models | ({"reward": ("reward", "reward")} if "reward" in training else {})

    def model_dir_of(self, name: str) -> Path:
        """The folder of one of :attr:`models`."""
        stage = self.models[name][0]
        return self.imported_model_dir if stage == "import" else self.model_dir(stage)

    @property
    def imported_model_dir(self) -> Path:
        """Where the import stage writes the base model: the folder the SFT recipe starts from."""
        return Path(self.config("sft")["model_name_or_path"])


def _always(recipe: SpeedrunRecipe) -> bool:
    return True


def _pretrained_here(recipe: SpeedrunRecipe) -> bool:
    return "pretrain" in recipe.training


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Run], dict]
    outputs: Callable[[Run], list[Path]]
    what: str
    applies: Callable[[SpeedrunRecipe], bool] = _always


def flatten(figures: dict, prefix: str = "") -> dict:
    """Nested figures as ``{"a.b": value}``, numbers, strings and booleans only (lists and None dropped)."""
    flat = {}
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
    return flat


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise StageError(f"{path}: missing; the stage that writes it did not finish")
    return json.loads(path.read_text())


# --- data ------------------------------------------------------------------------------------------------


def run_samples(run: Run) -> dict:
    from ..data.samples import SourceUnavailable, build_samples

    try:
        summary = build_samples(run.output / "samples", skip_debian=run.recipe.data.skip_debian)
    except SourceUnavailable as error:
        warnings.warn(f"{error}; building the samples without the Debian HTML pages", stacklevel=1)
        summary = build_samples(run.output / "samples", skip_debian=True)
    return {part: info["items"] for part, info in summary.items()}


def run_data(run: Run) -> dict:
    from ..data.web.config import WebPipelineConfig
    from ..data.web.pipeline import run_web_pipeline

    stats = run_web_pipeline(str(run.output / "samples/web"), run.output / "data",
                             WebPipelineConfig.from_preset(run.recipe.data.preset))
    figures = {f"documents.{step['step']}": step["documents"] for step in stats["funnel"]}
    return {**figures, "kept_characters": stats["output"]["characters"], "input_errors": stats["input_errors"]}


def run_corpus(run: Run) -> dict:
    """The pretraining documents (embedded Wikipedia, the fictional world, the cleaned web pages), split into
    train and held-out validation documents."""
    from ..data import iter_documents
    from ..data.shards import is_validation
    from ..tasks.world import WorldConfig
    from ..training.inputs import embedded_corpus

    settings = run.recipe.data
    world = WorldConfig(frequent_mentions=settings.world_frequent_mentions)
    sources = embedded_corpus(run.output / "corpus/embedded", world) + [str(run.output / "data/data")]
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for index, text in enumerate(iter_documents(sources)):
        if text.strip():
            splits["val" if is_validation(index, settings.val_fraction, settings.seed) else "train"].append(
                {"text": text})
    random.Random(settings.seed).shuffle(splits["train"])
    for split, documents in splits.items():
        write_jsonl(run.output / f"corpus/{split}.jsonl.tmp", documents)
        (run.output / f"corpus/{split}.jsonl.tmp").replace(run.output / f"corpus/{split}.jsonl")
    return {f"{split}_documents": len(documents) for split, documents in splits.items()} | {
        f"{split}_characters": sum(len(d["text"]) for d in documents) for split, documents in splits.items()}


def run_tokenizer(run: Run) -> dict:
    from ..data import iter_documents
    from ..tokenization import bytes_per_token, train_tokenizer_from_sources

    settings, corpus = run.recipe.data, run.output / "corpus"
    sources = [str(corpus / "train.jsonl"), *settings.pretraining_sources]
    tokenizer, _ = train_tokenizer_from_sources(sources, run.output / "tokenizer", settings.vocab_size,
                                                max_chars=settings.tokenizer_max_chars,
                                                max_number_digits=settings.max_number_digits)
    held_out = list(iter_documents([str(corpus / "val.jsonl")]))
    return {"vocab_size": len(tokenizer), "held_out_bytes_per_token": bytes_per_token(tokenizer, held_out)}


def run_shards(run: Run) -> dict:
    """The corpus's train and validation documents, and those of ``pretraining_sources`` (their first
    ``pretraining_val_tokens`` tokens held out for validation, else ``val_fraction`` of their documents)."""
    from ..data.shards import tokenize_to_shards

    settings, corpus = run.recipe.data, run.output / "corpus"
    pretrain = run.config("pretrain")
    meta = tokenize_to_shards(pretrain["tokenizer_name_or_path"], settings.pretraining_sources,
                              pretrain["dataset_dir"], val_fraction=settings.val_fraction, seed=settings.seed,
                              max_documents=settings.max_documents, val_tokens=settings.pretraining_val_tokens,
                              train_sources=[str(corpus / "train.jsonl")], val_sources=[str(corpus / "val.jsonl")],
                              workers=settings.tokenize_workers)
    return {f"{split}_tokens": info["tokens"] for split, info in meta["splits"].items()}


# --- training ----------------------------------------------------------------------------------------------


def launcher_command(recipe: SpeedrunRecipe) -> list[str]:
    """The recipe's launcher, its program taken from this Python's environment where it is installed there."""
    program, *rest = recipe.launcher
    local = Path(sys.executable).parent / program
    if program in ("python", "python3"):
        return [sys.executable, *rest]
    return [str(local) if local.exists() else program, *rest]


def runs_in_this_process(recipe: SpeedrunRecipe) -> bool:
    """Whether training stages run in the speedrun's own process: where the launcher is plain Python (one process
    either way), which saves each stage the quarter-minute of importing torch, transformers and TRL."""
    return recipe.launcher in (["python"], ["python3"])


def train(run: Run, stage: str) -> None:
    """Run the stage's command on its resolved config (written to ``speedrun/configs/``): in this process where the
    launcher is plain Python, else through the launcher (``accelerate launch ... -m chatforge.cli sft ...``)."""
    config_path = run.state_dir / "configs" / f"{stage}.yaml"
    atomic_write_text(config_path, yaml.safe_dump(run.config(stage), sort_keys=False))
    arguments = [COMMANDS[stage], "--config", str(config_path)]
    if runs_in_this_process(run.recipe):
        print("$ chatforge " + " ".join(arguments), flush=True)
        _train_here(*arguments)
        return
    command = [*launcher_command(run.recipe), "-m", "chatforge.cli", *arguments]
    print("$ " + " ".join(command), flush=True)
    result = subprocess.run(command)
    if result.returncode != 0:
        raise StageError(f"stage {stage} failed (exit status {result.returncode}; its output is above). "
                         "Rerunning the speedrun resumes it from its last checkpoint.")


def _train_here(name: str, *arguments: str) -> None:
    """A training stage's command run in this process; afterwards nothing of it is kept (Accelerate's state,
    compiled graphs, the models), so that the next stage starts as a process of its own would."""
    import gc

    import torch
    from accelerate.state import AcceleratorState, GradientState

    from ..posttrain.command import STAGE_COMMANDS
    from ..training.command import named_function

    command = STAGE_COMMANDS[name]
    try:
        named_function(command.run)(*command.make_parser().parse_args_and_config(list(arguments)))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        torch._dynamo.reset()
        gc.collect()


#: The shares an SFT evaluation measures: where it keeps each (task's figures, share, item count) and the key it
#: gets here.
_SHARES = ((("format",), "format_adherence", "prompts", "format_adherence"),
           *(((task, tools), "accuracy", "tasks", f"{task}.{tools}.accuracy")
             for task in ("word_problems", "world_search", "python_problems")
             for tools in ("with_tools", "without_tools")))

#: The shares of each group of knowledge questions, and the item count each is of.
_KNOWLEDGE_SHARES = {"accuracy": "questions", "dont_know_rate": "questions", "kept_right": "right_before"}


def _chat_figures(figures: dict) -> dict:
    """The headline figures of an SFT evaluation (``eval.json``'s ``sft`` or ``base``): each share, with its item
    count and 95% interval, of the tasks and of accuracy and "I don't know" per group of knowledge questions (and
    of those answered right before, the share still right, where the stage measured its starting model)."""
    out = {}
    for path, share, count, key in _SHARES:
        task = figures
        for name in path:
            task = task.get(name, {})
        if task:
            out |= {key: task[share], f"{key}.items": task[count]}
            out[f"{key}.low"], out[f"{key}.high"] = task["interval_95"]
    for group, values in figures.get("knowledge", {}).items():
        for share, count_key in _KNOWLEDGE_SHARES.items():
            if share not in values:
                continue
            key, count = f"knowledge.{group}.{share}", values[count_key]
            out |= {key: values[share], f"{key}.items": count}
            out[f"{key}.low"], out[f"{key}.high"] = values[f"{share}_interval_95"]
    return out


def _sft_figures(folder: Path) -> dict:
    """An SFT stage's figures: held-out loss, and the chat figures after SFT (and before, as ``base.*``, where the
    stage measured the model it started from)."""
    figures = _read_json(folder / "eval.json")
    out = {"eval_loss_before": figures["eval_loss_before"], "eval_loss": figures["eval_loss"],
           **_chat_figures(figures["sft"])}
    if figures.get("base"):
        out |= {f"base.{key}": value for key, value in _chat_figures(figures["base"]).items()}
    return out


def run_pretrain(run: Run) -> dict:
    train(run, "pretrain")
    summary = _read_json(run.model_dir("pretrain") / "summary.json")
    return {key: summary[key] for key in ("val_loss", "val_bpb", "unigram_val_loss", "steps", "tokens")}


def run_import(run: Run) -> dict:
    from ..modeling.gguf_import import import_gguf
    from ..modeling.tool_protocol import write_with_tool_protocol

    imported = import_gguf(run.recipe.base_model.gguf, run.output / "imported")
    added = write_with_tool_protocol(imported, run.imported_model_dir)
    return {"model": run.recipe.base_model.gguf, "tool_tokens_added": len(added)}


def script_arguments(cls, stage_config: dict):
    """The stage's script arguments (``SFTScriptArguments``, ...) as its resolved recipe sets them."""
    from transformers import HfArgumentParser

    return HfArgumentParser(cls).parse_dict(stage_config, allow_extra_keys=True)[0]


def run_sft_data(run: Run) -> dict:
    from ..tasks.sft_data import SFTDataConfig, build_sft_data

    summary = build_sft_data(run.config("sft")["sft_data_dir"], SFTDataConfig())
    return {f"{split}_conversations": sum(info[split] for info in summary["sources"].values())
            for split in ("train", "test")}


def run_sft(run: Run) -> dict:
    train(run, "sft")
    return _sft_figures(run.model_dir("sft"))


def run_probe(run: Run) -> dict:
    from ..posttrain import probe
    from ..posttrain.sft import SFTScriptArguments

    script = script_arguments(SFTScriptArguments, run.config("sft-probe"))
    data_dir = Path(script.sft_data_dir)
    summary = probe.run_probe(script.probe_model, str(data_dir / script.probe_questions), script.probe_dir,
                              probe.ProbeConfig.from_recipe(vars(script)),
                              str(data_dir / script.probe_held_out) if script.probe_held_out else None)
    asked_sft = Path(script.probe_model).resolve() == run.model_dir("sft").resolve()
    return {"questions": summary["questions"], "known": summary["known"], "unsure": summary["unsure"],
            "model": "sft" if asked_sft else "base",
            **{f"known_share.{group}": g["known_share"] for group, g in summary["by_group"].items()},
            **{f"held_out.{key}": value for key, value in summary.get("held_out", {}).items()}}


def run_sft_probe(run: Run) -> dict:
    train(run, "sft-probe")
    return _sft_figures(run.model_dir("sft-probe"))


def run_preference_data(run: Run) -> dict:
    """The preference set, with ``policy_samples`` replies of the model the reward recipe starts from."""
    from ..posttrain.reward import RewardScriptArguments
    from ..tasks.preferences import PreferenceDataConfig, build_preference_data

    config = run.config("reward")
    script = script_arguments(RewardScriptArguments, config)
    summary = build_preference_data(script.preference_data_dir,
                                    PreferenceDataConfig(policy_samples=script.policy_samples),
                                    policy=config["model_name_or_path"])
    return {f"{split}.{key}": info.get(key, 0) for split, info in summary["splits"].items()
            for key in ("rankings", "pairs", "policy_replies")}


def run_reward(run: Run) -> dict:
    train(run, "reward")
    figures = _read_json(run.model_dir("reward") / "eval.json")
    return {f"{when}.{key}": value for when in ("untrained", "reward_model")
            for key, value in flatten(figures[when]).items() if "by_kind" not in key}


def run_ppo(run: Run) -> dict:
    train(run, "ppo")
    figures = _read_json(run.model_dir("ppo") / "eval.json")
    out = {"steps": figures["steps"], "crop_step": figures["crop_step"], "stop_reason": figures["stop_reason"],
           "select_by": figures["select_by"]}
    for when in ("initial", "best", "last"):
        out.update({f"{when}.{key.removeprefix('eval_')}": value for key, value in flatten(figures[when]).items()})
    return out


def run_problems(run: Run) -> dict:
    from ..posttrain.grpo import GRPOScriptArguments, problem_config
    from ..tasks.verifiable import build_problems

    script = script_arguments(GRPOScriptArguments, run.config("grpo"))
    summary = build_problems(script.problems_dir, problem_config(script))
    return {"train": summary["train"], "test": summary["test"]}


def run_grpo(run: Run) -> dict:
    train(run, "grpo")
    figures = _read_json(run.model_dir("grpo") / "eval.json")
    return {f"{when}.{key}": value for when, name in (("before", "before"), ("after", "grpo"))
            for key, value in flatten(figures[name]).items()}


# --- evaluation, export, report -------------------------------------------------------------------------------

TASKS_BY_KIND = {"base": ["bpb", "format", "regurgitation", "induction", "recall"],
                 "chat": ["bpb", "format", "arithmetic", "knowledge", "induction", "recall"],
                 "reward": ["pairs", "rankings"]}


def run_eval(run: Run) -> dict:
    """Every model of the run on its kind's tasks and the recipe's benchmarks. Where the base model answers the
    knowledge questions (an imported chat model), each later model's figures say how many of the questions it
    answered right are still answered right (``kept_right``)."""
    from ..eval.chat import kept_right
    from ..eval.model_identity import model_fingerprint
    from ..eval.suite import EvalData, evaluate_model

    training = run.recipe.training
    data = EvalData.from_folders(run.output / "corpus", run.config("sft")["sft_data_dir"],
                                 run.config("grpo")["problems_dir"] if "grpo" in training else None,
                                 run.config("reward")["preference_data_dir"] if "reward" in training else None,
                                 run.config("sft-probe").get("knowledge_questions") if "sft-probe" in training
                                 else None)
    results, evaluated, twins = {}, {}, {}
    for name, (_, kind) in run.models.items():
        samples = run.output / "benchmark-samples" / name
        fingerprint = (model_fingerprint(run.model_dir_of(name)), kind)
        if fingerprint in evaluated:
            twins[name] = evaluated[fingerprint]
            print(f"{name} holds the same model files as {twins[name]}: its figures are {twins[name]}'s", flush=True)
            results[name] = results[twins[name]]
            _copy_if_there(run.output / "benchmark-samples" / twins[name], samples)
            continue
        tasks = [task for task in TASKS_BY_KIND[kind] if data.has_data_for(task) and task not in run.recipe.eval.skip]
        tasks += run.recipe.eval.benchmarks if kind != "reward" else []
        print(f"evaluating {name} ({run.model_dir_of(name)}): {', '.join(tasks)}", flush=True)
        results[name] = evaluate_model(str(run.model_dir_of(name)), tasks, data, run.recipe.eval, samples_dir=samples)
        evaluated[fingerprint] = name
    base = results.get("base", {})
    for figures in results.values():
        if "knowledge" in base and "knowledge" in figures and figures is not base:
            kept_right(base["knowledge"], figures["knowledge"])
    atomic_write_text(run.output / "eval.json", json.dumps(results, indent=2, ensure_ascii=False))
    figures = {key: value for key, value in flatten(results).items() if ".longest." not in key}
    return {**figures, **{f"{name}.same_model_as": twin for name, twin in twins.items()}}


def _copy_if_there(source: Path, destination: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, destination, dirs_exist_ok=True)


def run_export(run: Run) -> dict:
    from ..hub.export import export_model

    figures = {}
    for name, (stage, kind) in run.models.items():
        folder = export_model(run.model_dir_of(name), run.output / "export" / name, kind, run.output,
                              model_name=name, stage=stage)
        figures[name] = str(folder)
    return figures


def run_report(run: Run) -> dict:
    from ..eval.report_card import write_report

    path = write_report(run.output, {stage.name: stage.what for stage in run.stages})
    return {"report": str(path)}


def _training_outputs(stage: str) -> Callable[[Run], list[Path]]:
    return lambda run: [run.model_dir(stage)]


def _folder_of(stage: str, key: str) -> Callable[[Run], list[Path]]:
    """The folder the setting ``key`` of the training stage ``stage`` names."""
    return lambda run: [Path(run.config(stage)[key])]


def _has(stage: str) -> Callable[[SpeedrunRecipe], bool]:
    """Whether a recipe has the training stage ``stage``."""
    return lambda recipe: stage in recipe.training


STAGES = (
    Stage("samples", run_samples, lambda run: [run.output / "samples"], "sample corpus: prose and web pages",
          _pretrained_here),
    Stage("data", run_data, lambda run: [run.output / "data"], "FineWeb-style cleaning of the web pages",
          _pretrained_here),
    Stage("corpus", run_corpus, lambda run: [run.output / "corpus"], "pretraining documents, train/val split",
          _pretrained_here),
    Stage("tokenizer", run_tokenizer, lambda run: [run.output / "tokenizer"], "byte-level BPE", _pretrained_here),
    Stage("shards", run_shards, lambda run: [Path(run.config("pretrain")["dataset_dir"])], "token shards",
          _pretrained_here),
    Stage("pretrain", run_pretrain, _training_outputs("pretrain"), "base model: next-token prediction",
          _pretrained_here),
    Stage("import", run_import, lambda run: [run.output / "imported", run.imported_model_dir],
          "pretrained model imported, given the tool protocol", lambda recipe: recipe.base_model is not None),
    Stage("sft-data", run_sft_data, _folder_of("sft", "sft_data_dir"),
          "conversations: chat, tool use, word problems, the world"),
    Stage("sft", run_sft, _training_outputs("sft"), "assistant: SFT on the conversation mixture"),
    Stage("probe", run_probe, _folder_of("sft-probe", "probe_dir"),
          "what the assistant knows: labels for 'I don't know'", _has("sft-probe")),
    Stage("sft-probe", run_sft_probe, _training_outputs("sft-probe"), "SFT with the probe's examples",
          _has("sft-probe")),
    Stage("preference-data", run_preference_data, _folder_of("reward", "preference_data_dir"),
          "rankings by a gold judge, and prompts for RL", _has("reward")),
    *(Stage(stage, runner, _training_outputs(stage), what, _has(stage)) for stage, runner, what in (
        ("reward", run_reward, "reward model from rankings"),
        ("ppo", run_ppo, "RLHF with PPO, stopped before over-optimisation"))),
    Stage("problems", run_problems, _folder_of("grpo", "problems_dir"), "word problems with checkable answers",
          _has("grpo")),
    Stage("grpo", run_grpo, _training_outputs("grpo"), "GRPO on problems with checkable answers", _has("grpo")),
    Stage("eval", run_eval, lambda run: [run.output / "eval.json"], "evaluation of every stage's model"),
    Stage("export", run_export, lambda run: [run.output / "export"], "Hub-ready folders with model cards"),
    Stage("report", run_report, lambda run: [run.output / "report.md"], "report card"),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
