"""RLHF with PPO against a learned reward model, on Accelerate.

Four models: the policy being trained, a frozen copy of it (the reference), a value model (a
sequence-classification backbone whose one-output head is applied at every token; by default a copy of
the reward model) and the frozen reward model. Each step samples replies to a batch of prompts with the
sampling engine, scores them with the reward model, turns the score into per-token rewards with a KL
penalty to the reference (fixed or adaptive coefficient), estimates advantages with GAE and takes clipped
policy and value steps over minibatch epochs.

"Crop it": every ``eval_steps`` the validation prompts (held out of the training prompts) are answered greedily
and scored by the reward model and, where there is one, the rule-based gold judge. The stop rule sees them only
(``select_by``):

- ``gold``: the policy with the best validation gold reward is kept; training stops when the KL to the
  reference passes ``kl_budget``, or when the gold reward has not improved for ``stop_patience`` evaluations
  while the reward-model score kept rising (the reward model is being gamed). Needs a judge.
- ``reward_model``: the policy with the best validation reward-model score among those whose KL to the
  reference stays within ``kl_budget`` is kept; training stops when the KL passes the budget. Needs no judge:
  the budget bounds how far the policy may drift from where the reward model was trained to judge.

The kept policy is the result; it is also scored on the test prompts (which no rule sees), as the initial policy
is, to report how it does on new prompts.
"""

import contextlib
import copy
import json
import math
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from trl.models import unwrap_model_for_generation

