"""Reward model from preference pairs and K-way rankings (TRL RewardTrainer, Bradley-Terry loss).

    accelerate launch [--config_file accelerate_configs/cpu.yaml] recipes/reward.py \
        --config recipes/tiny/reward.yaml [--model_name_or_path PATH --max_steps 500 ...]
"""

from chatforge.posttrain.reward import reward_parser, run_reward

if __name__ == "__main__":
    run_reward(*reward_parser().parse_args_and_config())
