import json
import random
from dataclasses import replace
from functools import partial
from pathlib import Path

import datasets
import pytest
import torch
from conftest import memorize, small_config, small_llama_config
from transformers import (
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)
from trl import DatasetMixtureConfig, ModelConfig, RewardConfig, RewardTrainer

from chatforge.eval.reward import score_token_ids
from chatforge.eval.suite import EvalConfig, EvalData, evaluate_model
from chatforge.io import read_jsonl
from chatforge.modeling import DOCUMENT_ATTENTION, ChatForgeForSequenceClassification
from chatforge.posttrain.reward import (
    PackedRewardTrainer,
    RewardScriptArguments,
    pair_split,
    reward_parser,
    run_reward,
)
from chatforge.tasks.gold import judge
from chatforge.tasks.preferences import (
    PreferenceDataConfig,
    PreferenceError,
    build_preference_data,
    ranked_record,
    record_pairs,
)
from chatforge.tasks.word_problems import word_problem

ROOT = Path(__file__).resolve().parents[1]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_gold_reward_finds_each_fault():
    problem = {"answer": "12", "max_words": 40}
    good = "4 boxes of 3 is 4 × 3 = 12. The answer is 12."
    assert judge(good, problem).reward == 1.0
    assert judge(good.replace("is 12.", "is 13."), problem).wrong_answer
    assert judge("I can't help with that.", {}).refusal
    assert judge("Paris.\nUser: and Spain?", {}).off_format
    assert judge("Paris.", {}, finished=False).off_format and judge("  ", {}).off_format
    assert judge("Paris is the the the the the the the the the the the capital.", {}).repetition > 0.5
    words = " ".join(["word"] + [f"w{i}" for i in range(70)])  # 71 words: 31 past a budget of 40
    assert judge(words, {"max_words": 40}).rambling == pytest.approx(31 / 40)
    assert judge(words, {"max_words": 20}).rambling == 1.0  # at most 1, however far past
    assert judge("Paris is the capital of France, and it has been for centuries.", {}).reward == 1.0


def test_embedded_rankings_follow_the_gold_reward_and_put_the_reference_first():
    rng = random.Random(0)
    problem = word_problem(rng, multi_digit=False)
    reference = problem.solution(use_calculator=False)
    record = ranked_record(rng, [{"role": "user", "content": problem.question}], reference,
                           {"kind": "word_problem", "answer": problem.answer, "max_words": 60}, "Hello?")
    ordered = [record["kinds"][i] for i in record["ranking"]]
    assert ordered[0] == "reference" and set(ordered) == {"reference", "rambling", "wrong_answer", "refusal",
                                                          "off_format", "repetitive"}
    golds = [record["gold"][i] for i in record["ranking"]]
    assert golds == sorted(golds, reverse=True) and len(set(golds)) == len(golds)
    pairs = record_pairs(record, "r")
    assert len(pairs) == 15 and pairs[0][0][-1]["content"] == reference


