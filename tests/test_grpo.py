import json
from functools import partial
from pathlib import Path

import datasets
import pytest
import torch
from conftest import assert_drawn_from, small_config, small_llama_config
from transformers import LlamaForCausalLM, LogitsProcessorList
from transformers.generation import SuppressTokensLogitsProcessor, TemperatureLogitsWarper
from trl import DatasetMixtureConfig, GRPOConfig, GRPOTrainer, ModelConfig

from chatforge.data import DataCollatorForChat
from chatforge.eval import suite
from chatforge.eval.problems import pass_at_k
from chatforge.eval.result_cache import cached_in
from chatforge.io import read_jsonl, write_jsonl
from chatforge.modeling import DOCUMENT_ATTENTION, ChatForgeForCausalLM, set_generation_defaults
from chatforge.posttrain.grpo import GRPOScriptArguments, grpo_parser, run_grpo
from chatforge.posttrain.grpo_trainer import ChatForgeGRPOTrainer, PackedGRPOTrainer, generating_with
from chatforge.posttrain.packed_scoring import pack_completions
from chatforge.tasks.verifiable import (
    ProblemConfig,
    ProblemError,
    answer_reward,
    build_problems,
    format_reward,
    problem_record,
    to_problems,
)

ROOT = Path(__file__).resolve().parents[1]


def test_answer_reward_reads_the_stated_answer_or_falls_back_to_math_verify():
    completions = [[{"role": "assistant", "content": "3 × 4 = 12. The answer is 12."}],
                   [{"role": "assistant", "content": "3 × 4 = 12. The answer is 13."}],
                   "So the total is \\boxed{1200}", "It is 1,200.", "I am not sure."]
    assert answer_reward(completions, ["12", "12", "1200", "1200", "7"]) == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert answer_reward(["The answer is 0.5."], ["1/2"]) == [1.0]
    assert answer_reward(["That leaves 3/4.", "That leaves 6/8."], ["0.75", "0.75"]) == [1.0, 0.0]


def test_arithmetic_left_undone_is_no_answer():
    """Replies a policy learnt under GRPO when math-verify evaluated expressions: right by that reading, never
    computed."""
    replies = ["Let me compute 26*75 + 79*17 with the calculator. ", "Let me compute 336 / 12 with the calculator. ",
               "calculator\n91 - 40 + 54", "It costs 7 \\times 2 + 2 \\times 3."]
    assert answer_reward(replies, ["3293", "28", "105", "20"]) == [0.0] * 4
    assert answer_reward(["So it costs 7 × 2 + 2 × 3 = 20 dollars."], ["20"]) == [1.0]
    assert format_reward(["So 12. The answer is 12.", "The answer is 12. Anything else?", "12"]) == [1.0, 0.0, 0.0]


def test_problem_layouts_and_bad_records():
    gsm8k = problem_record({"question": "Tom has 3 apples...", "answer": "3 + 4 = 7\n#### 1,007"}, "r")
    assert gsm8k == {"prompt": [{"role": "user", "content": "Tom has 3 apples..."}], "answer": "1007"}
    with pytest.raises(ProblemError, match="problems record 2: no answer"):
        datasets.Dataset.from_list([{"prompt": "1+1?", "answer": "2"}] * 2 + [{"prompt": "2+2?", "answer": ""}]).map(
            to_problems, batched=True, with_indices=True, fn_kwargs={"name": "problems"})
    with pytest.raises(ProblemError, match="no prompt"):
        problem_record({"answer": "2"}, "r")


def test_pass_at_k_is_the_unbiased_estimate():
    assert pass_at_k(8, 2, 1) == pytest.approx(0.25)
    assert pass_at_k(8, 2, 8) == 1.0 and pass_at_k(8, 0, 8) == 0.0
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)


def test_generated_problems_split_by_question_and_resume(tmp_path):
    summary = build_problems(tmp_path / "p", ProblemConfig(train=300, test=40))
    train, test = (read_jsonl(tmp_path / f"p/{split}.jsonl") for split in ("train", "test"))
    assert (len(train), len(test)) == (300, 40) == (summary["train"], summary["test"])
    assert not {r["prompt"][0]["content"] for r in train} & {r["prompt"][0]["content"] for r in test}
    assert build_problems(tmp_path / "p", ProblemConfig(seed=5)) == summary


QUESTIONS = [f"What is {a} - {a - 1}?" for a in range(2, 10)]  # all answered 1


