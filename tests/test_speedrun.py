"""The speedrun: the smoke recipe through every stage (default run), and the tiny recipe's figures (slow)."""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from chatforge.eval.suite import EvalData
from chatforge.speedrun import STAGE_NAMES, RecipeError, StageError, load_recipe, speedrun
from chatforge.speedrun.recipe import rebase, resolve_stage_config
from chatforge.speedrun.runner import _check_ours
from chatforge.speedrun.stages import STAGES, Run
from chatforge.tasks.world import build_world

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke speedrun shared by the tests of this module (a few minutes), run from outside the checkout: the
    shipped recipes are found without it."""
    output = tmp_path_factory.mktemp("speedrun") / "smoke"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(output.parent)
        report = speedrun("smoke", output)
    return output, report


def _stage_names(output: Path) -> list[str]:
    """The stages of the smoke recipe: all but the import of a pretrained model."""
    return [stage.name for stage in Run(load_recipe("smoke"), output).stages]


def test_smoke_speedrun_runs_every_stage_and_reports_it(smoke_run):
    output, report = smoke_run
    assert _stage_names(output) == [name for name in STAGE_NAMES if name != "import"]
    assert list(report) == [*_stage_names(output), "run"]
    stage_seconds = sum(report[name]["seconds"] for name in _stage_names(output))
    assert abs(stage_seconds - report["run"]["stages_seconds"]) < 0.1 * len(report)  # each rounded to 0.1 s
    assert report["data"]["documents.input"] > report["data"]["documents.pii"] > 0
    assert report["corpus"]["val_documents"] > 0 and report["shards"]["val_tokens"] > 0
    world = [json.loads(line)["text"] for line in open(output / "corpus/embedded/world.jsonl")]
    frequent = next(p for p in build_world() if p.group == "frequent")  # stated 144 times, 4 statements a page
    assert sum(frequent.name in text for text in world) == 144 // 4
    assert 1.5 < report["tokenizer"]["held_out_bytes_per_token"] < 6
    # 20 steps of pretraining already predict better than a uniform guess over the 1,024 tokens
    assert report["pretrain"]["steps"] == 20 and report["pretrain"]["val_loss"] < math.log(1024)
    assert report["probe"]["questions"] == 180 and report["probe"]["model"] == "sft"  # the tiny recipe: its SFT model
    reward = report["reward"]  # accuracy over the eval_pairs asked for: a count of them
    assert reward["reward_model.pairs.pairs"] == 64
    assert (reward["reward_model.pairs.accuracy"] * 64).is_integer()
    assert report["ppo"]["steps"] == 4 and report["grpo"]["after.arithmetic.problems"] == 4
    assert report["ppo"]["initial.prompts"] == report["ppo"]["best.test_prompts"] == 4
    assert json.loads((output / "report.json").read_text())["run"]["hardware"]["cpus"] >= 1

    evaluation = json.loads((output / "eval.json").read_text())
    assert set(evaluation) == {"base", "sft", "ppo", "grpo", "reward"}
    assert set(evaluation["base"]) == {"bpb", "format", "regurgitation", "induction", "recall"}
    assert set(evaluation["grpo"]) == {"bpb", "format", "arithmetic", "knowledge", "induction", "recall"}
    assert {"frequent", "unseen", "all"} <= set(evaluation["base"]["recall"])  # cloze items of the held-out people
    assert report["eval"]["grpo.bpb.bpb"] == evaluation["grpo"]["bpb"]["bpb"]
    # the eval stage asks the word problems as the GRPO stage does (the recipe's settings): its figures, kept
    grpo_stage = json.loads((output / "grpo/eval.json").read_text())
    assert evaluation["grpo"]["arithmetic"] == grpo_stage["grpo"]["arithmetic"]
    kept = [json.loads(path.read_text()) for path in (output / "eval-cache").glob("*.json")]
    assert grpo_stage["grpo"]["arithmetic"] in [entry["figures"] for entry in kept]

    card = (output / "report.md").read_text()
    assert "| induction: second_copy_accuracy |" in card and "| recall: frequent start_accuracy |" in card
    for heading in ("## Data", "## Tokenizer", "## Pretraining", "## Supervised fine-tuning", "## Reward model",
                    "## RLHF (PPO)", "## GRPO", "## Evaluation of every stage's model", "## Exported models"):
        assert heading in card
    for image in ("funnel.png", "pretrain_loss.png", "ppo.png", "grpo.png"):
        assert f"report_assets/{image}" in card and (output / "report_assets" / image).stat().st_size > 1000
    # the tools of the probed assistant beside those of the SFT model it continued
    probed = card.split("The tools before and after SFT with the probe's examples")[1].split("\n\n")[1]
    before, after = report["sft"]["format_adherence"], report["sft-probe"]["format_adherence"]
    assert f"| chat-format adherence | {before:.1%} (" in probed and f"| {after:.1%} (" in probed


def test_eval_run_option_finds_the_held_out_files_where_the_stage_configs_put_them(smoke_run):
    output, _ = smoke_run
    data = EvalData.from_run(output)
    run = Run(load_recipe("smoke"), output)
    assert data.problems == str(Path(run.config("grpo")["problems_dir"]) / "test.jsonl")
    assert data.pairs == str(Path(run.config("reward")["preference_data_dir"]) / "pairs_test.jsonl")
    optional = {"gsm_symbolic"}  # reasoning-gym's problems, where a recipe asks for them
    assert all(Path(path).exists() for name, path in vars(data).items() if name not in optional)


def test_eval_of_a_probed_run_asks_the_probes_held_out_questions(tmp_path):
    """A run whose probe labelled its own held-out questions (a pretrained model's capitals) is evaluated on those,
    not on the fictional world's people."""
    configs = tmp_path / "speedrun/configs"
    configs.mkdir(parents=True)
    (configs / "sft.yaml").write_text(yaml.safe_dump({"sft_data_dir": str(tmp_path / "data")}))
    assert EvalData.from_run(tmp_path).questions == str(tmp_path / "data/world_qa_test.jsonl")
    (configs / "sft-probe.yaml").write_text(yaml.safe_dump({"knowledge_questions": str(tmp_path / "probe/held.jsonl")}))
    assert EvalData.from_run(tmp_path).questions == str(tmp_path / "probe/held.jsonl")
    assert EvalData.from_run(tmp_path).prompts == str(tmp_path / "data/test.jsonl")


def test_finished_stages_are_skipped_and_from_reruns(smoke_run, capfd, monkeypatch):
    output, _ = smoke_run
    names = _stage_names(output)
    before = {name: (output / "speedrun" / f"{name}.json").stat().st_mtime_ns for name in names}
    monkeypatch.chdir(REPO)
    speedrun("smoke", output)
    assert capfd.readouterr().out.count("finished earlier, skipped") == len(names)
    speedrun("smoke", output, start="report")
    after = {name: (output / "speedrun" / f"{name}.json").stat().st_mtime_ns for name in names}
    assert [name for name in names if after[name] != before[name]] == ["report"]
    for stage in ("train", "import"):
        with pytest.raises(ValueError, match=f"--from {stage}: no such stage in recipe smoke"):
            speedrun("smoke", output, start=stage)


def test_an_interrupted_stage_resumes_from_its_checkpoint_through_a_launcher(smoke_run, capfd, monkeypatch,
                                                                             tmp_path):
    """The smoke run's stages ran in its own process (launcher ``[python]``); resumed with a launcher that has
    options, the stage runs as a process of its own, as under ``accelerate launch``."""
    output, _ = smoke_run
    (output / "speedrun" / "ppo.json").unlink()  # as if killed after its last checkpoint
    monkeypatch.chdir(REPO)
    speedrun(str(_write_recipe(tmp_path, launcher=["python", "-u"])), output, until="ppo")
    out = capfd.readouterr().out
    assert f"{sys.executable} -u -m chatforge.cli ppo --config" in out
    assert "ppo: RLHF with PPO, stopped before over-optimisation (resuming)" in out
    assert "resumed from" in out and "checkpoint-4" in out


def test_exported_models_load_and_generate_without_chatforge(smoke_run):
    output, _ = smoke_run
    script = textwrap.dedent("""
        import json, sys
        sys.modules["chatforge"] = None  # as on a machine without chatforge
        from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                                  GenerationConfig, pipeline)
        export = sys.argv[1]
        chat_model = AutoModelForCausalLM.from_pretrained(f"{export}/grpo", trust_remote_code=True)
        tokenizer = AutoTokenizer.from_pretrained(f"{export}/grpo", trust_remote_code=True)
        reply = pipeline("text-generation", model=chat_model, tokenizer=tokenizer)(
            [{"role": "user", "content": "Hello!"}], max_new_tokens=8, do_sample=False)[0]["generated_text"][-1]
        base = pipeline("text-generation", model=f"{export}/base", trust_remote_code=True)
        text = base("The city of", max_new_tokens=8, do_sample=False)[0]["generated_text"]
        reward = AutoModelForSequenceClassification.from_pretrained(f"{export}/reward", trust_remote_code=True)
        reward_tokenizer = AutoTokenizer.from_pretrained(f"{export}/reward", trust_remote_code=True)
        inputs = reward_tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
            return_tensors="pt", return_dict=True)
        score = reward(**inputs).logits[0, 0].item()
        end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
        print(json.dumps({"module": type(chat_model).__module__, "role": reply["role"], "text": text,
                          "score": score, "eos_first": GenerationConfig.from_pretrained(
                              f"{export}/grpo").eos_token_id[0] == end_of_turn}))
    """)
    result = subprocess.run([sys.executable, "-c", script, str(output / "export")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["module"].startswith("transformers_modules.")
    assert loaded["role"] == "assistant" and loaded["text"].startswith("The city of")
    assert isinstance(loaded["score"], float) and loaded["eos_first"]


def test_model_cards_carry_the_runs_figures(smoke_run):
    output, report = smoke_run
    evaluation = json.loads((output / "eval.json").read_text())
    for name in ("base", "sft", "ppo", "grpo", "reward"):
        card = (output / "export" / name / "README.md").read_text()
        header = yaml.safe_load(card.split("---")[1])
        assert header["library_name"] == "transformers" and "chatforge" in header["tags"]
        assert "## Limitations" in card and "## Training data" in card
    grpo_card = (output / "export/grpo/README.md").read_text()
    assert f"| bpb | bpb | {evaluation['grpo']['bpb']['bpb']:.3f} |" in grpo_card
    assert "GRPO" in grpo_card and "text-generation" in grpo_card
    assert "GRPO" not in (output / "export/sft/README.md").read_text().split("## Use")[0]
    reward_card = (output / "export/reward/README.md").read_text()
    assert "text-classification" in reward_card and "not on human preferences" in reward_card
    assert f"{report['reward']['reward_model.pairs.accuracy']:.3f}" in reward_card
    assert not any(path.name.startswith("checkpoint-") for path in (output / "export/ppo").iterdir())


def _write_recipe(tmp_path: Path, base: str = "smoke", **changes) -> Path:
    raw = yaml.safe_load((REPO / f"recipes/{base}/speedrun.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = value
    path = tmp_path / "custom" / "speedrun.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_recipe_errors_name_the_file_and_field(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(FileNotFoundError, match="huge/speedrun.yaml: no such speedrun recipe \\(give one of "
                                                "gpt2-124m, smoke, smollm2-135m, tiny or the path of a speedrun "
                                                "YAML\\)"):
        load_recipe("huge")
    with pytest.raises(RecipeError, match="unknown fields \\['epochs'\\]"):
        load_recipe(str(_write_recipe(tmp_path, epochs=3)))
    training = yaml.safe_load((REPO / "recipes/smoke/speedrun.yaml").read_text())["training"]
    del training["reward"]
    with pytest.raises(RecipeError, match="training.ppo needs training.reward"):
        load_recipe(str(_write_recipe(tmp_path, training=training)))
    with pytest.raises(RecipeError, match="either `training.pretrain` .* or `base_model`"):
        load_recipe(str(_write_recipe(tmp_path, base_model={"gguf": "smollm2-135m-instruct"})))
    with pytest.raises(RecipeError, match="unknown training stages \\['dpo'\\]"):
        load_recipe(str(_write_recipe(tmp_path, training={**training, "dpo": training["sft"]})))
    with pytest.raises(RecipeError, match="`launcher` must be a non-empty list"):
        load_recipe(str(_write_recipe(tmp_path, launcher="python")))
    with pytest.raises(RecipeError, match="`data` takes the fields"):
        load_recipe(str(_write_recipe(tmp_path, data={"vocab": 10})))
    with pytest.raises(RecipeError, match="speedrun.yaml: `data.max_number_digits` must be a positive integer, got 0"):
        load_recipe(str(_write_recipe(tmp_path, data={"max_number_digits": 0})))
    with pytest.raises(RecipeError, match="`data.world_frequent_mentions` must be a positive integer, got 0"):
        load_recipe(str(_write_recipe(tmp_path, data={"world_frequent_mentions": 0})))
    with pytest.raises(RecipeError, match="`data.val_fraction` must lie between 0 and 1, got 0"):
        load_recipe(str(_write_recipe(tmp_path, data={"val_fraction": 0})))
    with pytest.raises(RecipeError, match="speedrun.yaml: unknown benchmarks \\['mmlu'\\]; choose from"):
        load_recipe(str(_write_recipe(tmp_path, eval={"benchmarks": ["hellaswag_100", "mmlu"]})))
    with pytest.raises(RecipeError, match="speedrun.yaml: skip: unknown tasks \\['recal'\\]; choose from"):
        load_recipe(str(_write_recipe(tmp_path, eval={"skip": ["recal"]})))


def test_stage_configs_are_moved_under_the_output(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert rebase({"a": ["runs/tiny/x", "runs/tinyx", {"b": "runs/tiny"}]}, "runs/tiny", tmp_path) == {
        "a": [str(tmp_path / "x"), "runs/tinyx", {"b": str(tmp_path)}]}
    recipe = load_recipe("tiny")
    pretrain = resolve_stage_config(recipe, "pretrain", tmp_path)
    assert pretrain["output_dir"] == str(tmp_path / "pretrain") and pretrain["max_steps"] == 450
    assert pretrain["resume_from_checkpoint"] == "latest"
    ppo = resolve_stage_config(recipe, "ppo", tmp_path)
    assert ppo["model_name_or_path"] == str(tmp_path / "sft-probe")
    sft_probe = resolve_stage_config(recipe, "sft-probe", tmp_path)
    assert [d["data_files"] for d in sft_probe["datasets"]] == [str(tmp_path / "sft-data/train.jsonl"),
                                                                 str(tmp_path / "probe/train.jsonl")]
    assert sft_probe["replay_shards"] == str(tmp_path / "shards")  # replays the speedrun's own shards


@pytest.mark.parametrize("name", ["tiny", "smoke", "gpt2-124m", "smollm2-135m"])
def test_the_dry_run_of_every_shipped_recipe_finds_nothing_and_writes_nothing(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert speedrun(name, tmp_path / "run", dry_run=True) is None
    out = capsys.readouterr().out
    recipe = load_recipe(name)
    stages = Run(recipe, tmp_path / "run").stages
    assert out.count("\n[") + 1 == len(stages) and "PROBLEM" not in out and "dry run: 0 problem(s)" in out
    if recipe.eval.benchmarks:  # their harness and items are installed
        assert f"eval: benchmarks {', '.join(recipe.eval.benchmarks)}\n" in out
    assert not (tmp_path / "run").exists()
    if name == "gpt2-124m":  # validation from FineWeb-Edu's held-out tokens: the recipe's 20 batches of 64 x 1025
        assert "pretrain: 512 rows of 1024 tokens per step over 8 process(es); validation: 20 at least" in out
    if "sft-probe" in recipe.training:  # the probe asks a model the run has made by then, inside the run:
        sft, sft_probe = (resolve_stage_config(recipe, stage, tmp_path) for stage in ("sft", "sft-probe"))
        # a pretrained model's import, which holds what pretraining taught, or else the SFT model
        assert sft_probe["probe_model"] == (sft["model_name_or_path"] if recipe.base_model else sft["output_dir"])


def test_the_dry_run_finds_what_would_stop_a_stage_and_the_speedrun_refuses_to_start(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    training = yaml.safe_load((REPO / "recipes/gpt2-124m/speedrun.yaml").read_text())["training"]
    training["sft"]["overrides"] = {"learning_rat": 1e-5}
    training["reward"]["overrides"]["model_name_or_path"] = str(tmp_path / "elsewhere/sft-probe")
    recipe = _write_recipe(tmp_path, "gpt2-124m", training=training,
                           launcher=["accelerate", "launch", "--config_file", "missing.yaml"],
                           data={**load_recipe("gpt2-124m").data.__dict__, "pretraining_val_tokens": 50_000})
    with pytest.raises(StageError, match="found 4 problem"):
        speedrun(str(recipe), tmp_path / "run", dry_run=True)
    out = capsys.readouterr().out
    assert "launcher: --config_file missing.yaml: no such file" in out
    assert ("pretrain: data.pretraining_val_tokens=50000 (val): 50,000 tokens, too few for one evaluation batch of "
            "64 x 1025 (eval_batches=20 take 1,310,721)") in out
    assert "sft: " in out and "configs/sft.yaml (from " in out and "learning_rat" in out
    assert f"reward: model_name_or_path={tmp_path / 'elsewhere/sft-probe'}: no model there" in out
    with pytest.raises(StageError, match="nothing was run:\n  launcher: --config_file missing.yaml"):
        speedrun(str(recipe), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_pretraining_checks_its_shards_against_its_batches_before_any_work(smoke_run):
    from chatforge.training import PretrainConfig
    from chatforge.training.loop import check_inputs

    output, _ = smoke_run
    config = PretrainConfig(**{key: value for key, value in resolve_stage_config(load_recipe("smoke"), "pretrain",
                                                                                 output).items()})
    check_inputs(config, processes=2)
    val_tokens = json.loads((output / "shards/meta.json").read_text())["splits"]["val"]["tokens"]
    config.per_device_train_batch_size = val_tokens // config.max_seq_length + 1
    with pytest.raises(ValueError, match=f"shards \\(val\\): {val_tokens:,} tokens, too few for one evaluation"):
        check_inputs(config)
    config.per_device_train_batch_size, config.global_batch_size = 8, 24
    with pytest.raises(ValueError, match="global_batch_size=24 is not a multiple of per_device_train_batch_size=8 "
                                         "x 2 processes"):
        check_inputs(config, processes=2)


def test_outputs_the_speedrun_did_not_write_are_not_resumed(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    run = Run(load_recipe("smoke"), tmp_path)
    (tmp_path / "pretrain").mkdir()
    stage = STAGES[STAGE_NAMES.index("pretrain")]
    with pytest.raises(StageError, match="pretrain already exists but this speedrun did not write it"):
        _check_ours(run, stage)
    run.state_dir.mkdir()
    (run.state_dir / "pretrain.started").touch()
    _check_ours(run, stage)


@pytest.mark.slow
def test_tiny_speedrun_moves_every_figure_the_right_way(tmp_path):
    """`make demo`'s run: each stage's figure moving the right way (its wall time is in report.json)."""
    result = subprocess.run([sys.executable, "-m", "chatforge.cli", "speedrun", "--recipe", "tiny", "--output",
                             str(tmp_path / "tiny")], cwd=REPO, timeout=3 * 3600)
    assert result.returncode == 0
    report = json.loads((tmp_path / "tiny/report.json").read_text())
    assert report["pretrain"]["val_loss"] < report["pretrain"]["unigram_val_loss"]
    assert report["sft-probe"]["format_adherence"] >= 0.95
    # knowing what it knows: the probed assistant refuses the unseen people and answers the frequent ones about as
    # often as the plain SFT model, which does answer some (both asked every held-out question)
    plain, probed = report["sft"], report["sft-probe"]
    assert probed["knowledge.unseen.dont_know_rate"] >= 0.80
    assert probed["knowledge.frequent.accuracy"] >= plain["knowledge.frequent.accuracy"] - 0.05
    assert plain["knowledge.frequent.accuracy"] >= 0.25
    assert report["reward"]["reward_model.pairs.accuracy"] >= 0.80
    assert report["ppo"]["last.rm_score"] > report["ppo"]["initial.rm_score"]  # PPO raised the RM's score
    # and kept a policy no worse by the gold reward on test prompts, which its stop rule never saw
    ppo = report["ppo"]
    assert ppo["best.test_gold"] >= ppo["initial.test_gold"] - 2 * math.hypot(ppo["initial.test_gold_se"],
                                                                               ppo["best.test_gold_se"])
    assert report["grpo"]["after.arithmetic.pass@1"] >= report["grpo"]["before.arithmetic.pass@1"] + 0.10
    # and GRPO's word problems, worked in the text with the tool tokens suppressed, left the final model a chat
    # assistant on the eval stage's held-out prompts (tools running)
    evaluation = report["eval"]
    assert evaluation["grpo.format.format_adherence"] >= evaluation["sft.format.format_adherence"] - 0.10
