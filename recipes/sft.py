"""Supervised fine-tuning into an assistant (TRL SFTTrainer, assistant-only loss, optional LoRA).

    accelerate launch [--config_file accelerate_configs/cpu.yaml] recipes/sft.py \
        --config recipes/tiny/sft.yaml [--model_name_or_path PATH --max_steps 500 ...]
"""

from chatforge.posttrain.sft import run_sft, sft_parser

if __name__ == "__main__":
    run_sft(*sft_parser().parse_args_and_config())