@pytest.fixture(params=["chatforge", "llama"])
def unsure_model_dir(request, tmp_path, tokenizer):
    """A small model (ChatForge or Llama) that answers every question with 1 or 2, about half and half."""
    torch.manual_seed(0)
    model = (ChatForgeForCausalLM(small_config(tokenizer)) if request.param == "chatforge" else LlamaForCausalLM(
        small_llama_config(tokenizer)))
    set_generation_defaults(model, tokenizer)
    conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": f"The answer is {n}."}]
                     for q in QUESTIONS for n in (1, 2)]
    batch = DataCollatorForChat(tokenizer)([{"messages": m} for m in conversations])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(100):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(tmp_path / "unsure")
    tokenizer.save_pretrained(tmp_path / "unsure")
    return tmp_path / "unsure"


def test_grpo_raises_accuracy_and_writes_its_curves(tmp_path, unsure_model_dir, monkeypatch):
    """Scored on 8 samples a problem (64 in all) after 16 steps: the gain stands clear of sampling noise (+0.27 to
    +0.31 over three training seeds for either model, where 4 samples after 12 steps gave +0.09 to +0.38)."""
    problems = [{"prompt": [{"role": "user", "content": q}], "answer": "1"} for q in QUESTIONS]
    (tmp_path / "problems").mkdir()
    for split in ("train", "test"):
        write_jsonl(tmp_path / f"problems/{split}.jsonl", problems)
    script = GRPOScriptArguments(problems_dir=str(tmp_path / "problems"), eval_k=8)
    training = GRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=16, per_device_train_batch_size=16,
                          num_generations=4, max_completion_length=12, learning_rate=1e-3, logging_steps=2,
                          bf16=False, use_cpu=True, report_to="none", save_strategy="no", seed=0,
                          activation_checkpointing=False, reward_weights=[1.0, 0.2])
    mixture = DatasetMixtureConfig(datasets=[{"path": "json", "data_files": str(tmp_path / "problems/train.jsonl"),
                                              "split": "train"}])
    with cached_in(tmp_path / "eval-cache"):
        figures = run_grpo(script, training, ModelConfig(model_name_or_path=str(unsure_model_dir)), mixture)
    before, after = figures["before"]["arithmetic"], figures["grpo"]["arithmetic"]
    assert 0.1 < before["pass@1"] < 0.9 and before["pass@8"] > before["pass@1"]
    assert after["pass@1"] > before["pass@1"] + 0.2
    logged = [json.loads(line) for line in open(tmp_path / "grpo/metrics.jsonl")]
    assert any("completions/mean_length" in entry for entry in logged)
    assert (tmp_path / "grpo/grpo.png").stat().st_size > 0 and (tmp_path / "grpo/eval.json").exists()
    # the figures on the model it loaded and on the one it saved are those `chatforge eval` measures on their
    # folders, so the eval stage may take them from the cache, where both were kept
    config = suite.EvalConfig(limit=script.eval_problems, k=8, max_new_tokens=12)
    data = suite.EvalData(problems=str(tmp_path / "problems/test.jsonl"))
    folders = {"before": unsure_model_dir, "grpo": tmp_path / "grpo"}

    def measured(folder):
        return suite.evaluate_model(str(folder), ["arithmetic"], data, config)["arithmetic"]

    assert all(measured(folder) == figures[name]["arithmetic"] for name, folder in folders.items())
    assert len(list((tmp_path / "eval-cache").glob("*.json"))) == 2
    monkeypatch.setattr(suite, "problem_accuracy", None)  # nothing is generated
    with cached_in(tmp_path / "eval-cache"):
        assert all(measured(folder) == figures[name]["arithmetic"] for name, folder in folders.items())


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("recipes/*/grpo*.yaml")))
def test_every_grpo_recipe_parses(recipe):
    script, training, model, mixture = grpo_parser().parse_args_and_config(
        args=["--config", str(ROOT / recipe), "--use_cpu", "true"])
    assert model.model_name_or_path and training.output_dir and script.problems_dir and script.rewards


def test_gsm_symbolic_problems_have_checkable_answers(tmp_path):
    pytest.importorskip("reasoning_gym")
    build_problems(tmp_path / "p", ProblemConfig(train=10, test=5, gsm_symbolic_test=4))
    problems = read_jsonl(tmp_path / "p/gsm_symbolic_test.jsonl")
    assert len(problems) == 4 and all(p["answer"].lstrip("-").replace(".", "").isdigit() for p in problems)
    answers = [p["answer"] for p in problems]
    assert answer_reward([f"The answer is {a}." for a in answers], answers) == [1.0] * 4