from ..errors import InvalidValue
from ..eval.plots import plot_panels
from ..eval.reward import score_token_ids
from ..inference.batching import chat_many
from ..inference.engine import ChatEvent, Engine, SamplingParams
from ..inference.packed_linear import packed_linears
from ..io import atomic_directory, atomic_write_text, write_jsonl
from ..tasks.gold import gold_reward
from ..training.checkpoint import (
    STATE_FILE,
    export_final_model,
    resolve_checkpoint,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from ..training.distributed import (
    fresh_accelerator,
    load_optimizer_state,
    optimizer_state,
    parameters_sharded,
    root_parameters_gathered,
    without_tied_copies,
)
from ..training.optim import adamw_runs_fused
from ..training.precision import mixed_precision
from .packed_scoring import PackedRows, pack_rows, packed_logits, without_suppressed
from .ppo_config import SELECTION_METRICS, PPOConfig

BEST_DIR = "best"
VALUE_DIR = "value"


class PolicyAndValue(torch.nn.Module):
    """The two trained models as one module, so one optimizer and ``accelerator.prepare`` cover both."""

    def __init__(self, policy, value_model):
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    # what trl.models.unwrap_model_for_generation asks of the model it unwraps
    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.policy.is_activation_checkpointing

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.policy.activation_checkpointing_enable(gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.policy.activation_checkpointing_disable()

    def forward(self, rollout: "Rollout", temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reply-token log-probabilities, entropies and values."""
        logprobs, entropy = token_logprobs(self.policy, rollout, temperature)
        return logprobs, entropy, token_values(self.value_model, rollout)


@dataclass
class Rollout:
    """A batch of prompts and sampled replies, right-padded into ``input_ids``; per-token tensors are
    (batch, longest reply), aligned to the reply tokens and masked by ``mask``."""

    tasks: list[dict]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor  # index into input_ids of the logit that predicts each reply token
    mask: torch.Tensor
    replies: list[str]
    finished: list[bool]
    sampling_logprobs: torch.Tensor | None = None  # of each reply token under the distribution it was drawn from
    suppressed: list[int] = field(default_factory=list)  # tokens the sampler could not draw


@dataclass
class Scored:
    """A rollout as the update sees it: the policy's token log-probabilities and the value model's estimates
    before the update, the per-token KL to the reference, and the reward model's score of each reply."""

    logprobs: torch.Tensor
    values: torch.Tensor
    kl: torch.Tensor
    scores: torch.Tensor


def mean_and_standard_error(values: Sequence[float]) -> tuple[float, float]:
    """The mean of (at least one) ``values`` and its standard error (0 for a single value)."""
    error = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return statistics.fmean(values), error


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return whitened if shift_mean else whitened + mean


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Advantages and returns by generalised advantage estimation over the reply tokens."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    return advantages * mask, (advantages + values) * mask


def _packed(rollout: Rollout) -> tuple[PackedRows, torch.Tensor]:
    """The rollout's real tokens packed into one row, and the packed index of each reply token's predicting
    position (reply tokens in ``rollout.mask`` only)."""
    rows = pack_rows(rollout.input_ids, rollout.attention_mask)
    return rows, rows.index.gather(1, rollout.positions)[rollout.mask.bool()]


def _on_reply_grid(rollout: Rollout, values: torch.Tensor) -> torch.Tensor:
    """Per-reply-token ``values`` laid on the rollout's (batch, longest reply) grid, zeros elsewhere."""
    return values.new_zeros(rollout.mask.shape).masked_scatter(rollout.mask.bool(), values)


def token_logprobs(model, rollout: Rollout, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the reply tokens under ``model`` (sampling temperature applied, the rollout's
    suppressed tokens left out, as when it was sampled) and the entropy of each predicting distribution; the
    rollout is scored packed, the head applied at reply positions only."""
    rows, predicting = _packed(rollout)
    logits = without_suppressed(packed_logits(model, rows, predicting).float() / temperature, rollout.suppressed)
    targets = rollout.input_ids.gather(1, rollout.positions + 1)[rollout.mask.bool()]
    logprobs = F.log_softmax(logits, dim=-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return (_on_reply_grid(rollout, logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)),
            _on_reply_grid(rollout, entropy))


def token_values(value_model, rollout: Rollout) -> torch.Tensor:
    """The value head applied to the hidden state before each reply token (the rollout packed)."""
    rows, predicting = _packed(rollout)
    backbone = getattr(value_model, value_model.base_model_prefix)
    hidden = backbone(**rows.model_inputs()).last_hidden_state[0]
    return _on_reply_grid(rollout, value_model.score(hidden[predicting]).squeeze(-1).float())


def is_lora(model) -> bool:
    """Whether ``model`` is a policy with LoRA adapters (peft), whose checkpoints hold the adapters only."""
    return hasattr(model, "peft_config")


def load_weights(modules: PolicyAndValue, checkpoint: Path) -> None:
    """The policy (or its LoRA adapters) and value-model weights of a PPO checkpoint, into unwrapped modules."""
    from safetensors.torch import load_file

    for module, folder in ((modules.policy, checkpoint), (modules.value_model, checkpoint / VALUE_DIR)):
        weights = {}
        for shard in sorted(folder.glob("*.safetensors")):
            weights.update(load_file(shard))
        if not is_lora(module):
            module.load_state_dict(weights, strict=False)  # tied weights are saved once
            continue
        from peft import set_peft_model_state_dict

        missing = [key for key in set_peft_model_state_dict(module, weights).missing_keys if "lora_" in key]
        if missing:
            raise InvalidValue(f"{folder}: the checkpoint lacks {len(missing)} LoRA weights, e.g. {missing[0]}")


class PPOTrainer:
    """PPO with a KL penalty to a reference policy, GAE, clipped losses and a stop rule (``select_by``).

    ``gold`` judges a reply to a task (``gold(reply, task, finished) -> float``), or is None where there is no
    judge (``select_by="reward_model"``); tasks are ``{"messages": [...], ...}`` records whose other fields the
    gold judge reads. ``eval_tasks`` (validation) pick the kept policy; ``test_tasks`` only report on it.
    """

    def __init__(self, config: PPOConfig, policy, ref_policy, value_model, reward_model, tokenizer,
                 train_tasks: Sequence[dict], eval_tasks: Sequence[dict], test_tasks: Sequence[dict] = (),
                 gold: Callable[[str, dict, bool], float] | None = gold_reward):
        if not train_tasks:
            raise InvalidValue("PPO needs training prompts; train_tasks is empty")
        if not eval_tasks:
            raise InvalidValue("PPO needs validation prompts for its stop rule; eval_tasks is empty")
        if gold is None and config.select_by == "gold":
            raise InvalidValue("select_by='gold' needs a gold judge; without one use select_by='reward_model'")
        self.config = config
        self.accelerator = fresh_accelerator(cpu=config.use_cpu,
                                             mixed_precision=mixed_precision(config.bf16, config.use_cpu))
        self.tokenizer = tokenizer
        self.train_tasks, self.eval_tasks = list(train_tasks), list(eval_tasks)[:config.eval_prompts]
        self.test_tasks = list(test_tasks)[:config.test_prompts]
        self.gold = gold
        device = self.accelerator.device
        self.ref_policy = ref_policy.to(device).eval().requires_grad_(False)
        self.reward_model = reward_model.to(device).eval().requires_grad_(False)
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is not None and plugin.deepspeed_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
            # no dataloader goes through prepare(): DeepSpeed takes its batch size from the minibatch
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = (config.per_device_train_batch_size
                                                                         // config.num_mini_batches)
        modules = PolicyAndValue(policy, value_model)
        self.checkpoint = resolve_checkpoint(config.output_dir, config.resume_from_checkpoint)
        if self.checkpoint is not None:  # before prepare(), which may shard the parameters (ZeRO-3, FSDP)
            load_weights(modules, self.checkpoint)
        optimizer = torch.optim.AdamW(modules.parameters(), lr=config.learning_rate, eps=1e-5,
                                      weight_decay=config.weight_decay, fused=adamw_runs_fused(self.accelerator.device))
        self.modules, self.optimizer = self.accelerator.prepare(modules, optimizer)
        synced = parameters_sharded(self.accelerator) and self.accelerator.num_processes > 1
        self.engine = Engine(self.accelerator.unwrap_model(self.modules).policy, tokenizer, synced_processes=synced)
        self.kl_coef = config.kl_coef
        self.step = 0
        self.evaluations: list[dict] = []
        self.best: dict | None = None
        self.stop_reason: str | None = None
        self.stop_rule: dict | None = None  # when and why the stop rule first fired
        self.history: list[dict] = []

    # --- rollouts --------------------------------------------------------------------------------------

    def _prompt_ids(self, task: dict) -> list[int]:
        return self.tokenizer.apply_chat_template(task["messages"], add_generation_prompt=True, tokenize=True,
                                                  return_dict=False)

    def _batch_tasks(self, step: int) -> list[dict]:
        """The prompts of a step: epochs over a seeded shuffle of the training tasks (so a resumed run draws
        the same ones)."""
        size = self.config.per_device_train_batch_size
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        start = (step * world + rank) * size
        tasks = []
        for position in range(start, start + size):
            epoch, offset = divmod(position, len(self.train_tasks))
            order = torch.randperm(len(self.train_tasks), generator=torch.Generator().manual_seed(self.config.seed
                                                                                                   + epoch))
            tasks.append(self.train_tasks[order[offset]])
        return tasks

    def rollout(self, tasks: list[dict], params: SamplingParams) -> Rollout:
        """Sample one reply per task from the policy in training and lay the batch out for scoring and training."""
        prompts = [self._prompt_ids(task) for task in tasks]
        sampled = params.temperature > 0
        with self._policy_engine() as engine:
            replies, reply_logprobs = engine.generate_ids_with_logprobs(prompts, params, logprobs=sampled)
        return self._laid_out(tasks, prompts, replies, reply_logprobs if sampled else None)

    @contextlib.contextmanager
    def _policy_engine(self) -> Iterator[Engine]:
        """The engine, generating with the policy in training."""
        with unwrap_model_for_generation(self.modules, self.accelerator) as modules, \
                root_parameters_gathered(modules):  # gathers ZeRO-3 shards, FSDP2's outside the decoder layers
            self.engine.model = modules.policy.eval()
            yield self.engine

    def _laid_out(self, tasks: list[dict], prompts: list[list[int]], replies: list[list[int]],
                  reply_logprobs: list[list[float]] | None) -> Rollout:
        """Prompts and their replies (with the log-probabilities they were sampled with, if any) as a rollout."""
        sampled = reply_logprobs is not None
        stops = set(self.engine.stop_ids)
        replies = [reply or [self.engine.pad_id] for reply in replies]
        width = max(len(p) + len(r) for p, r in zip(prompts, replies))
        longest = max(len(r) for r in replies)
        input_ids = torch.full((len(tasks), width), self.engine.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        positions = torch.zeros((len(tasks), longest), dtype=torch.long)
        mask = torch.zeros((len(tasks), longest))
        sampling_logprobs = torch.zeros((len(tasks), longest))
        for row, (prompt, reply) in enumerate(zip(prompts, replies)):
            sequence = prompt + reply
            input_ids[row, :len(sequence)] = torch.as_tensor(sequence)
            attention_mask[row, :len(sequence)] = 1
            positions[row] = (len(prompt) - 1 + torch.arange(longest)).clamp(max=width - 2)
            mask[row, :len(reply)] = 1
            if sampled:
                sampling_logprobs[row, :len(reply_logprobs[row])] = torch.tensor(reply_logprobs[row])
        device = self.accelerator.device
        return Rollout(tasks, input_ids.to(device), attention_mask.to(device), positions.to(device), mask.to(device),
                       self.tokenizer.batch_decode(replies, skip_special_tokens=True),
                       [reply[-1] in stops for reply in replies], sampling_logprobs.to(device) if sampled else None,
                       self.engine.plain_suppressed_ids)

    def _scores(self, rollout: Rollout) -> torch.Tensor:
        """Reward-model scores of the rollout's conversations; replies cut off before their end are penalised."""
        lengths = rollout.attention_mask.sum(1).tolist()
        sequences = [ids[:length] for ids, length in zip(rollout.input_ids.tolist(), lengths)]
        scores = torch.tensor(score_token_ids(self.reward_model, sequences, self.engine.pad_id),
                              device=self.accelerator.device)
        unfinished = torch.tensor([not f for f in rollout.finished], device=scores.device, dtype=scores.dtype)
        return scores - self.config.missing_eos_penalty * unfinished

    def _golds(self, rollout: Rollout) -> list[float]:
        if self.gold is None:
            return []
        return [self.gold(reply, task, finished)
                for reply, task, finished in zip(rollout.replies, rollout.tasks, rollout.finished)]

    # --- one PPO iteration -----------------------------------------------------------------------------

    def rollout_params(self) -> SamplingParams:
        """How the rollouts of the current step sample: from the policy's whole distribution at ``temperature``
        (the one its log-probabilities, the reference's and the KL are computed on)."""
        return SamplingParams(temperature=self.config.temperature, top_k=None, top_p=None,
                              max_new_tokens=self.config.max_completion_length,
                              seed=self.config.seed * 100_003 + self.step)

    def train_step(self) -> dict:
        """One PPO iteration: rollout → scores → advantages → update."""
        torch.manual_seed(self.config.seed + self.step)  # dropout (LoRA's, say) draws the same after a resume
        rollout = self.rollout(self._batch_tasks(self.step), self.rollout_params())
        scored = self.score(rollout)
        advantages, returns = self.advantages(rollout, scored)
        stats = self.update(rollout, scored, advantages, returns)
        metrics = self._step_metrics(rollout, scored, stats)
        if self.config.adaptive_kl:
            error = max(-0.2, min(0.2, metrics["kl"] / self.config.target_kl - 1))
            self.kl_coef *= 1 + error * self.config.per_device_train_batch_size * self.accelerator.num_processes / \
                self.config.kl_horizon
        self.step += 1
        return metrics

    def score(self, rollout: Rollout) -> "Scored":
        """What the update needs to know of the sampled replies: the policy's and the reference's token
        log-probabilities, the value model's estimates, their KL, and the reward model's scores (on a CPU against
        packed weights, :mod:`~chatforge.inference.packed_linear`)."""
        with torch.no_grad(), self.accelerator.autocast(), packed_linears(self.modules), \
                packed_linears(self.ref_policy):
            logprobs, _, values = self.modules(rollout, self.config.temperature)
            ref_logprobs, _ = token_logprobs(self.ref_policy, rollout, self.config.temperature)
        return Scored(logprobs, values, (logprobs - ref_logprobs) * rollout.mask, self._scores(rollout))

    def advantages(self, rollout: Rollout, scored: "Scored") -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token rewards (the KL penalty, and the score on each reply's last token), and from them GAE
        advantages (whitened) and returns."""
        mask = rollout.mask
        rewards = -self.kl_coef * scored.kl
        last = (mask.sum(1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(last)), last] += scored.scores
        if self.config.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
        advantages, returns = gae(rewards, scored.values, mask, self.config.gamma, self.config.lam)
        return masked_whiten(advantages, mask) * mask, returns

    def update(self, rollout: Rollout, scored: "Scored", advantages: torch.Tensor,
               returns: torch.Tensor) -> dict[str, list[float]]:
        """``num_ppo_epochs`` passes of clipped policy and value updates over shuffled mini-batches."""
        config, modules, mask = self.config, self.accelerator.unwrap_model(self.modules), rollout.mask
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clipfrac": [], "approx_kl": [],
                                         "entropy": []}
        modules.train()
        size = config.per_device_train_batch_size // config.num_mini_batches
        generator = torch.Generator().manual_seed(config.seed + self.step)
        for _ in range(config.num_ppo_epochs):
            for chunk in torch.randperm(len(rollout.tasks), generator=generator).split(size):
                chunk = chunk.to(mask.device)
                part = Rollout([rollout.tasks[i] for i in chunk.tolist()], rollout.input_ids[chunk],
                               rollout.attention_mask[chunk], rollout.positions[chunk], mask[chunk], [], [],
                               suppressed=rollout.suppressed)
                old_logprobs, old_values = scored.logprobs[chunk], scored.values[chunk]
                with self.accelerator.autocast():
                    logprobs, entropy, values = self.modules(part, config.temperature)
                clipped_values = old_values + (values - old_values).clamp(-config.cliprange_value,
                                                                          config.cliprange_value)
                value_loss = 0.5 * masked_mean(torch.max((values - returns[chunk]) ** 2,
                                                         (clipped_values - returns[chunk]) ** 2), part.mask)
                ratio = torch.exp(logprobs - old_logprobs)
                policy_loss = masked_mean(torch.max(-advantages[chunk] * ratio, -advantages[chunk] * ratio.clamp(
                    1 - config.cliprange, 1 + config.cliprange)), part.mask)
                self.accelerator.backward(policy_loss + config.vf_coef * value_loss)
                self.accelerator.clip_grad_norm_(self.modules.parameters(), config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
                with torch.no_grad():
                    stats["policy_loss"].append(policy_loss.item())
                    stats["value_loss"].append(value_loss.item())
                    stats["clipfrac"].append(masked_mean(((ratio - 1).abs() > config.cliprange).float(),
                                                         part.mask).item())
                    stats["approx_kl"].append(0.5 * masked_mean((logprobs - old_logprobs) ** 2, part.mask).item())
                    stats["entropy"].append(masked_mean(entropy, part.mask).item())
        return stats

    def _step_metrics(self, rollout: Rollout, scored: "Scored", stats: dict[str, list[float]]) -> dict:
        mask = rollout.mask
        # how far the log-probabilities PPO computes are from those the tokens were sampled with (0 up to
        # rounding: larger means off-policy updates, e.g. from a truncated sampler or another precision)
        gap = masked_mean((scored.logprobs - rollout.sampling_logprobs).abs(), mask)
        scores = scored.scores
        golds = {"gold": self._mean(torch.tensor(self._golds(rollout), device=scores.device))} if self.gold else {}
        return {"step": self.step + 1, "rm_score": self._mean(scores), "kl": self._mean(scored.kl.sum(1)), **golds,
                "response_length": self._mean(mask.sum(1)), "kl_coef": self.kl_coef,
                "sampling_logprob_gap": self._mean(gap),
                **{name: sum(values) / len(values) for name, values in stats.items()}}

    def _mean(self, values: torch.Tensor) -> float:
        return self.accelerator.gather(values.detach().float().reshape(-1)).mean().item()

    # --- evaluation and the stop rule ------------------------------------------------------------------

    def evaluate(self, split: str = "eval", kept: Engine | None = None) -> dict:
        """Greedy replies of the policy in training (or the ``kept`` policy's engine) to the validation (``"eval"``)
        or test (``"test"``) prompts, scored by the reward model and the gold judge: means and their standard
        errors, named ``{split}_...``."""
        figures, examples = self._evaluate_tasks(self.eval_tasks if split == "eval" else self.test_tasks, kept)
        return {"step": self.step, **{f"{split}_{name}": value for name, value in figures.items()},
                f"{split}_examples": examples}

    def _evaluate_tasks(self, tasks: list[dict], kept: Engine | None) -> tuple[dict, list[dict]]:
        if not tasks:
            return {}, []
        params = SamplingParams(temperature=0.0, max_new_tokens=self.config.max_completion_length)
        # decoded together, each row taking the next prompt as soon as its reply has ended; scored 32 at a time
        with contextlib.nullcontext(kept) if kept is not None else self._policy_engine() as engine:
            replies = [self._reply_ids(events[-1]) for events in chat_many(
                engine, [task["messages"] for task in tasks], params, use_tools=False)]
        prompts = [self._prompt_ids(task) for task in tasks]
        scores, golds, lengths, examples = [], [], [], []
        for start in range(0, len(tasks), 32):
            rollout = self._laid_out(tasks[start:start + 32], prompts[start:start + 32], replies[start:start + 32],
                                     None)
            scores += self._scores(rollout).tolist()
            golds += self._golds(rollout)
            lengths += rollout.mask.sum(1).tolist()
            examples += [{"prompt": t["messages"][-1]["content"], "reply": r}
                         for t, r in zip(rollout.tasks[:2], rollout.replies[:2])]
        figures = {"prompts": len(tasks), "response_length": sum(lengths) / len(lengths)}
        for name, values in (("rm_score", scores), ("gold", golds)):
            if values:
                figures[name], figures[f"{name}_se"] = mean_and_standard_error(values)
        return figures, examples[:3]

    def _reply_ids(self, done: ChatEvent) -> list[int]:
        """A batched reply's tokens: its text's, and the stop token that ended it."""
        ids = self.tokenizer(done.text, add_special_tokens=False)["input_ids"]
        return ids + ([self.tokenizer.convert_tokens_to_ids(done.stop_token)] if done.stop_token else [])

    def _update_stop_rule(self, evaluation: dict, recent_kl: float) -> None:
        config = self.config
        metric = SELECTION_METRICS[config.select_by]
        within_budget = config.kl_budget is None or recent_kl <= config.kl_budget
        eligible = within_budget or config.select_by == "gold"
        if self.best is None or (eligible and evaluation[metric] > self.best[metric] + config.min_improvement):
            self.best = evaluation
            policy_state, _ = self._state_dicts()
            if self.accelerator.is_main_process:
                with atomic_directory(Path(config.output_dir) / BEST_DIR) as folder:
                    self.accelerator.unwrap_model(self.modules).policy.save_pretrained(folder, state_dict=policy_state)
                    self.tokenizer.save_pretrained(folder)
        stale = sum(e["step"] > self.best["step"] for e in self.evaluations)
        reason = None
        if config.select_by == "gold" and config.stop_patience is not None and stale >= config.stop_patience \
                and evaluation["eval_rm_score"] > self.best["eval_rm_score"]:
            reason = (f"reward model over-optimised: validation RM score {self.best['eval_rm_score']:.3f} -> "
                      f"{evaluation['eval_rm_score']:.3f} while the gold reward has not improved on "
                      f"{self.best['eval_gold']:.3f} (step {self.best['step']}) for {stale} evaluations")
        elif not within_budget:
            reason = f"KL budget: {recent_kl:.2f} nats per reply > kl_budget={config.kl_budget}"
        if reason and self.stop_rule is None:
            self.stop_rule = {"step": self.step, "reason": reason}
        if reason and config.early_stop:
            self.stop_reason = reason

    # --- checkpoints -----------------------------------------------------------------------------------

    def _state(self, optimizer: dict | None) -> dict:
        return {"step": self.step, "kl_coef": self.kl_coef, "evaluations": self.evaluations, "best": self.best,
                "stop_rule": self.stop_rule, "history": self.history, "optimizer": optimizer, "rng": rng_state()}

    def _state_dicts(self) -> tuple[dict, dict]:
        """Whole state dicts of the policy and the value model, gathered from every process under ZeRO-3 or
        FSDP (so every process must call this); empty on the other processes, where ZeRO-3 gathers nothing."""
        state = self.accelerator.get_state_dict(self.modules) or {}
        modules = self.accelerator.unwrap_model(self.modules)
        return tuple(without_tied_copies(model, {key.removeprefix(prefix): value for key, value in state.items()
                                                 if key.startswith(prefix)})
                     for model, prefix in ((modules.policy, "policy."), (modules.value_model, "value_model.")))

    def save(self) -> None:
        modules = self.accelerator.unwrap_model(self.modules)
        policy_state, value_state = self._state_dicts()
        optimizer = optimizer_state(self.accelerator, self.modules, self.optimizer)

        def write(folder: Path) -> None:
            modules.policy.save_pretrained(folder, state_dict=policy_state)
            self.tokenizer.save_pretrained(folder)
            modules.value_model.save_pretrained(folder / VALUE_DIR, state_dict=value_state)
            torch.save(self._state(optimizer), folder / STATE_FILE)

        if self.accelerator.is_main_process:
            write_checkpoint(self.config.output_dir, self.step, write, self.config.save_total_limit)
        self.accelerator.wait_for_everyone()

    def _resume(self, path: Path) -> None:
        """The optimizer and trainer state of the checkpoint whose weights ``__init__`` loaded."""
        # onto the CPU, not cuda:0 on every rank: the optimizer state moves to each parameter's device
        state = torch.load(path / STATE_FILE, weights_only=False, map_location="cpu")
        load_optimizer_state(self.accelerator, self.modules, self.optimizer, state["optimizer"], str(path))
        self.step, self.kl_coef = state["step"], state["kl_coef"]
        self.evaluations, self.best, self.history = state["evaluations"], state["best"], state["history"]
        self.stop_rule = state["stop_rule"]
        set_rng_state(state["rng"])
        print(f"resumed from {path} at step {self.step}")

    # --- the loop --------------------------------------------------------------------------------------

    def train(self) -> dict:
        """Run PPO until ``max_steps`` or the stop rule; the best policy ends in ``output_dir``."""
        config = self.config
        output = Path(config.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        if self.checkpoint is not None:
            self._resume(self.checkpoint)
        if not self.evaluations:  # the test prompts are reported, never selected on: here and for the kept policy
            self.evaluations.append(self.evaluate() | self.evaluate("test"))
            self._update_stop_rule(self.evaluations[-1], 0.0)
        progress = tqdm(total=config.max_steps, initial=self.step, desc="PPO",
                        disable=not self.accelerator.is_main_process)
        while self.step < config.max_steps and self.stop_reason is None:
            metrics = self.train_step()
            self.history.append(metrics)
            progress.update(1)
            progress.set_postfix({name: f"{metrics[name]:.3f}" for name in ("rm_score", "gold", "kl")
                                  if name in metrics})
            if self.step % config.logging_steps == 0:
                progress.write(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
            if self.step % config.eval_steps == 0 or self.step == config.max_steps:
                self.evaluations.append(self.evaluate())
                progress.write(json.dumps({k: round(v, 4) for k, v in self.evaluations[-1].items()
                                           if isinstance(v, float)} | {"step": self.step}))
                recent = self.history[-config.eval_steps:]
                self._update_stop_rule(self.evaluations[-1], sum(m["kl"] for m in recent) / len(recent))
            if self.step % config.save_steps == 0:
                self.save()
        progress.close()
        return self._finish(output)

    def _finish(self, output: Path) -> dict:
        """Score the best policy (kept in ``output_dir/best``) on the test prompts and put it in ``output_dir``;
        write ``metrics.jsonl``, ``eval.json`` and ``ppo.png``."""
        self.accelerator.wait_for_everyone()  # the main process wrote the kept policy
        kept = self._kept_policy(output / BEST_DIR).to(self.accelerator.device).eval()
        first, last = self.evaluations[0], self.evaluations[-1]
        best = next(evaluation for evaluation in self.evaluations if evaluation["step"] == self.best["step"])
        if self.test_tasks and "test_prompts" not in best:  # each process holds the whole kept policy: no syncing
            best |= {key: value for key, value in self.evaluate("test", Engine(kept, self.tokenizer)).items()
                     if key.startswith("test_")}
        summary = {"stop_reason": self.stop_reason or f"max_steps={self.config.max_steps}", "steps": self.step,
                   "crop_step": best["step"], "select_by": self.config.select_by, "stop_rule": self.stop_rule,
                   "initial": first, "best": best,
                   "last": last, "evaluations": self.evaluations, "config": asdict(self.config)}
        if self.accelerator.is_main_process:
            export_final_model(output, kept, self.tokenizer)
            write_jsonl(output / "metrics.jsonl", self.history)
            atomic_write_text(output / "eval.json", json.dumps(summary, indent=2))
            self.plot(output / "ppo.png")
        print(f"PPO stopped at step {self.step} ({summary['stop_reason']}); kept step {best['step']} "
              f"(select_by={self.config.select_by}); initial -> kept, mean ± standard error:")
        for prefix, split in (("eval", "validation"), ("test", "test")):
            print(f"  {split}: " + ", ".join(
                f"{name} {first[f'{prefix}_{name}']:.3f}±{first[f'{prefix}_{name}_se']:.3f} -> "
                f"{best[f'{prefix}_{name}']:.3f}±{best[f'{prefix}_{name}_se']:.3f}"
                for name in ("rm_score", "gold") if f"{prefix}_{name}" in first))
        return summary

    def _kept_policy(self, folder: Path):
        """The policy saved in ``folder``; LoRA adapters merged into a copy of the reference (the base model)."""
        from transformers import AutoModelForCausalLM

        if not is_lora(self.accelerator.unwrap_model(self.modules).policy):
            return AutoModelForCausalLM.from_pretrained(folder, dtype=self.ref_policy.dtype)
        from peft import PeftModel

        base = copy.deepcopy(self.ref_policy).requires_grad_(True)
        return PeftModel.from_pretrained(base, folder).merge_and_unload()

    def plot(self, path: Path) -> Path:
        def series(rows: list[dict], key: str) -> tuple[list, list]:
            return [r["step"] for r in rows], [r[key] for r in rows]

        def curves(rows: list[dict], names: dict[str, str]) -> dict:
            return {label: series([r for r in rows if key in r], key) for label, key in names.items()
                    if any(key in r for r in rows)}

        panels = {
            "reward (held-out, greedy; test: initial and kept policy)": curves(self.evaluations, {
                "reward model, validation": "eval_rm_score", "gold, validation": "eval_gold",
                "reward model, test": "test_rm_score", "gold, test": "test_gold"}),
            "reward (rollouts)": curves(self.history, {"reward model": "rm_score", "gold": "gold"}),
            "KL to reference (nats/reply)": {"kl": series(self.history, "kl")},
            "reply length (tokens)": {"rollouts": series(self.history, "response_length")},
        }
        marks = {"kept": self.best["step"]}
        if self.stop_rule is not None:
            marks["stop rule fired"] = self.stop_rule["step"]
        return plot_panels(panels, path, "PPO against the reward model", marks=marks)
