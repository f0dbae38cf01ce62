"""Supervised fine-tuning into an assistant, on TRL's SFTTrainer.

Conversations (a ``messages`` column) are checked (:mod:`.conversations`), rendered with the model's
chat template and trained on the assistant's tokens only, through the template's ``{% generation %}``
markers: ChatForge's template has them (and leaves tool outputs out); TRL patches the templates of the
common families (Llama 3, Qwen, Gemma, Phi-3, ...) to add them. Rows of pretraining text can be replayed
among the conversations against forgetting (:mod:`.replay`). Held-out figures go to ``eval.json``.
"""

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForCausalLM
from trl import DatasetMixtureConfig, ModelConfig, SFTConfig, TrlParser, get_peft_config
from trl.chat_template_utils import get_training_chat_template

from ..data.shards import TokenShards
from ..errors import InvalidValue, MissingInput
from ..eval.chat import kept_right
from ..eval.suite import TOOL_TASKS, EvalConfig, EvalData, applicable_tasks, evaluate_language_model
from ..inference.engine import Engine
from ..inference.packed_linear import packed_linears
from ..io import atomic_write_text, require_input, will_exist
from ..modeling.factory import load_tokenizer, local_folder, require_model, set_generation_defaults
from ..tasks.conversations import ON_INVALID, ConversationError, check_conversation
from ..training.checkpoint import trainer_checkpoint
from ..training.precision import fit_precision
from .mixture import load_mixture
from .probe import ProbeConfig, probe_command
from .replay import check_compatible, mix_in, shard_rows
from .saving import evaluated_before_training, evaluated_on_main, interpolate_with_start, save_trained_model
from .sft_trainer import ScoredLogitsOnCPUSFTTrainer

#: What an SFT evaluation measures, on the held-out files of ``sft_data_dir`` (those that are there).
SFT_TASKS = ("format", *TOOL_TASKS, "knowledge")


@dataclass
class SFTScriptArguments:
    """What :func:`run_sft` needs beside TRL's ``SFTConfig``, ``ModelConfig`` and ``DatasetMixtureConfig``."""

    sft_data_dir: str = field(default="runs/tiny/sft-data",
                              metadata={"help": "embedded SFT mixture (chatforge sft-data build); its test split "
                                                "and word problems are the held-out evaluation"})
    on_invalid: str = field(default="skip", metadata={"help": "bad conversations: skip (counted) or error"})
    eval_conversations: int | None = field(
        default=None, metadata={"help": "held-out conversations the held-out loss is measured on (all)"})
    eval_prompts: int = field(default=200, metadata={"help": "held-out prompts for format adherence"})
    eval_word_problems: int = field(
        default=200, metadata={"help": "held-out word problems, look-ups and python problems (of each)"})
    eval_world_questions: int | None = field(default=None, metadata={"help": "held-out knowledge questions (all)"})
    knowledge_questions: str | None = field(
        default=None, metadata={"help": "held-out knowledge questions ({question, answer, group}; default: the "
                                        "fictional world's, world_qa_test.jsonl in sft_data_dir)"})
    eval_tasks: list[str] | None = field(
        default=None, metadata={"help": f"the tasks measured on the trained model (default: all of "
                                        f"{', '.join(SFT_TASKS)} that its data holds)"})
    eval_base_model: bool = field(default=True, metadata={"help": "also measure the model before SFT"})
    eval_base_tasks: list[str] | None = field(
        default=None, metadata={"help": "the tasks measured on the model before SFT (default: eval_tasks; e.g. "
                                        "[knowledge] where the stage before measured the same model's others)"})
    probe_dir: str | None = field(
        default=None, metadata={"help": "knowledge-probe examples this mixture uses (chatforge probe)"})
    probe_model: str | None = field(
        default=None, metadata={"help": "the model the probe asks to make probe_dir (in the speedrun's probe stage, "
                                        "and in the command named for a missing probe_dir)"})
    probe_questions: str = field(default="world_probe.jsonl",
                                 metadata={"help": "the questions the probe asks, in sft_data_dir"})
    probe_held_out: str | None = field(
        default=None, metadata={"help": "held-out questions in sft_data_dir that the probe also labels known / "
                                        "unknown (probe_dir/held_out.jsonl: give it as knowledge_questions)"})
    probe_samples: int = field(default=4, metadata={"help": "answers the probe samples per question"})
    probe_threshold: float = field(default=0.5, metadata={"help": "share of right sampled answers that makes a "
                                                                   "question known to the probed model"})
    probe_unknown_below: float | None = field(
        default=None, metadata={"help": "share of right sampled answers below which a question is unknown; those "
                                        "between it and probe_threshold are left out of the examples"})
    probe_known_copies: int = field(default=1, metadata={"help": "copies of each answered probe example"})
    probe_unknown_copies: int = field(default=1, metadata={"help": "copies of each 'I don't know' probe example"})
    probe_known_share: float | None = field(
        default=None, metadata={"help": "share of each question group's probe examples that answer (known ones "
                                        "copied to reach it; instead of probe_known_copies)"})
    trained_weights_share: float = field(
        default=1.0, metadata={"help": "the saved model's weights: this share of the trained ones, the rest the "
                                       "starting model's (weight-space interpolation, WiSE-FT; 1 saves the trained "
                                       "model)"})
    replay_shards: str | None = field(
        default=None, metadata={"help": "pretraining token shards (chatforge data tokenize) replayed as plain text "
                                        "among the training rows, against forgetting what pretraining taught"})
    replay_fraction: float = field(default=0.5, metadata={"help": "share of the training rows that replay_shards "
                                                                  "makes up"})

    def __post_init__(self):
        if self.eval_conversations is not None and self.eval_conversations < 1:
            raise InvalidValue(f"eval_conversations={self.eval_conversations}: must be a positive count "
                               "(or unset for all)")
        if not 0 < self.trained_weights_share <= 1:
            raise InvalidValue(f"trained_weights_share={self.trained_weights_share}: give a share above 0 and at "
                               "most 1")
        for name in ("eval_tasks", "eval_base_tasks"):
            if unknown := set(getattr(self, name) or ()) - set(SFT_TASKS):
                raise InvalidValue(f"{name}: {', '.join(sorted(unknown))} is not an SFT task; choose from "
                                   f"{', '.join(SFT_TASKS)}")


