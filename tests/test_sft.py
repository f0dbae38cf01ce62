import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from conftest import CHATML_TEMPLATE, learn_texts, small_config, small_llama_config
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from trl import DatasetMixtureConfig, ModelConfig, SFTConfig, SFTTrainer
from trl.chat_template_utils import llama3_chat_template

from chatforge.data.shards import tokenize_to_shards
from chatforge.errors import InvalidValue
from chatforge.eval.chat import answer_copies_tool_output, call_copies_expression
from chatforge.eval.recall import cloze_recall
from chatforge.inference.engine import ChatEvent, Engine
from chatforge.modeling import ChatForgeForCausalLM, set_generation_defaults
from chatforge.modeling.tool_protocol import add_tool_protocol
from chatforge.posttrain.sft import SFTScriptArguments, run_sft, sft_parser
from chatforge.posttrain.sft_trainer import ScoredLogitsOnCPUSFTTrainer
from chatforge.tasks.sft_data import SFTDataConfig, build_sft_data
from chatforge.tasks.world import build_world, world_cloze
from chatforge.tokenization.turn_format import tool_chat_template

ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft") / "data"
    build_sft_data(path, SFTDataConfig(identity=40, smalltalk=60, refusals=40, word_problems_small=150,
                                       word_problems_tool=150, python_tool=10, search_tool=20,
                                       word_problems_test=10, python_problems_test=10))
    return path


def _args(tmp_path, model_dir, data_dir, **overrides):
    script = SFTScriptArguments(sft_data_dir=str(data_dir), eval_prompts=10, eval_word_problems=5,
                                eval_world_questions=12, eval_base_model=False)
    training = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=overrides.pop("max_steps", 40),
                         learning_rate=overrides.pop("learning_rate", 3e-3),
                         per_device_train_batch_size=overrides.pop("per_device_train_batch_size", 8),
                         max_length=256, packing=True, bf16=False, use_cpu=True, report_to="none",
                         save_strategy="no", logging_steps=50, activation_checkpointing=False, seed=0)
    model = ModelConfig(model_name_or_path=str(model_dir), **overrides)
    mixture = DatasetMixtureConfig(datasets=[{"path": "json", "data_files": str(data_dir / "train.jsonl"),
                                              "split": "train", "columns": ["messages"]}])
    return script, training, model, mixture


def test_sft_of_a_chatforge_model_lowers_the_held_out_loss_on_assistant_tokens(tmp_path, saved_model_dir,
                                                                               sft_data):
    script, training, model, mixture = _args(tmp_path, saved_model_dir, sft_data)
    script.eval_base_model, script.eval_base_tasks = True, ["knowledge"]  # as the probed SFT of smollm2-135m
    figures = run_sft(script, training, model, mixture)
    assert figures["eval_loss"] < figures["eval_loss_before"] - 1.0
    saved = json.loads((tmp_path / "out/eval.json").read_text())
    assert saved["eval_loss"] == figures["eval_loss"] and saved["sft"] == figures["sft"]
    assert set(saved["base"]) == {"knowledge"}  # the model before: only the tasks asked for
    assert {"word_problems", "world_search", "python_problems", "knowledge"} <= set(saved["sft"])
    assert set(saved["sft"]["python_problems"]) == {"with_tools", "without_tools"}
    assert sum(group["questions"] for group in saved["sft"]["knowledge"].values()) == 12
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert AutoTokenizer.from_pretrained(tmp_path / "out").convert_ids_to_tokens(
        model.generation_config.eos_token_id) == ["<|endoftext|>", "<|im_end|>"]


def test_lora_sft_trains_adapters_and_saves_a_merged_model(tmp_path, saved_model_dir, sft_data):
    script, training, model, mixture = _args(tmp_path, saved_model_dir, sft_data, use_peft=True, lora_r=8,
                                             learning_rate=1e-2)
    script.eval_tasks = ["format"]
    figures = run_sft(script, training, model, mixture)
    assert figures["eval_loss"] < figures["eval_loss_before"] - 0.5
    assert set(figures["sft"]) == {"format"}  # the trained model: only the tasks asked for
    state = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    assert not any("lora" in name for name in state)


