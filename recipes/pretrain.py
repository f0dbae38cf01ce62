"""Pretrain a causal LM on token shards.

    accelerate launch [--config_file accelerate_configs/cpu.yaml] recipes/pretrain.py \
        --config recipes/tiny/pretrain.yaml [--max_steps 500 ...]
"""

import sys

from chatforge.cli import main

if __name__ == "__main__":
    main(["pretrain", *sys.argv[1:]])  # the same as ``chatforge pretrain``