def check_inputs(script: SFTScriptArguments, model_args: ModelConfig) -> None:
    """Stop before any work where an input is missing, naming the command that makes it."""
    require_model("model_name_or_path", model_args.model_name_or_path)
    require_input("sft_data_dir", script.sft_data_dir, "SFT data", f"chatforge sft-data build --output "
                                                                    f"{script.sft_data_dir}")
    if script.probe_dir and not will_exist(script.probe_dir):
        if script.probe_model is None:
            raise MissingInput("probe_dir", script.probe_dir, "probe examples")
        require_model("probe_model", script.probe_model)
        data_dir = Path(script.sft_data_dir)
        raise MissingInput("probe_dir", script.probe_dir, "probe examples", probe_command(
            script.probe_model, str(data_dir / script.probe_questions), script.probe_dir,
            ProbeConfig.from_recipe(vars(script)), str(data_dir / script.probe_held_out) if script.probe_held_out
            else None))
    if script.replay_shards:
        require_input("replay_shards", script.replay_shards, "token shards")


def sft_parser() -> TrlParser:
    """The parser of SFT recipes: YAML via ``--config``, ``--key value`` overrides."""
    return TrlParser(dataclass_types=[SFTScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig])


def prepare_chat_template(tokenizer, chat_template_path: str | None) -> None:
    """Give ``tokenizer`` the template of a ``.jinja`` file given as ``chat_template_path`` (as TRL does, so that
    evaluation uses it too), and fail before any expensive work where TRL's assistant-only loss cannot use the
    template: one without ``{% generation %}`` markers that TRL does not know how to patch. (A tokenizer given as
    ``chat_template_path`` is cloned and checked by TRL.)"""
    if chat_template_path is not None:
        if not chat_template_path.endswith((".jinja", ".j2")):
            return
        tokenizer.chat_template = Path(chat_template_path).read_text()
    if tokenizer.chat_template is None:
        raise InvalidValue(f"{tokenizer.name_or_path}: the tokenizer has no chat template")
    try:
        get_training_chat_template(tokenizer)
    except ValueError as error:
        raise InvalidValue(
            f"{chat_template_path or tokenizer.name_or_path}: assistant-only loss needs a chat template with "
            "{% generation %} markers, which TRL cannot add to this one. For a ChatML-style model (SmolLM2, Qwen, "
            "...) `chatforge model add-tools MODEL --output DIR` writes ChatForge's (with tool calls); otherwise "
            "give a template with the markers as chat_template_path (a .jinja file)") from error