def test_a_bf16_dtype_trains_fp32_master_weights(tmp_path, saved_model_dir, sft_data):
    """`dtype: bfloat16` at a small learning rate moves the weights as an fp32 run does: in bf16 weights AdamW's
    updates (1e-5 here, below 2^-8 of most weights) would round away."""
    initial = AutoModelForCausalLM.from_pretrained(saved_model_dir).state_dict()
    moved = {}
    for dtype in ("bfloat16", "float32"):
        script, training, model, mixture = _args(tmp_path / dtype, saved_model_dir, sft_data, max_steps=3,
                                                 learning_rate=1e-5, dtype=dtype)
        script.eval_prompts = script.eval_word_problems = script.eval_world_questions = 1
        run_sft(script, training, model, mixture)
        trained = AutoModelForCausalLM.from_pretrained(tmp_path / dtype / "out", dtype=torch.float32).state_dict()
        moved[dtype] = torch.cat([(trained[name] - weight).flatten() for name, weight in initial.items()])
    assert moved["float32"].abs().max() > 0
    torch.testing.assert_close(moved["bfloat16"], moved["float32"], atol=1e-7, rtol=0)


def test_a_trained_weights_share_saves_the_interpolation_with_the_starting_model(tmp_path, saved_model_dir, sft_data):
    initial = AutoModelForCausalLM.from_pretrained(saved_model_dir).state_dict()
    saved = {}
    for share in (1.0, 0.25):
        script, training, model, mixture = _args(tmp_path / str(share), saved_model_dir, sft_data, max_steps=3)
        script.eval_prompts = script.eval_word_problems = script.eval_world_questions = 1
        script.trained_weights_share = share
        assert run_sft(script, training, model, mixture)["trained_weights_share"] == share
        saved[share] = AutoModelForCausalLM.from_pretrained(tmp_path / str(share) / "out").state_dict()
    assert any((saved[1.0][name] - weight).abs().max() > 1e-3 for name, weight in initial.items())
    for name, weight in initial.items():
        torch.testing.assert_close(saved[0.25][name], weight + 0.25 * (saved[1.0][name] - weight))
    with pytest.raises(InvalidValue, match="trained_weights_share=0: give a share above 0 and at most 1"):
        SFTScriptArguments(trained_weights_share=0)


def test_sft_of_a_llama_with_llama_3s_own_chat_template(tmp_path, tokenizer, sft_data):
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    tokenizer.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                  "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]})
    tokenizer.chat_template = llama3_chat_template  # no {% generation %} markers: TRL patches it
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                                         eos_token_id=tokenizer.eos_token_id))
    llama.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    figures = run_sft(*_args(tmp_path, tmp_path / "llama", sft_data))
    assert figures["eval_loss"] < figures["eval_loss_before"] - 1.0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.model_type == "llama"
    assert Engine(llama, tokenizer).end_of_turn == "<|eot_id|>"


