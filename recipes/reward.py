"""Reward model from preference pairs and K-way rankings (TRL RewardTrainer, Bradley-Terry loss).

    accelerate launch [--config_file accelerate_configs/cpu.yaml] recipes/reward.py \
        --config recipes/tiny/reward.yaml [--model_name_or_path PATH --max_steps 500 ...]
"""

import sys

from chatforge.cli import main

if __name__ == "__main__":
    main(["reward", *sys.argv[1:]])  # the same as ``chatforge reward``
