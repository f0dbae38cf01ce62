"""GRPO on problems with checkable answers, on TRL's GRPOTrainer (completions sampled by inverse transform and
scored on packed rows) with chatforge's reward functions.

Rewards: the right final answer (numeric match, else math-verify), the answer format, and optionally
DAPO's soft over-length penalty. Held-out greedy pass@1, sampled pass@1 and pass@k before and after go
to ``eval.json``; the training reward and completion length per step to ``grpo.png``.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from transformers import AutoModelForCausalLM
from trl import DatasetMixtureConfig, GRPOConfig, ModelConfig, TrlParser, get_peft_config
from trl.rewards import get_soft_overlong_punishment

from ..errors import InvalidValue
from ..eval.plots import history_series, plot_panels
from ..eval.suite import EvalConfig, EvalData, applicable_tasks, evaluate_language_model
from ..inference.engine import Engine, tool_token_ids
from ..io import atomic_write_text, require_input, write_jsonl
from ..modeling.factory import load_tokenizer, local_folder, require_model
from ..tasks.verifiable import REWARD_FUNCTIONS, ProblemConfig, to_problems
from ..tasks.word_problems import KINDS
from ..training.checkpoint import trainer_checkpoint
from ..training.precision import fit_precision
from .grpo_trainer import ChatForgeGRPOTrainer
from .mixture import load_mixture
from .saving import evaluated_before_training, evaluated_on_main, save_trained_model
from .sft import load_policy

CURVES = {"answer reward (train)": "rewards/answer_reward/mean", "format reward (train)": "rewards/format_reward/mean",
          "completion length": "completions/mean_length"}


@dataclass
class GRPOScriptArguments:
    """What :func:`run_grpo` needs beside TRL's ``GRPOConfig``, ``ModelConfig`` and ``DatasetMixtureConfig``."""

    problems_dir: str = field(default="runs/tiny/problems",
                              metadata={"help": "generated word problems: train.jsonl is trained on unless the recipe "
                                                "lists datasets; test.jsonl (and gsm_symbolic_test.jsonl) are the "
                                                "held-out evaluation"})
    operand_low: int = field(default=1, metadata={"help": "smallest operand of generated word problems"})
    operand_high: int = field(default=9, metadata={"help": "largest operand of generated word problems"})
    problem_kinds: list[str] = field(default_factory=lambda: list(KINDS),
                                     metadata={"help": f"kinds of generated word problem, of {list(KINDS)}"})
    rewards: list[str] = field(default_factory=lambda: ["answer", "format"],
                               metadata={"help": f"reward functions, of {sorted(REWARD_FUNCTIONS)}; weights are "
                                                 "GRPOConfig's reward_weights"})
    overlong_penalty_tokens: int = field(
        default=0, metadata={"help": "DAPO soft over-length penalty over the last N tokens of max_completion_length "
                                     "(0: off)"})
    eval_problems: int = field(default=200, metadata={"help": "held-out problems"})
    eval_k: int = field(default=8, metadata={"help": "samples per problem for pass@k"})
    eval_temperature: float = field(default=1.0, metadata={"help": "sampling temperature of pass@k"})


def grpo_parser() -> TrlParser:
    """The parser of GRPO recipes: YAML via ``--config``, ``--key value`` overrides."""
    return TrlParser(dataclass_types=[GRPOScriptArguments, GRPOConfig, ModelConfig, DatasetMixtureConfig])


def problem_config(script: GRPOScriptArguments) -> ProblemConfig:
    """The generated problems a recipe asks for."""
    return ProblemConfig(low=script.operand_low, high=script.operand_high, kinds=tuple(script.problem_kinds))


def check_inputs(script: GRPOScriptArguments, model_args: ModelConfig) -> None:
    """Stop before any work where an input is missing, naming the command that makes it, or where generated
    problems there (those with a ``summary.json``) are not the ones the recipe asks for."""
    require_model("model_name_or_path", model_args.model_name_or_path)
    wanted = problem_config(script)
    require_input("problems_dir", script.problems_dir, "problems", " ".join([
        f"chatforge problems build --output {script.problems_dir} --low {wanted.low} --high {wanted.high}",
        "--kinds", *wanted.kinds]))
    summary_path = Path(script.problems_dir) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    asked = ([wanted.low, wanted.high], list(wanted.kinds))
    if summary is not None and (summary.get("operands"), summary.get("kinds")) != asked:
        raise InvalidValue(f"problems_dir={script.problems_dir} holds {summary.get('kinds')} problems with operands "
                           f"{summary.get('operands')}, but the recipe asks for {list(wanted.kinds)} with operands "
                           f"{[wanted.low, wanted.high]}: remove the folder or choose another problems_dir")


