"""Pretrain a causal LM on token shards.

    accelerate launch [--config_file accelerate_configs/cpu.yaml] recipes/pretrain.py \
        --config recipes/tiny/pretrain.yaml [--max_steps 500 ...]
"""

from trl import TrlParser

from chatforge.training import PretrainConfig, pretrain

if __name__ == "__main__":
    (config,) = TrlParser(dataclass_types=[PretrainConfig]).parse_args_and_config()
    pretrain(config)
