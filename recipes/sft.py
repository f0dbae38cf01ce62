"""Supervised fine-tuning into an assistant (TRL SFTTrainer, assistant-only loss, optional LoRA).

    accelerate launch [--config_file accelerate_configs/cpu.yaml] recipes/sft.py \
        --config recipes/tiny/sft.yaml [--model_name_or_path PATH --max_steps 500 ...]
"""

import sys

from chatforge.cli import main

if __name__ == "__main__":
    main(["sft", *sys.argv[1:]])  # the same as ``chatforge sft``