def test_preference_formats_become_conversation_pairs():
    hh = record_pairs({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go."},
                      "hh")
    assert hh == [([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                   [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go."}])]
    explicit = record_pairs({"prompt": QUESTION, "chosen": [{"role": "assistant", "content": "Paris."}],
                             "rejected": [{"role": "assistant", "content": "Rome."}]}, "uf")
    assert explicit[0][0] == QUESTION + [{"role": "assistant", "content": "Paris."}]
    text = record_pairs({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."}, "text")
    assert text[0][1][-1]["content"] == "Rome."


@pytest.mark.parametrize("record, message", [
    ({"prompt": QUESTION, "completions": ["Paris.", "Rome.", "Oslo."], "ranking": [[0, 1], 2]}, "ties"),
    ({"prompt": QUESTION, "completions": ["Paris.", "Rome."], "ranking": [0, 0]}, "each index"),
    ({"prompt": QUESTION, "completions": ["Paris.", ""], "ranking": [0, 1]}, "empty completion"),
    ({"prompt": QUESTION, "completions": ["Paris."], "ranking": [0]}, "at least two"),
    ({"completions": ["Paris.", "Rome."], "ranking": [0, 1]}, "missing or empty prompt"),
    ({"prompt": QUESTION, "chosen": "Paris."}, "expected 'chosen' and 'rejected'"),
])
def test_bad_preference_records_are_refused(record, message):
    with pytest.raises(PreferenceError, match=message):
        record_pairs(record, "set record 7")


def test_a_bad_record_in_a_dataset_is_named_by_its_index():
    good = {"prompt": QUESTION, "completions": ["Paris.", "Rome."], "ranking": [0, 1]}
    bad = {**good, "ranking": [1, 1]}
    with pytest.raises(PreferenceError, match=r"prefs record 5: .*each index"):
        pair_split(datasets.Dataset.from_list([good] * 5 + [bad]), "prefs")
    assert len(pair_split(datasets.Dataset.from_list([good] * 5), "prefs")) == 5


def test_embedded_preference_set_splits_prompts_and_resumes(tmp_path):
    summary = build_preference_data(tmp_path / "prefs", PreferenceDataConfig(word_problems=60, chat=60,
                                                                            test_fraction=0.2))
    prompts = {split: {json.dumps(r["prompt"]) for r in read_jsonl(tmp_path / f"prefs/rankings_{split}.jsonl")}
               for split in ("train", "test")}
    assert prompts["train"] and prompts["test"] and not prompts["train"] & prompts["test"]
    assert summary["splits"]["test"]["pairs"] == sum(1 for _ in open(tmp_path / "prefs/pairs_test.jsonl"))
    task = json.loads(open(tmp_path / "prefs/tasks_train.jsonl").readline())
    assert {"messages", "kind", "max_words"} <= set(task)
    assert build_preference_data(tmp_path / "prefs", PreferenceDataConfig(seed=1)) == summary


def test_the_policy_s_own_replies_are_ranked_among_the_candidates(tmp_path, model, tokenizer):
    """A policy that answers every prompt with the same refusal: its finished replies join each ranking,
    below the reference, as the gold reward orders them."""
    config = PreferenceDataConfig(word_problems=6, chat=6, test_fraction=0.0, policy_max_new_tokens=24)
    build_preference_data(tmp_path / "plain", config)
    refusal = "No, I won't answer that."
    prompts = [record["prompt"] for record in read_jsonl(tmp_path / "plain/rankings_train.jsonl")]
    memorize(model, tokenizer, [prompt + [{"role": "assistant", "content": refusal}] for prompt in prompts])
    model.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")

    summary = build_preference_data(tmp_path / "prefs", config, policy=str(tmp_path / "policy"))
    records = read_jsonl(tmp_path / "prefs/rankings_train.jsonl")
    assert len(records) == len(prompts) >= 10
    assert summary["policy"] == str(tmp_path / "policy")
    assert summary["splits"]["train"]["policy_replies"] == len(records)
    for record in records:
        ordered = [record["completions"][index] for index in record["ranking"]]
        kinds = [record["kinds"][index] for index in record["ranking"]]
        assert ordered[kinds.index("policy")] == refusal and kinds[0] == "reference"
        assert record["gold"][record["kinds"].index("policy")] == judge(refusal, record["task"]).reward < 1


    cut_off = build_preference_data(tmp_path / "cut-off", replace(config, policy_max_new_tokens=3),
                                    policy=str(tmp_path / "policy"))
    assert cut_off["splits"]["train"]["policy_replies"] == 0  # a reply cut off before its end of turn is not ranked


@pytest.fixture(scope="module")
def preference_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("prefs") / "data"
    build_preference_data(path, PreferenceDataConfig(word_problems=150, chat=150))
    return path


def _reward_args(tmp_path, model_dir, data_dir, **training):
    script = RewardScriptArguments(preference_data_dir=str(data_dir), eval_rankings=20)
    config = RewardConfig(output_dir=str(tmp_path / "rm"), per_device_train_batch_size=16, max_length=192,
                          learning_rate=training.pop("learning_rate", 2e-3), bf16=False, use_cpu=True,
                          report_to="none", logging_steps=1000, activation_checkpointing=False,
                          seed=0, **{"save_strategy": "no", **training})
    mixture = DatasetMixtureConfig(datasets=[{"path": "json", "data_files": str(data_dir / "rankings_train.jsonl"),
                                              "split": "train"}])
    return script, config, ModelConfig(model_name_or_path=str(model_dir)), mixture


def test_reward_model_learns_the_held_out_rankings(tmp_path, saved_model_dir, preference_data):
    figures = run_reward(*_reward_args(tmp_path, saved_model_dir, preference_data, max_steps=120))
    trained, untrained = figures["reward_model"], figures["untrained"]
    assert trained["pairs"]["accuracy"] >= 0.75 > untrained["pairs"]["accuracy"]
    assert trained["rankings"]["kendall_tau"] > untrained["rankings"]["kendall_tau"] + 0.3
    assert trained["rankings"]["pairwise_accuracy_by_kind"]["reference > repetitive"]["accuracy"] > 0.8
    saved = json.loads((tmp_path / "rm/eval.json").read_text())
    assert saved["reward_model"]["pairs"]["accuracy"] == trained["pairs"]["accuracy"]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None


def test_the_trained_model_s_held_out_figures_are_read_back_by_an_evaluation_of_its_folder(
        tmp_path, saved_model_dir, preference_data, monkeypatch, capsys):
    monkeypatch.setenv("CHATFORGE_EVAL_CACHE", str(tmp_path / "cache"))
    figures = run_reward(*_reward_args(tmp_path, saved_model_dir, preference_data, max_steps=4))
    capsys.readouterr()
    data = EvalData(**EvalData.of_preference_data(preference_data))
    read = evaluate_model(str(tmp_path / "rm"), ["pairs", "rankings"], data,
                          EvalConfig(limits={"pairs": None, "rankings": 20}))
    assert capsys.readouterr().out.count("measured earlier on the same model files and settings") == 2
    assert json.dumps(read, sort_keys=True) == json.dumps(figures["reward_model"], sort_keys=True)
    other = evaluate_model(str(tmp_path / "rm"), ["rankings"], data, EvalConfig(limits={"rankings": 10}))
    assert "measured earlier" not in capsys.readouterr().out and other["rankings"]["rankings"] == 10


def test_reward_model_from_a_llama(tmp_path, tokenizer, preference_data):
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id))
    llama.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    args = _reward_args(tmp_path, tmp_path / "llama", preference_data, max_steps=40)
    args[0].max_train_pairs = 640  # each pair seen once
    figures = run_reward(*args)
    assert figures["train_pairs"] == 640
    assert figures["reward_model"]["pairs"]["accuracy"] > figures["untrained"]["pairs"]["accuracy"]
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").config.model_type == "llama"


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("recipes/*/reward*.yaml")))
def test_every_reward_recipe_parses(recipe):
    script, training, model, mixture = reward_parser().parse_args_and_config(
        args=["--config", str(ROOT / recipe), "--use_cpu", "true"])
    assert model.model_name_or_path and training.output_dir and mixture.datasets


@pytest.mark.parametrize("option", ["--max_train_pairs", "--eval_pairs", "--eval_rankings"])
def test_a_count_below_one_is_refused_naming_the_option(option):
    with pytest.raises(ValueError, match=f"{option[2:]}=0: must be a positive count"):
        reward_parser().parse_args_and_config(args=["--config", str(ROOT / "recipes/tiny/reward.yaml"), option, "0"])


def test_reward_training_resumes_from_the_latest_checkpoint(tmp_path, saved_model_dir, preference_data, capsys):
    args = _reward_args(tmp_path, saved_model_dir, preference_data, max_steps=6, save_strategy="steps",
                        save_steps=3)
    args[0].eval_rankings, args[0].eval_pairs = 2, 8
    args[1].resume_from_checkpoint = "latest"
    run_reward(*args)
    assert "starting afresh" in capsys.readouterr().out
    args[1].max_steps = 9
    run_reward(*args)
    assert f"resuming from {tmp_path / 'rm/checkpoint-6'}" in capsys.readouterr().out
    state = json.loads((tmp_path / "rm/checkpoint-9/trainer_state.json").read_text())
    assert state["global_step"] == 9


def test_scores_of_a_batch_match_each_sequence_scored_alone():
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_labels=1, pad_token_id=0)).eval()
    rng = random.Random(0)
    distinct = [[rng.randrange(1, 50) for _ in range(length)] for length in (3, 9, 5, 12, 7)]
    sequences = [distinct[i] for i in (3, 0, 3, 1, 4, 2, 0, 3)]  # repeats, as a ranking's pairs have
    alone = {tuple(ids): score_token_ids(model, [ids], pad_token_id=0)[0] for ids in distinct}
    batched = score_token_ids(model, sequences, pad_token_id=0, batch_size=2)
    assert batched == pytest.approx([alone[tuple(ids)] for ids in sequences], abs=1e-5)
    assert len(set(batched)) == len(distinct)


@pytest.mark.parametrize("architecture", ["chatforge", DOCUMENT_ATTENTION])
def test_packed_batches_give_the_padded_batches_loss_and_gradients(tmp_path, tokenizer, architecture,
                                                                   attention_lengths):
    """Chosen and rejected conversations of different lengths, right-padded as TRL's collator pads them: scored
    packed into one row, the loss, the scores and every gradient are those of the padded batch (ChatForge's
    classifier, and a Llama one whose ``sdpa_documents`` attention reads the row's sequence bounds)."""
    torch.manual_seed(0)
    if architecture == "chatforge":
        model = ChatForgeForSequenceClassification(small_config(tokenizer, num_labels=1, initializer_range=0.1))
    else:
        config = small_llama_config(tokenizer, num_labels=1, initializer_range=0.1)
        config._attn_implementation = DOCUMENT_ATTENTION
        model = LlamaForSequenceClassification(config)
    pairs = datasets.Dataset.from_list([{"chosen": [*QUESTION, {"role": "assistant", "content": "Paris."}],
                                         "rejected": [*QUESTION, {"role": "assistant", "content": "No."}]}] * 2)
    config = RewardConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to="none",
                          center_rewards_coefficient=0.01)
    trainer = PackedRewardTrainer(model=model, args=config, train_dataset=pairs, processing_class=tokenizer)
    rng = random.Random(0)
    lengths = [3, 9, 5, 12, 7, 4]
    pad = tokenizer.pad_token_id
    ids = torch.full((len(lengths), max(lengths)), pad)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.tensor([rng.choice([t for t in range(len(tokenizer)) if t != pad])
                                          for _ in range(length)])
    batch = {"input_ids": ids, "attention_mask": (ids != pad).long()}
    rows = []
    model.get_input_embeddings().register_forward_hook(lambda module, args, output: rows.append(tuple(args[0].shape)))
    results = []
    for packed, compute_loss in ((True, trainer.compute_loss), (False, partial(RewardTrainer.compute_loss, trainer))):
        trainer.model.zero_grad()
        loss, outputs = compute_loss(trainer.model, dict(batch), return_outputs=True)
        loss.backward()
        results.append((loss.detach(), outputs.logits.detach(), [p.grad.clone() for p in trainer.model.parameters()]))
        if packed:  # one row of all the sequences
            assert rows == [(1, sum(lengths))]
        if packed and architecture == DOCUMENT_ATTENTION:  # attended sequence by sequence in each layer
            assert sorted(attention_lengths) == sorted(lengths * model.config.num_hidden_layers)
        rows.clear()
    (packed_loss, packed_scores, packed_grads), (loss, scores, grads) = results
    torch.testing.assert_close(packed_scores, scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_loss, loss, atol=1e-6, rtol=1e-5)
    for packed_grad, grad in zip(packed_grads, grads):
        torch.testing.assert_close(packed_grad, grad, atol=1e-5, rtol=1e-4)