#: prompts and their completions of different lengths: four distinct prompts, or two sampled three times each
DISTINCT_PROMPTS = ([[5, 6, 7], [8, 9, 10, 11, 12], [13, 14], [15]], [[20, 21, 22, 23], [24], [25, 26, 27], [28]])
SHARED_PROMPTS = ([[5, 6, 7]] * 3 + [[8, 9, 10, 11, 12]] * 3,
                  [[20, 21, 22, 23], [24], [25, 26], [27, 28, 29], [30, 31, 32, 33], [34]])


def _padded_grid(tokenizer, prompts=DISTINCT_PROMPTS[0], completions=DISTINCT_PROMPTS[1]):
    """Prompts left-padded and their completions right-padded, as GRPO scores them: ids, mask, and the
    completion width."""
    width, keep = max(map(len, prompts)), max(map(len, completions))
    ids = torch.full((len(prompts), width + keep), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        ids[row, width - len(prompt):width + len(completion)] = torch.tensor(prompt + completion)
        mask[row, width - len(prompt):width + len(completion)] = 1
    return ids, mask, keep


@pytest.mark.parametrize("checkpointing", [False, True], ids=["", "checkpointing"])
@pytest.mark.parametrize("layout", [DISTINCT_PROMPTS, SHARED_PROMPTS], ids=["distinct", "shared"])
@pytest.mark.parametrize("architecture", ["chatforge", "llama", DOCUMENT_ATTENTION])
def test_scoring_gives_trls_log_probabilities_entropies_and_gradients(tmp_path, tokenizer, architecture, layout,
                                                                      checkpointing, attention_lengths):
    """Prompts left-padded and completions right-padded to different lengths: the chatforge trainer scores what
    TRL's own path scores on the padded grid, packed into one row where every prompt is distinct (a Llama under
    ``sdpa``'s whole-row mask, or with ``sdpa_documents`` attending sequence by sequence), each distinct prompt
    run once where completions share it (packed under gradient checkpointing, which drops the cache)."""
    torch.manual_seed(0)
    config = small_llama_config(tokenizer, initializer_range=0.1)
    if architecture == DOCUMENT_ATTENTION:
        config._attn_implementation = DOCUMENT_ATTENTION
    model = (ChatForgeForCausalLM(small_config(tokenizer, initializer_range=0.1)) if architecture == "chatforge"
             else LlamaForCausalLM(config))
    problems = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": q}], "answer": "1"}
                                           for q in QUESTIONS])
    training = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=6, num_generations=3,
                          temperature=0.7, bf16=False, use_cpu=True, report_to="none")
    trainer = PackedGRPOTrainer(model=model, reward_funcs=answer_reward, args=training, train_dataset=problems,
                                processing_class=tokenizer)
    if checkpointing:
        trainer.model.activation_checkpointing_enable()
    ids, mask, keep = _padded_grid(tokenizer, *layout)
    scored = mask[:, -keep:].bool()
    positions_run = []
    trainer.model.get_input_embeddings().register_forward_hook(
        lambda module, args, output: positions_run.append(args[0].numel()))
    results = []
    trls = partial(GRPOTrainer._get_per_token_logps_and_entropies, trainer)
    for ours, score in ((True, trainer._get_per_token_logps_and_entropies), (False, trls)):
        attention_lengths.clear()
        positions_run.clear()
        trainer.model.zero_grad()
        logps, entropies, _ = score(trainer.model, ids, mask, keep, compute_entropy=True)
        logps[scored].sum().backward()
        results.append((logps[scored].detach(), entropies[scored].detach(),
                        [p.grad.clone() for p in trainer.model.parameters()]))
        if ours and (layout is DISTINCT_PROMPTS or checkpointing):  # packed: the real tokens only
            assert sum(positions_run) == mask.sum()
            if architecture == DOCUMENT_ATTENTION:  # each layer once, and again where the backward recomputes it
                calls = config.num_hidden_layers * (2 if checkpointing else 1)
                assert sorted(attention_lengths) == sorted(mask.sum(-1).tolist() * calls)
        elif ours:  # two prompts of width 5, six completions of width 4
            assert positions_run == [2 * 5, 6 * keep]
    (our_logps, our_entropies, our_grads), (logps, entropies, grads) = results
    torch.testing.assert_close(our_logps, logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_entropies, entropies, atol=1e-5, rtol=1e-5)
    for our_grad, grad in zip(our_grads, grads):
        torch.testing.assert_close(our_grad, grad, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="follows padding"):
        pack_completions(torch.tensor([[5, 6, 0, 7]]), torch.tensor([[1, 1, 0, 1]]), 1)


