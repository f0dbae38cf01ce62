"""Reward modelling from preferences, on TRL's RewardTrainer (batches packed where the model scores packed rows).

Any sequence-classification model with one label (ChatForge's, or a Llama-family one from a path)
learns to score the chosen conversation above the rejected one (Bradley-Terry loss). Records may be
pairs or K-way rankings in several formats (:mod:`.preferences`). Held-out pairwise accuracy and Kendall's
tau on held-out rankings go to ``eval.json``.
"""

import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForSequenceClassification, set_seed
from transformers.modeling_outputs import SequenceClassifierOutputWithPast
from trl import DatasetMixtureConfig, ModelConfig, RewardConfig, RewardTrainer, TrlParser, get_peft_config

from ..errors import InvalidValue
from ..eval.suite import REWARD_TASKS, EvalConfig, EvalData, evaluate_reward_model
from ..io import atomic_write_text, require_input
from ..modeling import DOCUMENT_ATTENTION
from ..modeling.factory import load_tokenizer, require_model
from ..tasks.preferences import to_pairs
from ..training.checkpoint import trainer_checkpoint
from ..training.precision import fit_precision
from .mixture import load_mixture
from .packed_scoring import pack_rows
from .saving import evaluated_before_training, evaluated_on_main, save_trained_model
from .sft import trained_dtype


@dataclass
class RewardScriptArguments:
    """What :func:`run_reward` needs beside TRL's ``RewardConfig``, ``ModelConfig`` and ``DatasetMixtureConfig``."""

    preference_data_dir: str = field(default="runs/tiny/preference-data",
                                     metadata={"help": "embedded preference set (chatforge preference-data build); "
                                                       "its held-out pairs and rankings are the evaluation"})
    policy_samples: int = field(
        default=0, metadata={"help": "replies sampled per prompt from model_name_or_path (the policy RL starts "
                                     "from) that the preference data ranks with the others: how the speedrun, or "
                                     "the command named for a missing preference_data_dir, builds it"})
    max_train_pairs: int | None = field(
        default=None, metadata={"help": "train on this many pairs, a random subset drawn with the seed, for a quicker "
                                        "run (all by default)"})
    eval_pairs: int | None = field(default=None, metadata={"help": "held-out pairs to score (all by default)"})
    eval_rankings: int | None = field(default=None, metadata={"help": "held-out rankings to score (all)"})

    def __post_init__(self):
        for name in ("max_train_pairs", "eval_pairs", "eval_rankings"):
            if (value := getattr(self, name)) is not None and value < 1:
                raise InvalidValue(f"{name}={value}: must be a positive count (or unset for all)")


def reward_parser() -> TrlParser:
    """The parser of reward recipes: YAML via ``--config``, ``--key value`` overrides."""
    return TrlParser(dataclass_types=[RewardScriptArguments, RewardConfig, ModelConfig, DatasetMixtureConfig])


def preference_data_command(output: str, policy: str | None = None, policy_samples: int = 0) -> str:
    """The ``chatforge preference-data build`` command line (with ``policy_samples`` replies of ``policy``)."""
    sampled = f" --policy {policy} --policy-samples {policy_samples}" if policy and policy_samples else ""
    return f"chatforge preference-data build --output {output}{sampled}"


def check_inputs(script: RewardScriptArguments, model_args: ModelConfig) -> None:
    """Stop before any work where an input is missing, naming the command that makes it."""
    require_model("model_name_or_path", model_args.model_name_or_path)
    require_input("preference_data_dir", script.preference_data_dir, "preference data", preference_data_command(
        script.preference_data_dir, model_args.model_name_or_path, script.policy_samples))


def pair_split(dataset: datasets.Dataset, name: str) -> datasets.Dataset:
    """Any supported preference format as ``chosen``/``rejected`` conversations; a bad record raises
    :class:`~chatforge.tasks.preferences.PreferenceError` naming it."""
    return dataset.map(to_pairs, batched=True, with_indices=True, fn_kwargs={"name": name},
                       remove_columns=dataset.column_names, load_from_cache_file=False, desc=f"pairs of {name}")


def held_out_evaluation(model, tokenizer, script: RewardScriptArguments, test_pairs: str | list | None,
                        model_folder: str | None = None) -> dict:
    """Through the evaluation suite: pairwise accuracy on the held-out pairs (a file or records) and agreement with
    the held-out rankings of ``preference_data_dir``; kept in the eval cache where ``model_folder`` holds the
    model's files (the eval stage then reads the trained model's figures back)."""
    data = EvalData(**EvalData.of_preference_data(script.preference_data_dir))
    data.pairs = test_pairs
    config = EvalConfig(limits={"pairs": script.eval_pairs, "rankings": script.eval_rankings})
    return evaluate_reward_model(model, tokenizer, [task for task in REWARD_TASKS if data.has_data_for(task)], data,
                                 config, model_folder=model_folder)


