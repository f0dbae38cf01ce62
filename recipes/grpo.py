"""GRPO on problems with checkable answers (TRL GRPOTrainer, chatforge's answer and format rewards).

    accelerate launch [--config_file accelerate_configs/cpu.yaml] recipes/grpo.py \
        --config recipes/tiny/grpo.yaml [--model_name_or_path PATH --max_steps 200 ...]
"""

from chatforge.posttrain.grpo import grpo_parser, run_grpo

if __name__ == "__main__":
    run_grpo(*grpo_parser().parse_args_and_config())