def test_tokens_that_sampling_suppresses_are_scored_as_the_sampler_draws_them(tmp_path, tokenizer):
    """With ``suppress_tokens`` in the generation settings, the scores are the log-probabilities of the distribution
    transformers' sampling processors give (suppression, then temperature), not those of the unsuppressed model:
    trained on the latter, the suppressed tokens' logits drift unseen."""
    torch.manual_seed(0)
    model = ChatForgeForCausalLM(small_config(tokenizer, initializer_range=0.1))
    problems = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": q}], "answer": "1"}
                                           for q in QUESTIONS])
    suppressed = [30, 31, 40]
    training = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                          temperature=0.7, bf16=False, use_cpu=True, report_to="none",
                          generation_kwargs={"suppress_tokens": suppressed})
    trainer = PackedGRPOTrainer(model=model, reward_funcs=answer_reward, args=training, train_dataset=problems,
                                processing_class=tokenizer)
    ids, mask, keep = _padded_grid(tokenizer)
    scored = mask[:, -keep:].bool()
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, keep)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -keep - 1:-1]
    processors = LogitsProcessorList([SuppressTokensLogitsProcessor(suppressed), TemperatureLogitsWarper(0.7)])
    sampled = torch.stack([processors(ids[:, :ids.size(1) - keep + step], logits[:, step]) for step in range(keep)], 1)
    expected = sampled.log_softmax(-1).gather(-1, ids[:, -keep:, None])[..., 0]
    torch.testing.assert_close(logps[scored], expected[scored], atol=1e-5, rtol=1e-5)
    unsuppressed = (logits / 0.7).log_softmax(-1).gather(-1, ids[:, -keep:, None])[..., 0]
    assert (logps[scored] - unsuppressed[scored]).min() > 1e-4  # the suppressed tokens' mass went to the others
    with pytest.raises(ValueError, match="suppress_tokens is scored on packed text completions only"):
        trainer._get_per_token_logps_and_entropies(model, ids, mask, keep, compute_aux_loss=True)


@pytest.mark.parametrize("architecture", ["chatforge", "llama"])
def test_generation_runs_each_distinct_prompt_once(tokenizer, architecture):
    """Left-padded prompts that repeat (two, three rows each): inside ``generating_with`` the model runs each
    distinct prompt but its last token once, then every row's last token, and decodes what plain ``generate``
    decodes, from the same logits."""
    torch.manual_seed(0)
    model = (ChatForgeForCausalLM(small_config(tokenizer, initializer_range=0.1)) if architecture == "chatforge"
             else LlamaForCausalLM(small_llama_config(tokenizer, initializer_range=0.1))).eval()
    set_generation_defaults(model, tokenizer)
    ids, mask, _ = _padded_grid(tokenizer, SHARED_PROMPTS[0], [[]] * 6)
    settings = dict(do_sample=False, max_new_tokens=5, min_new_tokens=5, return_dict_in_generate=True,
                    output_logits=True)
    expected = model.generate(input_ids=ids, attention_mask=mask, **settings)
    positions_run = []
    model.get_input_embeddings().register_forward_hook(
        lambda module, args, output: positions_run.append(tuple(args[0].shape)))
    with generating_with(model, LogitsProcessorList()):
        decoded = model.generate(input_ids=ids, attention_mask=mask, **settings)
    assert torch.equal(decoded.sequences, expected.sequences)
    torch.testing.assert_close(torch.stack(decoded.logits), torch.stack(expected.logits), atol=1e-5, rtol=1e-5)
    assert positions_run == [(2, ids.size(1) - 1), (6, 1), *[(6, 1)] * 4]
    assert "generate" not in vars(model)


def test_rollouts_are_drawn_from_the_policy_at_the_training_temperature(tmp_path, tokenizer):
    """TRL's generate call, decoded greedily with the inverse-transform sampler: the first tokens of 2,000 rollouts
    of one prompt follow the policy's softmax at temperature 0.7 (chi-square), and ``generate`` is the model's
    own again afterwards."""
    torch.manual_seed(0)
    model = ChatForgeForCausalLM(small_config(tokenizer, initializer_range=0.1))
    problems = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": q}], "answer": "1"}
                                           for q in QUESTIONS])
    training = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                          max_completion_length=1, temperature=0.7, bf16=False, use_cpu=True, report_to="none")
    trainer = ChatForgeGRPOTrainer(model=model, reward_funcs=answer_reward, args=training, train_dataset=problems,
                                   processing_class=tokenizer)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}], add_generation_prompt=True,
                                           tokenize=True, return_dict=False)
    completions, _ = trainer._generate_single_turn([prompt] * 2000, None, {}, 2000)
    assert not trainer.generation_config.do_sample and "generate" not in vars(model)
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([prompt])).logits[0, -1].double() / 0.7, -1)
    assert assert_drawn_from([completion[0] for completion in completions], probs) > 1e-3