def reads_sequence_bounds(model) -> bool:
    """Whether ``model`` is a transformers classifier without adapters, with a linear ``score`` head on its
    backbone, whose attention reads a packed row's sequence bounds (``sdpa_documents``, flash attention)."""
    kernel = getattr(model.config, "_attn_implementation", None) or ""
    return (not hasattr(model, "peft_config") and isinstance(getattr(model, "score", None), torch.nn.Linear)
            and (kernel == DOCUMENT_ATTENTION or kernel.startswith("flash_attention")))


def score_packed(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **unused):
    """The scores of a padded batch's sequences by a model that scores a packed row sequence by sequence
    (ChatForge's classifier), computed on the batch packed into one row."""
    return model(**pack_rows(input_ids, attention_mask).model_inputs())


def score_packed_at_ends(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **unused):
    """The scores of a padded batch's sequences by a :func:`reads_sequence_bounds` classifier: its backbone on the
    batch packed into one row, its score head at each sequence's last token."""
    rows = pack_rows(input_ids, attention_mask)
    hidden = getattr(model, model.base_model_prefix)(**rows.model_inputs()).last_hidden_state[0]
    return SequenceClassifierOutputWithPast(logits=model.score(hidden[rows.bounds[1:].long() - 1]))


class PackedRewardTrainer(RewardTrainer):
    """TRL's RewardTrainer scoring each batch of chosen and rejected conversations packed into one row where the
    model scores packed sequences one by one: ChatForge's classifier, and a transformers one that reads the
    sequences' bounds (:func:`reads_sequence_bounds`) in a single process (its backbone is called directly, which a
    distributed wrapper would not see). Other models get TRL's padded batches."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unwrapped = self.accelerator.unwrap_model(model)
        if getattr(unwrapped, "scores_packed_sequences", False):
            model = partial(score_packed, model)
        elif unwrapped is model and reads_sequence_bounds(model):
            model = partial(score_packed_at_ends, model)
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)


def load_reward_model(model_args: ModelConfig, tokenizer):
    """``model_name_or_path`` as a one-label sequence classifier (a causal-LM checkpoint gets a new head)."""
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path, num_labels=1, dtype=trained_dtype(model_args),
        attn_implementation=model_args.attn_implementation)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def run_reward(script: RewardScriptArguments, training_args: RewardConfig, model_args: ModelConfig,
               mixture: DatasetMixtureConfig) -> dict:
    """Train a reward model on the mixture; save it to ``output_dir`` with ``eval.json``."""
    started = time.perf_counter()
    fit_precision(training_args)
    check_inputs(script, model_args)
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    splits = {name: pair_split(split, name) for name, split in load_mixture(mixture).items()}
    held_out = Path(script.preference_data_dir) / "pairs_test.jsonl"
    test_pairs = splits["test"].to_list() if "test" in splits else None
    if test_pairs is None and held_out.exists():
        splits["test"] = pair_split(datasets.load_dataset("json", data_files=str(held_out), split="train"),
                                    str(held_out))
        test_pairs = str(held_out)  # read as the eval stage reads it, so that its figures are the same
    if script.max_train_pairs is not None and script.max_train_pairs < len(splits["train"]):
        splits["train"] = splits["train"].shuffle(seed=training_args.seed).select(range(script.max_train_pairs))
    set_seed(training_args.seed)  # the new score head starts the same on every process, and in every run
    model = load_reward_model(model_args, tokenizer)
    untrained = evaluated_before_training(model, lambda: held_out_evaluation(model, tokenizer, script, test_pairs))
    evaluates = training_args.eval_strategy != "no"  # else the trainer need not tokenize the held-out pairs
    trainer = PackedRewardTrainer(model=model, args=training_args, train_dataset=splits["train"],
                                  eval_dataset=splits.get("test") if evaluates else None, processing_class=tokenizer,
                                  peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=trainer_checkpoint(training_args.output_dir,
                                                             training_args.resume_from_checkpoint))
    save_trained_model(trainer, training_args.output_dir,
                       (lambda: load_reward_model(model_args, tokenizer)) if model_args.use_peft else None)
    figures = {"untrained": untrained, "train_pairs": len(splits["train"])}
    with evaluated_on_main(trainer, AutoModelForSequenceClassification, training_args.output_dir) as trained:
        if trained is not None:
            summary = held_out_evaluation(trained, tokenizer, script, test_pairs, training_args.output_dir)
            figures.update(reward_model=summary, seconds=round(time.perf_counter() - started, 1))
            atomic_write_text(Path(training_args.output_dir) / "eval.json", json.dumps(figures, indent=2))
            print(f"reward model -> {training_args.output_dir}: held-out pairwise accuracy "
                  f"{summary.get('pairs', {}).get('accuracy', float('nan')):.3f}, Kendall tau "
                  f"{summary.get('rankings', {}).get('kendall_tau', float('nan')):.3f}")
    return figures