def test_on_a_cpu_the_loss_from_the_scored_positions_logits_is_trls_fused_head_loss(tmp_path, tokenizer, sft_data):
    """The model's own loss, its head applied only where a label is scored: TRL's loss and token accuracy."""
    torch.manual_seed(0)
    llama = LlamaForCausalLM(small_llama_config(tokenizer))
    train = datasets.load_dataset("json", data_files=str(sft_data / "train.jsonl"), split="train").select(range(24))
    args = SFTConfig(output_dir=str(tmp_path), max_length=256, packing=True, per_device_train_batch_size=2,
                     use_cpu=True, bf16=False, report_to="none", assistant_only_loss=True,
                     activation_checkpointing=False)
    trainer = ScoredLogitsOnCPUSFTTrainer(model=llama, args=args, train_dataset=train.select_columns(["messages"]),
                                          processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "position_ids" in batch and (batch["labels"] == -100).any()  # packed, the prompts' tokens not scored
    fused = SFTTrainer.compute_loss(trainer, trainer.model, dict(batch))
    projected = []
    llama.lm_head.register_forward_hook(lambda module, args, output: projected.append(args[0].shape[1]))
    scored = trainer.compute_loss(trainer.model, dict(batch))
    assert scored.item() == pytest.approx(fused.item(), rel=1e-5)
    fused_accuracy, scored_accuracy = trainer._metrics["train"]["mean_token_accuracy"]
    assert scored_accuracy == pytest.approx(fused_accuracy)
    kept = int((batch["labels"][:, 1:] != -100).any(0).sum())  # the positions whose next token is scored
    assert projected == [kept] and kept < batch["labels"].shape[1] / 2


def _smol_llama(folder: Path, smollm2: Path, tool_protocol: bool) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer and ChatML template (which TRL cannot patch), given ChatForge's
    tool protocol or not, saved to ``folder``."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(small_llama_config(tokenizer))
    if tool_protocol:
        add_tool_protocol(llama, tokenizer)
    llama.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_sft_of_a_chatml_model_stops_before_any_work_and_names_the_ways_out(tmp_path, smollm2, sft_data):
    script, training, model, mixture = _args(tmp_path, _smol_llama(tmp_path / "smol", smollm2, False), sft_data)
    script.eval_base_model = True
    with pytest.raises(InvalidValue, match="chatforge model add-tools MODEL.*chat_template_path"):
        run_sft(script, training, model, mixture)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("given_as", ["tool protocol", "template file"])
def test_sft_of_a_chatml_model_given_a_training_template(tmp_path, smollm2, sft_data, given_as):
    """ChatForge's tool-aware template in ChatML turns (``chatforge model add-tools``), or a ChatML template with
    generation markers given as a .jinja file: assistant-only loss trains, and the chat evaluation runs the tools
    where the vocabulary has their tokens."""
    folder = _smol_llama(tmp_path / "smol", smollm2, given_as == "tool protocol")
    # rows of SmolLM2's 49k-token vocabulary: 2 a step (the head's loss is most of the step's work)
    script, training, model, mixture = _args(tmp_path, folder, sft_data, max_steps=15, per_device_train_batch_size=2)
    script.eval_prompts = script.eval_word_problems = script.eval_world_questions = 2  # a random model's 96 tokens
    expected = tool_chat_template(AutoTokenizer.from_pretrained(smollm2))
    if given_as == "template file":
        expected = CHATML_TEMPLATE
        (tmp_path / "chatml.jinja").write_text(expected)
        training.chat_template_path = str(tmp_path / "chatml.jinja")
    figures = run_sft(script, training, model, mixture)
    assert figures["eval_loss"] < figures["eval_loss_before"] - 1.0
    assert AutoTokenizer.from_pretrained(tmp_path / "out").chat_template == expected
    assert ("word_problems" in figures["sft"]) == (given_as == "tool protocol")


def test_replaying_pretraining_text_keeps_facts_that_plain_sft_overwrites(tmp_path, tokenizer, sft_data):
    items = world_cloze(build_world()[:8])
    facts = [f"{item['prompt']} {item['answer'][0]}." for item in items]  # the town
    torch.manual_seed(0)
    base = ChatForgeForCausalLM(small_config(tokenizer))
    learn_texts(base, tokenizer, facts, steps=150)
    set_generation_defaults(base, tokenizer)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    (tmp_path / "facts.jsonl").write_text("".join(json.dumps({"text": fact}) + "\n" for fact in facts))
    tokenize_to_shards(str(tmp_path / "base"), [str(tmp_path / "facts.jsonl")], tmp_path / "shards", val_fraction=0)
    recall, rows = {"base": cloze_recall(Engine(base, tokenizer), items)["all"]["start_accuracy"]}, {}
    for name, shards in (("plain", None), ("replay", str(tmp_path / "shards"))):
        script, training, model, mixture = _args(tmp_path / name, tmp_path / "base", sft_data)
        script.replay_shards = shards
        figures = run_sft(script, training, model, mixture)
        tuned = AutoModelForCausalLM.from_pretrained(tmp_path / name / "out")
        recall[name] = cloze_recall(Engine(tuned, tokenizer), items)["all"]["start_accuracy"]
        assert figures["eval_loss"] < figures["eval_loss_before"] - 1.0
        rows[name] = figures["train_rows"]
    assert recall["base"] >= 0.75 and recall["replay"] >= 0.75 > 0.25 >= recall["plain"], recall
    assert rows["replay"] == 2 * rows["plain"]  # replay_fraction 0.5


def test_sft_recipe_runs_from_yaml_with_overrides(tmp_path, saved_model_dir, sft_data):
    config = tmp_path / "sft.yaml"
    config.write_text((ROOT / "recipes/tiny/sft.yaml").read_text().replace("runs/tiny/sft-data", str(sft_data)))
    subprocess.run([sys.executable, str(ROOT / "recipes/sft.py"), "--config", str(config),
                    "--model_name_or_path", str(saved_model_dir), "--output_dir", str(tmp_path / "recipe"),
                    "--max_steps", "20", "--eval_prompts", "5", "--eval_word_problems", "3",
                    "--eval_world_questions", "3", "--eval_conversations", "16",
                    "--eval_base_model", "false"], check=True, cwd=tmp_path)
    figures = json.loads((tmp_path / "recipe/eval.json").read_text())
    assert figures["eval_loss"] < figures["eval_loss_before"] and figures["eval_conversations"] == 16
    assert figures["sft"]["format"]["prompts"] == 5 and figures["base"] is None
    with_tools, without = (figures["sft"]["word_problems"][key] for key in ("with_tools", "without_tools"))
    assert with_tools["tasks"] == 3
    for diagnostic in ("calls_copy_expression", "answers_copy_tool_output"):  # each needs a call: no more than made
        assert with_tools[diagnostic] * with_tools["tasks"] <= with_tools["tool_calls"]
    assert "calls_copy_expression" not in without


def _reply(call: str, output: str, answer: str) -> list[ChatEvent]:
    return [ChatEvent("tool_call", call, tool="calculator"), ChatEvent("tool_output", output, tool="calculator"),
            ChatEvent("done", f"Let me compute. ... The answer is {answer}.")]


def test_word_problem_diagnostics_tell_which_copy_failed():
    problem = {"question": "A box holds 19 pencils. Omar has 92 full boxes. How many pencils does Omar have?",
               "answer": "1748", "expression": "19*92"}
    assert call_copies_expression(_reply("19 * 92", "1748", "1748"), problem)
    assert not call_copies_expression(_reply("19*73", "1387", "1387"), problem)  # a number miscopied
    assert answer_copies_tool_output(_reply("19*73", "1387", "1387"), problem)
    assert not answer_copies_tool_output(_reply("19*92", "1748", "1886"), problem)
    assert not answer_copies_tool_output([ChatEvent("done", "The answer is 1748.")], problem)  # no call at all


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("recipes/*/sft*.yaml")))
def test_every_sft_recipe_parses(recipe):
    script, training, model, mixture = sft_parser().parse_args_and_config(
        args=["--config", str(ROOT / recipe), "--use_cpu", "true"])
    assert model.model_name_or_path and training.output_dir and mixture.datasets


def test_eval_conversations_below_one_is_refused():
    with pytest.raises(ValueError, match="eval_conversations=0: must be a positive count"):
        sft_parser().parse_args_and_config(args=["--config", str(ROOT / "recipes/tiny/sft.yaml"),
                                                 "--eval_conversations", "0"])


@pytest.mark.parametrize("setting", ["eval_tasks", "eval_base_tasks"])
def test_an_unknown_task_to_measure_is_refused(setting):
    with pytest.raises(InvalidValue, match=f"{setting}: search is not an SFT task; choose from format, "):
        sft_parser().parse_args_and_config(args=["--config", str(ROOT / "recipes/tiny/sft.yaml"),
                                                 f"--{setting}", "format", "search"])