def reward_functions(script: GRPOScriptArguments, training_args: GRPOConfig) -> list:
    unknown = set(script.rewards) - set(REWARD_FUNCTIONS)
    if unknown:
        raise InvalidValue(f"rewards={script.rewards}: unknown {sorted(unknown)}; "
                           f"choose from {sorted(REWARD_FUNCTIONS)}")
    functions = [REWARD_FUNCTIONS[name] for name in script.rewards]
    if script.overlong_penalty_tokens:
        functions.append(get_soft_overlong_punishment(training_args.max_completion_length,
                                                      script.overlong_penalty_tokens))
    return functions


def held_out_evaluation(model, tokenizer, script: GRPOScriptArguments, max_new_tokens: int,
                        model_folder: str | None) -> dict:
    """Through the evaluation suite: pass@1 (greedy and sampled) and pass@k on the held-out word problems
    (``arithmetic``), and on GSM-symbolic ones where they were built (``gsm_symbolic``). ``model_folder`` holds
    the files of ``model`` and ``tokenizer`` where the figures may be kept for the eval stage (None: not kept)."""
    data = EvalData(**EvalData.of_problems(script.problems_dir))
    config = EvalConfig(limit=script.eval_problems, k=script.eval_k, temperature=script.eval_temperature,
                        max_new_tokens=max_new_tokens)
    engine = Engine(model, tokenizer)
    return evaluate_language_model(engine, applicable_tasks(("arithmetic", "gsm_symbolic"), data, engine), data,
                                   config, model_folder=model_folder)


def run_grpo(script: GRPOScriptArguments, training_args: GRPOConfig, model_args: ModelConfig,
             mixture: DatasetMixtureConfig) -> dict:
    """GRPO of ``model_name_or_path`` on the mixture's problems; the model, ``eval.json``, ``metrics.jsonl``
    (the trainer's log per step) and ``grpo.png`` go to ``output_dir``."""
    started = time.perf_counter()
    fit_precision(training_args)
    check_inputs(script, model_args)
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    if mixture.datasets:
        train = load_mixture(mixture)["train"]
    else:
        train = datasets.load_dataset("json", data_files=str(Path(script.problems_dir) / "train.jsonl"), split="train")
    train = train.map(to_problems, batched=True, with_indices=True, fn_kwargs={"name": "train"},
                      remove_columns=train.column_names, load_from_cache_file=False, desc="problems")
    if suppress := tool_token_ids(tokenizer):  # problems are worked in the text: no tool call would be answered
        training_args.generation_kwargs = {**(training_args.generation_kwargs or {}), "suppress_tokens": suppress}
    model = load_policy(model_args, tokenizer)
    before = evaluated_before_training(model, lambda: held_out_evaluation(
        model, tokenizer, script, training_args.max_completion_length, local_folder(model_args.model_name_or_path)))
    trainer = ChatForgeGRPOTrainer(model=model, reward_funcs=reward_functions(script, training_args),
                                   args=training_args, train_dataset=train, processing_class=tokenizer,
                                   peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=trainer_checkpoint(training_args.output_dir,
                                                             training_args.resume_from_checkpoint))
    save_trained_model(trainer, training_args.output_dir,
                       (lambda: load_policy(model_args, tokenizer)) if model_args.use_peft else None)
    figures = {"before": before, "train_problems": len(train)}
    with evaluated_on_main(trainer, AutoModelForCausalLM, training_args.output_dir) as trained:
        if trained is not None:
            after = held_out_evaluation(trained, tokenizer, script, training_args.max_completion_length,
                                        training_args.output_dir)
            figures.update(grpo=after, seconds=round(time.perf_counter() - started, 1))
            _write_outputs(Path(training_args.output_dir), figures, trainer.state.log_history)
            print(f"GRPO -> {training_args.output_dir}: held-out greedy pass@1 "
                  f"{before.get('arithmetic', {}).get('pass@1_greedy', float('nan')):.3f} -> "
                  f"{after.get('arithmetic', {}).get('pass@1_greedy', float('nan')):.3f}")
    return figures


def _write_outputs(output: Path, figures: dict, log_history: list[dict]) -> None:
    """``eval.json``, ``metrics.jsonl`` (the trainer's log per step) and ``grpo.png``."""
    write_jsonl(output / "metrics.jsonl", log_history)
    curves = history_series(log_history, CURVES)
    panels = {"reward": {k: v for k, v in curves.items() if "reward" in k},
              "completion length (tokens)": {k: v for k, v in curves.items() if "length" in k}}
    plot_panels(panels, output / "grpo.png", "GRPO on word problems")
    atomic_write_text(output / "eval.json", json.dumps(figures, indent=2))

