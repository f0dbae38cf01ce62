"""Pretrain a causal LM on token shards (the same as ``chatforge pretrain``).

    accelerate launch [--config_file accelerate_configs/cpu.yaml] recipes/pretrain.py \
        --config recipes/tiny/pretrain.yaml [--max_steps 500 ...]
"""

from chatforge.training.config import pretrain_parser
from chatforge.training.loop import pretrain

if __name__ == "__main__":
    pretrain(*pretrain_parser().parse_args_and_config())