def checked_split(dataset: datasets.Dataset, name: str, on_invalid: str, tokenizer,
                  max_length: int | None) -> tuple[datasets.Dataset, dict]:
    """Keep conversations that are well formed and fit ``max_length`` tokens; the others raise
    (``on_invalid="error"``) or are counted by reason."""
    if on_invalid not in ON_INVALID:
        raise InvalidValue(f"on_invalid={on_invalid!r}; choose one of {ON_INVALID}")
    skipped: Counter = Counter()

    def keep(record, index):
        try:
            check_conversation(record.get("messages"), f"{name} record {index}", tokenizer, max_length)
        except ConversationError as error:
            if on_invalid == "error":
                raise
            skipped[error.reason] += 1
            return False
        return True

    kept = dataset.filter(keep, with_indices=True, load_from_cache_file=False, desc=f"checking {name}")
    return kept, dict(skipped)


def held_out_evaluation(model, tokenizer, script: SFTScriptArguments, model_folder: str | None,
                        tasks: Sequence[str] = SFT_TASKS) -> dict:
    """``tasks`` (of :data:`SFT_TASKS`) through the evaluation suite: format adherence; word-problem, look-up and
    python-problem accuracy with and without tools (for a model with the tool tokens); accuracy and "I don't know"
    rate on questions about held-out people of the fictional world. ``model_folder`` holds the files of ``model``
    and ``tokenizer`` where the figures may be kept for the eval stage (None: not kept)."""
    data = EvalData(**EvalData.of_sft_data(script.sft_data_dir))
    data.questions = script.knowledge_questions or data.questions
    config = EvalConfig(limits={"format": script.eval_prompts, "knowledge": script.eval_world_questions,
                                **dict.fromkeys(TOOL_TASKS, script.eval_word_problems)})
    engine = Engine(model, tokenizer, toolbox=data.toolbox())
    return evaluate_language_model(engine, applicable_tasks(tasks, data, engine), data, config,
                                   model_folder=model_folder)


def with_replay(train: datasets.Dataset, script: SFTScriptArguments, training_args: SFTConfig, tokenizer,
                vocab_size: int) -> datasets.Dataset:
    """The prepared training rows with ``script.replay_fraction`` of rows from ``script.replay_shards``."""
    if training_args.max_length is None:
        raise InvalidValue("replay_shards needs max_length: the length of the replayed rows")
    shards = TokenShards(script.replay_shards)
    check_compatible(shards, tokenizer, vocab_size)
    replay = shard_rows(shards, training_args.max_length,
                        training_args.packing_strategy if training_args.packing else None)
    mixed = mix_in(train, replay, script.replay_fraction, training_args.seed)
    print(f"replaying {script.replay_shards}: {len(mixed) - len(train):,} of {len(mixed):,} training rows")
    return mixed


def model_dtype(model_args: ModelConfig):
    """``ModelConfig.dtype`` as ``from_pretrained`` takes it: ``"auto"``, None or a torch dtype."""
    return model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)


def trained_dtype(model_args: ModelConfig):
    """The dtype to load a model that trains in: fp32 master weights, whatever ``dtype`` (or a bf16 checkpoint
    with ``"auto"``) says, since AdamW's small updates round away in bf16 weights (below 2^-8 of a weight); bf16
    compute comes from mixed precision (``bf16: true``). With LoRA the frozen base keeps ``dtype`` (peft keeps
    the adapters in fp32)."""
    return model_dtype(model_args) if model_args.use_peft else torch.float32


def load_policy(model_args: ModelConfig, tokenizer):
    """The model to fine-tune (fp32 master weights, see :func:`trained_dtype`), its generation stopping at the
    end of a chat turn."""
    model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, dtype=trained_dtype(model_args),
                                                 attn_implementation=model_args.attn_implementation)
    set_generation_defaults(model, tokenizer)
    return model


def evaluated_loss(trainer) -> float:
    """``trainer``'s loss on its evaluation set (on a CPU against packed weights,
    :mod:`~chatforge.inference.packed_linear`)."""
    with packed_linears(trainer.model):
        return trainer.evaluate()["eval_loss"]


