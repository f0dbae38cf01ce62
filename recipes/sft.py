"""Supervised fine-tuning into an assistant (TRL SFTTrainer, assistant-only loss, optional LoRA).

    accelerate launch [--config_file accelerate_configs/cpu.yaml] recipes/sft.py \
        --config recipes/tiny/sft.yaml [--model_name_or_path PATH --max_steps 500 ...]
"""

from trl import DatasetMixtureConfig, ModelConfig, SFTConfig, TrlParser

from chatforge.posttrain.sft import SFTScriptArguments, run_sft

if __name__ == "__main__":
    parser = TrlParser(dataclass_types=[SFTScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig])
    script_args, training_args, model_args, mixture = parser.parse_args_and_config()
    run_sft(script_args, training_args, model_args, mixture)
