"""PPO's settings (beside its trainer, as TRL keeps them), with transformers' names where one exists."""

from dataclasses import dataclass, field

from ..errors import InvalidValue

#: ``select_by`` -> the validation figure that picks the kept policy
SELECTION_METRICS = {"gold": "eval_gold", "reward_model": "eval_rm_score"}


@dataclass
class PPOConfig:
    """PPO hyper-parameters, with transformers' names where one exists."""

    output_dir: str = field(default="runs/tiny/ppo", metadata={"help": "checkpoints, the best policy, logs"})
    seed: int = field(default=42, metadata={"help": "seed of sampling and of the prompt order"})
    max_steps: int = field(default=200, metadata={"help": "PPO iterations: one rollout batch and its updates each"})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "prompts per rollout (per process)"})
    num_ppo_epochs: int = field(default=4, metadata={"help": "passes over each rollout batch"})
    num_mini_batches: int = field(default=2, metadata={"help": "mini-batches per pass (each an optimizer step)"})
    learning_rate: float = field(default=1e-5, metadata={"help": "learning rate of the policy and the value model"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    max_completion_length: int = field(default=64, metadata={"help": "most tokens per sampled reply"})
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature of the rollouts (and of the log-probabilities)"})
    kl_coef: float = field(
        default=0.05, metadata={"help": "per-token KL penalty coefficient (the initial one when adaptive)"})
    adaptive_kl: bool = field(default=False, metadata={"help": "steer kl_coef towards target_kl (Ziegler et al.)"})
    target_kl: float = field(
        default=6.0, metadata={"help": "adaptive: the per-sequence KL the coefficient steers towards"})
    kl_horizon: int = field(
        default=10000, metadata={"help": "adaptive: how fast the coefficient moves (in rollout replies)"})
    gamma: float = field(default=1.0, metadata={"help": "discount of future rewards"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    cliprange: float = field(default=0.2, metadata={"help": "PPO clip range of the policy ratio"})
    cliprange_value: float = field(default=0.2, metadata={"help": "clip range of the value predictions"})
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss"})
    whiten_rewards: bool = field(default=False, metadata={"help": "whiten the per-token rewards of each rollout batch"})
    missing_eos_penalty: float = field(
        default=1.0, metadata={"help": "subtracted from the score of a reply cut off before its end-of-turn"})
    logging_steps: int = field(default=5, metadata={"help": "steps between logged statistics"})
    eval_steps: int = field(
        default=20, metadata={"help": "steps between validation evaluations (the stop rule's figures)"})
    eval_prompts: int = field(default=128, metadata={
        "help": "validation prompts the stop rule selects on (held out of the training prompts)"})
    test_prompts: int | None = field(
        default=None, metadata={"help": "test prompts the kept policy is reported on (None: all)"})
    select_by: str = field(default="gold", metadata={
        "help": "which validation figure picks the kept policy: gold (the gold judge's reward; needs a judge) or "
                "reward_model (the reward model's score within kl_budget; needs no judge)"})
    kl_budget: float | None = field(
        default=20.0, metadata={"help": "stop when the rollouts' mean KL to the reference (nats/sequence) passes it"})
    stop_patience: int | None = field(default=3, metadata={
        "help": "select_by gold: evaluations without a better gold reward, while the RM score rises"})
    early_stop: bool = field(default=True, metadata={
        "help": "false: note when the stop rule fires but train on (to watch what comes after)"})
    min_improvement: float = field(
        default=0.01, metadata={"help": "how much the selected figure must rise for a later policy to be kept"})
    save_steps: int = field(default=50, metadata={"help": "steps between checkpoints"})
    save_total_limit: int = field(default=1, metadata={"help": "checkpoints kept (oldest deleted)"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": 'a checkpoint folder or "latest"'})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast"})
    use_cpu: bool = field(default=False, metadata={"help": "train on the CPU even where an accelerator is present"})

    def __post_init__(self):
        if self.select_by not in SELECTION_METRICS:
            raise InvalidValue(f"PPOConfig.select_by={self.select_by!r}: choose one of {sorted(SELECTION_METRICS)}")
        if self.select_by == "reward_model" and self.kl_budget is None:
            raise InvalidValue("PPOConfig.select_by='reward_model' needs a kl_budget: without a judge, the KL budget "
                             "is what stops the policy from gaming the reward model")
        if self.per_device_train_batch_size % self.num_mini_batches:
            raise InvalidValue(f"per_device_train_batch_size={self.per_device_train_batch_size} must be a multiple of "
                             f"num_mini_batches={self.num_mini_batches}")
        for name in ("max_steps", "num_ppo_epochs", "max_completion_length", "eval_steps", "save_steps",
                     "eval_prompts"):
            if getattr(self, name) < 1:
                raise InvalidValue(f"PPOConfig.{name} must be at least 1")
        if self.temperature <= 0:
            raise InvalidValue(f"PPOConfig.temperature={self.temperature}: PPO samples its rollouts, it must be > 0")


__all__ = ["SELECTION_METRICS", "PPOConfig"]