def held_out_loss_before_training(trainer, held_out_loss):
    """``held_out_loss()`` before ``trainer`` trains, leaving the model for ``train`` to prepare. Accelerate
    (1.15) marks a model prepared for evaluation as prepared, and then does not wrap it for data parallelism:
    the processes would each train on their own gradients. Under FSDP it is not measured (None): Accelerate
    prepares an FSDP2 model only together with its optimizer."""
    if trainer.is_fsdp_enabled:
        print("FSDP: the held-out loss before training is not measured (eval_loss_before: null)")
        return None
    loss = held_out_loss()
    trainer.model._is_accelerate_prepared = False
    return loss


def run_sft(script: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig,
            mixture: DatasetMixtureConfig) -> dict:
    """Fine-tune ``model_args.model_name_or_path`` on the mixture; save it to ``output_dir`` with
    ``eval.json`` (held-out loss, format adherence, word problems with/without tools, skipped records)."""
    started = time.perf_counter()
    fit_precision(training_args)
    check_inputs(script, model_args)
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    prepare_chat_template(tokenizer, training_args.chat_template_path)
    splits = dict(load_mixture(mixture))
    held_out = Path(script.sft_data_dir) / "test.jsonl"
    if "test" not in splits and held_out.exists():
        splits["test"] = datasets.load_dataset("json", data_files=str(held_out), split="train").select_columns(
            ["messages"])
    if "test" in splits and script.eval_conversations is not None:
        splits["test"] = splits["test"].select(range(min(script.eval_conversations, len(splits["test"]))))
    checked, skipped = {}, {}
    for split_name, split in splits.items():
        checked[split_name], skipped[split_name] = checked_split(split, split_name, script.on_invalid, tokenizer,
                                                                 training_args.max_length)
    training_args.assistant_only_loss = True
    model = load_policy(model_args, tokenizer)
    # a template given as chat_template_path is not the folder's: the figures are not kept
    base_folder = local_folder(model_args.model_name_or_path) if training_args.chat_template_path is None else None
    base_figures = (evaluated_before_training(model, lambda: held_out_evaluation(
        model, tokenizer, script, base_folder, script.eval_base_tasks or script.eval_tasks or SFT_TASKS))
        if script.eval_base_model else None)
    if model_args.use_peft and not model_args.lora_target_modules:
        model_args.lora_target_modules = "all-linear"
    trainer = ScoredLogitsOnCPUSFTTrainer(model=model, args=training_args, train_dataset=checked["train"],
                                          eval_dataset=checked.get("test"), processing_class=tokenizer,
                                          peft_config=get_peft_config(model_args))
    if script.replay_shards:
        trainer.train_dataset = with_replay(trainer.train_dataset, script, training_args, tokenizer,
                                            model.get_input_embeddings().num_embeddings)
    held_out_loss = (lambda: evaluated_loss(trainer)) if "test" in checked else (lambda: None)
    eval_loss_before = held_out_loss_before_training(trainer, held_out_loss)
    trainer.train(resume_from_checkpoint=trainer_checkpoint(training_args.output_dir,
                                                             training_args.resume_from_checkpoint))
    eval_loss = held_out_loss()
    # saved before the evaluation, so that its failure loses no training
    save_trained_model(trainer, training_args.output_dir,
                       (lambda: load_policy(model_args, tokenizer)) if model_args.use_peft else None)
    if script.trained_weights_share < 1:
        interpolate_with_start(trainer.accelerator, training_args.output_dir,
                               lambda: load_policy(model_args, tokenizer), script.trained_weights_share)
    figures = {"eval_loss_before": eval_loss_before, "eval_loss": eval_loss,
               "eval_conversations": len(checked["test"]) if "test" in checked else 0, "skipped": skipped,
               "train_conversations": len(checked["train"]), "train_rows": len(trainer.train_dataset),
               "trained_weights_share": script.trained_weights_share, "base": base_figures}
    with evaluated_on_main(trainer, AutoModelForCausalLM, training_args.output_dir) as trained:
        if trained is not None:
            figures.update(sft=held_out_evaluation(trained, tokenizer, script, training_args.output_dir,
                                                   script.eval_tasks or SFT_TASKS),
                           seconds=round(time.perf_counter() - started, 1))
            if "knowledge" in (base_figures or {}) and "knowledge" in figures["sft"]:
                kept_right(base_figures["knowledge"], figures["sft"]["knowledge"])
            atomic_write_text(Path(training_args.output_dir) / "eval.json", json.dumps(figures, indent=2))
    return figures
