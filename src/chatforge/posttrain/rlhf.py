"""The PPO recipe: build what is missing, load the four models, run :class:`~.ppo.PPOTrainer`."""

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from trl import ModelConfig, TrlParser, get_peft_config

from ..errors import InvalidValue
from ..io import read_jsonl, require_input
from ..modeling.factory import load_tokenizer, require_model, set_generation_defaults
from .ppo_config import PPOConfig
from .ppo_trainer import PPOTrainer
from .reward import preference_data_command
from .sft import model_dtype, trained_dtype


@dataclass
class PPOScriptArguments:
    """The models and prompts of a PPO run (the policy is ``model_name_or_path`` of ``ModelConfig``)."""

    reward_model_path: str = field(default="runs/tiny/reward", metadata={"help": "the reward model"})
    value_model_path: str | None = field(default=None, metadata={"help": "initial value model (the reward model)"})
    prompts_dir: str = field(default="runs/tiny/preference-data",
                             metadata={"help": "tasks_train.jsonl (training prompts, eval_prompts of them held out "
                                               "for validation) and tasks_test.jsonl (test prompts): prompts with "
                                               "the gold reward's fields (chatforge preference-data build)"})


def ppo_parser() -> TrlParser:
    """The parser of PPO recipes: YAML via ``--config``, ``--key value`` overrides."""
    return TrlParser(dataclass_types=[PPOScriptArguments, PPOConfig, ModelConfig])


def check_inputs(script: PPOScriptArguments, model_args: ModelConfig) -> None:
    """Stop before any work where an input is missing, naming the command that makes it."""
    require_model("model_name_or_path", model_args.model_name_or_path)
    require_model("reward_model_path", script.reward_model_path)
    if script.value_model_path:
        require_model("value_model_path", script.value_model_path)
    require_input("prompts_dir", script.prompts_dir, "prompts", preference_data_command(script.prompts_dir))


def split_validation(tasks: list[dict], count: int, seed: int, where: str) -> tuple[list[dict], list[dict]]:
    """The training prompts less a seeded ``count`` of them, and those ``count`` (the validation prompts)."""
    if count >= len(tasks):
        raise InvalidValue(f"{where}: {len(tasks)} training prompts cannot spare eval_prompts={count} for validation")
    order = random.Random(seed).sample(range(len(tasks)), len(tasks))
    return [tasks[i] for i in order[count:]], [tasks[i] for i in order[:count]]


def with_lora(policy, model_args: ModelConfig):
    """The policy with LoRA adapters where ``use_peft`` asks for them (all linear layers unless
    ``lora_target_modules`` names them), else the policy itself."""
    if not model_args.use_peft:
        return policy
    from peft import get_peft_model

    if not model_args.lora_target_modules:
        model_args.lora_target_modules = "all-linear"
    return get_peft_model(policy, get_peft_config(model_args))


def run_ppo(script: PPOScriptArguments, config: PPOConfig, model_args: ModelConfig) -> dict:
    """PPO of the policy against the reward model (LoRA adapters on the policy with ``use_peft``); the kept
    policy, ``eval.json`` and ``ppo.png`` go to ``output_dir``."""
    check_inputs(script, model_args)
    dtype = model_dtype(model_args)
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    torch.manual_seed(config.seed)
    # the policy and value model train with fp32 master weights (trained_dtype); the reference matches the policy
    # (the KL starts at zero), the frozen reward model takes dtype
    attention = model_args.attn_implementation  # scores packed rollouts: sdpa_documents attends reply by reply
    policy, ref_policy = (AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path,
                                                               dtype=trained_dtype(model_args),
                                                               attn_implementation=attention) for _ in range(2))
    set_generation_defaults(policy, tokenizer)
    policy = with_lora(policy, model_args)
    reward_model, value_model = (
        AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=load_dtype,
                                                           attn_implementation=attention)
        for path, load_dtype in ((script.reward_model_path, dtype),
                                 (script.value_model_path or script.reward_model_path, torch.float32)))
    for model in (reward_model, value_model):
        model.config.pad_token_id = tokenizer.pad_token_id
    prompts = Path(script.prompts_dir)
    train_tasks, validation_tasks = split_validation(read_jsonl(prompts / "tasks_train.jsonl"), config.eval_prompts,
                                                     config.seed, str(prompts / "tasks_train.jsonl"))
    trainer = PPOTrainer(config, policy, ref_policy, value_model, reward_model, tokenizer, train_tasks,
                         validation_tasks, read_jsonl(prompts / "tasks_test.jsonl"))
    return trainer.train()
