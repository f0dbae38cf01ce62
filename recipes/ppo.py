"""RLHF with PPO against the reward model, with a KL penalty and the gold-reward stop rule.

    accelerate launch [--config_file accelerate_configs/cpu.yaml] recipes/ppo.py \
        --config recipes/tiny/ppo.yaml [--max_steps 100 --kl_coef 0.1 ...]
"""

import sys

from chatforge.cli import main

if __name__ == "__main__":
    main(["ppo", *sys.argv[1:]])  # the same as ``chatforge ppo``
