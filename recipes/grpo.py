"""GRPO on problems with checkable answers (TRL GRPOTrainer, chatforge's answer and format rewards).

    accelerate launch [--config_file accelerate_configs/cpu.yaml] recipes/grpo.py \
        --config recipes/tiny/grpo.yaml [--model_name_or_path PATH --max_steps 200 ...]
"""

import sys

from chatforge.cli import main

if __name__ == "__main__":
    main(["grpo", *sys.argv[1:]])  # the same as ``chatforge grpo``
