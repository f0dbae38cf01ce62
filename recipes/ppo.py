"""RLHF with PPO against the reward model, with a KL penalty and the gold-reward stop rule.

    accelerate launch [--config_file accelerate_configs/cpu.yaml] recipes/ppo.py \
        --config recipes/tiny/ppo.yaml [--max_steps 100 --kl_coef 0.1 ...]
"""

from chatforge.posttrain.rlhf import ppo_parser, run_ppo

if __name__ == "__main__":
    run_ppo(*ppo_parser().parse_args_and_config())
