"""The report card of a speedrun: ``runs/<name>/report.md`` with its plots in ``report_assets/``, readable on
GitHub as is. Every figure comes from the run's own files (``report.json``, ``eval.json``, each stage's logs)."""

import json
import shutil
from pathlib import Path

from ..io import atomic_write_text, read_jsonl
from .harness import BENCHMARKS
from .intervals import wilson_interval
from .plots import plot_panels, plot_scores

ASSETS = "report_assets"


def _number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:,.1f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_number(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _quote(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("|", "\\|")


def _copy_plot(source: Path, run: Path, name: str) -> str | None:
    if not source.exists():
        return None
    (run / ASSETS).mkdir(exist_ok=True)
    shutil.copyfile(source, run / ASSETS / name)
    return f"![{name}]({ASSETS}/{name})"


def _summary(report: dict, stage_text: dict) -> list[str]:
    run = report.get("run", {})
    hardware = run.get("hardware", {})
    device = ", ".join(hardware.get("gpus", [])) or f"{hardware.get('cpus')} CPU cores"
    seconds = {name: figures.get("seconds", 0.0) for name, figures in report.items() if name != "run"}
    rows = [[name, stage_text.get(name, ""), f"{value:.0f}"] for name, value in seconds.items()]
    total = sum(seconds.values())
    lines = [f"Recipe `{run.get('recipe')}`, on {device} ({hardware.get('platform')}, Python "
             f"{hardware.get('python')}, torch {hardware.get('torch')}): **{total / 60:.1f} minutes** of stages.", ""]
    return lines + _table(["stage", "what", "seconds"], rows)


def _data(run: Path, report: dict) -> list[str]:
    lines = ["## Data", ""]
    stats_path = run / "data/stats.json"
    if stats_path.exists():
        stats = json.loads(stats_path.read_text())
        rows = [[step["step"], step["documents"], step["dropped"],
                 ", ".join(f"{k} {v}" for k, v in step["drop_reasons"].items())] for step in stats["funnel"]]
        lines += ["The web pages through the cleaning pipeline (full report: `data/report.md`):", ""]
        lines += _table(["step", "documents left", "dropped", "why"], rows)
        if plot := _copy_plot(run / "data/funnel.png", run, "funnel.png"):
            lines += [plot, ""]
    corpus = report.get("corpus", {})
    if corpus:
        lines += [f"Pretraining corpus: {corpus['train_documents']:,} training documents "
                  f"({corpus['train_characters']:,} characters) and {corpus['val_documents']:,} held out.", ""]
    return lines


def _tokenizer(run: Path, report: dict) -> list[str]:
    figures = report.get("tokenizer")
    if not figures:
        return []
    lines = ["## Tokenizer", "", f"Byte-level BPE with {figures['vocab_size']:,} tokens: "
             f"**{figures['held_out_bytes_per_token']:.2f} bytes per token** on the held-out documents.", ""]
    tokenizer_dir = run / "tokenizer"
    if tokenizer_dir.exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        text = "The city of Paris has 2,165,423 inhabitants."
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = [tokenizer.decode([token]) for token in ids]
        lines += [f"How `{text}` becomes {len(ids)} tokens (␣ is a space):", "",
                  "| " + " | ".join(f"`{p.replace(' ', '␣')}`" for p in pieces) + " |", "|" + "---|" * len(ids),
                  "| " + " | ".join(str(token) for token in ids) + " |", ""]
    return lines


def _pretraining(run: Path, report: dict) -> list[str]:
    figures = report.get("pretrain")
    if not figures:
        return []
    folder = run / "pretrain"
    records = read_jsonl(folder / "metrics.jsonl")
    lines = ["## Pretraining", "", f"{figures['steps']:,} steps, {figures['tokens']:,} tokens: held-out loss "
             f"**{figures['val_loss']:.3f}** nats/token ({figures['val_bpb']:.3f} bits/byte) against "
             f"{figures['unigram_val_loss']:.3f} for a unigram model of the training tokens.", ""]
    if records:
        train = ([r["step"] for r in records], [r["loss"] for r in records])
        val = ([r["step"] for r in records if "val_loss" in r], [r["val_loss"] for r in records if "val_loss" in r])
        plot_panels({"loss (nats/token)": {"train": train, "held-out": val}}, run / ASSETS / "pretrain_loss.png",
                    "pretraining")
        lines += [f"![pretraining loss]({ASSETS}/pretrain_loss.png)", ""]
    samples = read_jsonl(folder / "samples.jsonl")
    if samples:
        prompts = list(samples[0]["samples"])
        rows = [[record["step"], *(_quote(p + record["samples"][p], 90) for p in prompts)] for record in samples]
        lines += ["Samples during training:", ""] + _table(["step", *[f"`{p}`" for p in prompts]], rows)
    return lines


#: The SFT figures shown before and after, and what they are.
TOOL_FIGURES = {"format_adherence": "chat-format adherence",
                "word_problems.with_tools.accuracy": "word problems, with the calculator",
                "word_problems.without_tools.accuracy": "word problems, without tools",
                "world_search.with_tools.accuracy": "look-ups of unseen people, with search",
                "world_search.without_tools.accuracy": "look-ups of unseen people, without tools",
                "python_problems.with_tools.accuracy": "questions that need a program, with python",
                "python_problems.without_tools.accuracy": "questions that need a program, without tools"}
KNOWLEDGE_FIGURES = {"knowledge.known.accuracy": "questions the probe found known: answered right",
                     "knowledge.known.dont_know_rate": "questions the probe found known: \"I don't know\"",
                     "knowledge.known.kept_right": "questions the probe found known, answered right before: still "
                                                   "right",
                     "knowledge.unknown.accuracy": "questions the probe found unknown: answered right",
                     "knowledge.unknown.dont_know_rate": "questions the probe found unknown: \"I don't know\""}


def _share(figures: dict, key: str) -> str:
    """A share as a percentage, with its 95% interval and item count where the stage recorded them."""
    if key not in figures:
        return ""
    if f"{key}.low" not in figures:
        return f"{figures[key]:.1%}"
    return f"{figures[key]:.1%} ({figures[key + '.low']:.0%}–{figures[key + '.high']:.0%}, n={figures[key + '.items']})"


def _base(figures: dict) -> dict:
    """A stage's figures of the model it started from (``base.*``), without the prefix."""
    return {key.removeprefix("base."): value for key, value in figures.items() if key.startswith("base.")}


def _before_after(before: dict, after: dict, shown: dict[str, str], title: str) -> list[str]:
    """A table of ``shown`` figures of two models, where both have some of them."""
    if not any(key in before for key in shown) or not any(key in after for key in shown):
        return []
    rows = [[what, _share(before, key), _share(after, key)] for key, what in shown.items() if key in after]
    return [title, ""] + _table(["held-out task", "before", "after"], rows)


def _sft(report: dict, evaluation: dict) -> list[str]:
    lines = ["## Supervised fine-tuning", ""]
    sft, probed, probe = report.get("sft", {}), report.get("sft-probe", {}), report.get("probe", {})
    if sft or probed:
        final = probed or sft
        lines += [f"Held-out loss on conversations {final['eval_loss_before']:.3f} → {final['eval_loss']:.3f}; "
                  f"chat-format adherence {final['format_adherence']:.1%}.", ""]
    lines += _before_after(_base(sft), sft, TOOL_FIGURES,
                           "SFT with tools, before and after (greedy; 95% Wilson intervals):")
    lines += _before_after(sft, probed, TOOL_FIGURES,
                           "The tools before and after SFT with the probe's examples (the SFT model, then the probed "
                           "one):")
    lines += _before_after(_base(probed), probed, KNOWLEDGE_FIGURES,
                           "SFT with the probe's examples, on held-out questions labelled by the same probe:")
    if probe:
        shares = ", ".join(f"{k.removeprefix('known_share.')} {v:.0%}" for k, v in probe.items()
                           if k.startswith("known_share."))
        probed = "the first SFT model" if probe.get("model", "sft") == "sft" else "the model SFT started from"
        lines += [f"Knowledge probe of {probed}: {probe['known']} of {probe['questions']} questions "
                  f"known ({shares}); the rest were taught as \"I don't know\".", ""]
    before = evaluation.get("base", {}).get("format", {}).get("examples", [])
    after = evaluation.get("sft", {}).get("format", {}).get("examples", [])
    if before and after:
        rows = [[_quote(b["prompt"], 60), _quote(b["reply"], 100), _quote(a["reply"], 100)]
                for b, a in zip(before, after)]
        lines += ["Replies to held-out prompts before and after SFT:", ""]
        lines += _table(["prompt", "base model", "after SFT"], rows)
    return lines


def _reward_model(report: dict, evaluation: dict) -> list[str]:
    figures = report.get("reward")
    if not figures:
        return []
    rows = [[metric, figures.get(f"untrained.{key}"), figures.get(f"reward_model.{key}")]
            for metric, key in (("pairwise accuracy", "pairs.accuracy"), ("Kendall τ", "rankings.kendall_tau"),
                                ("top-1 accuracy", "rankings.top1_accuracy"))]
    lines = ["## Reward model", "", "On held-out preference pairs and rankings:", ""] + _table(
        ["", "untrained", "trained"], rows)
    by_kind = evaluation.get("reward", {}).get("rankings", {}).get("pairwise_accuracy_by_kind", {})
    if by_kind:
        rows = [[kinds, counts["pairs"], "{:.0%} ({:.0%}–{:.0%})".format(
                    counts["accuracy"], *wilson_interval(round(counts["accuracy"] * counts["pairs"]), counts["pairs"]))]
                for kinds, counts in by_kind.items()]
        lines += ["By the kinds of reply compared (held-out rankings; 95% Wilson intervals):", ""]
        lines += _table(["better > worse", "pairs", "reward model right"], rows)
    return lines


def _ppo(run: Path, report: dict) -> list[str]:
    figures = report.get("ppo")
    if not figures:
        return []
    def with_error(when: str, name: str) -> str:
        mean, error = figures.get(f"{when}.{name}"), figures.get(f"{when}.{name}_se")
        return "—" if mean is None else f"{_number(mean)} ± {_number(error)}"

    rows = [[when, figures.get(f"{when}.step"), with_error(when, "rm_score"), with_error(when, "gold"),
             with_error(when, "test_rm_score"), with_error(when, "test_gold")] for when in ("initial", "best", "last")]
    lines = ["## RLHF (PPO)", "", f"Stopped at step {figures['steps']}: {figures['stop_reason']}. "
             f"The policy kept ({figures.get('select_by', 'gold')} on the validation prompts) is the one of step "
             f"{figures['crop_step']} (the dashed line); the test prompts, which the rule never saw, score the "
             "initial and kept policies. Mean ± standard error:", ""]
    lines += _table(["policy", "step", "reward-model score (validation)", "gold reward (validation)",
                     "reward-model score (test)", "gold reward (test)"], rows)
    if plot := _copy_plot(run / "ppo/ppo.png", run, "ppo.png"):
        lines += [plot, ""]
    return lines


def _grpo(run: Path, report: dict) -> list[str]:
    figures = report.get("grpo")
    if not figures:
        return []
    keys = sorted({key.split(".", 2)[-1] for key in figures if key.startswith("before.arithmetic.")})
    rows = [[key, figures.get(f"before.arithmetic.{key}"), figures.get(f"after.arithmetic.{key}")] for key in keys]
    lines = ["## GRPO on problems with checkable answers", ""] + _table(["held-out", "before", "after"], rows)
    if plot := _copy_plot(run / "grpo/grpo.png", run, "grpo.png"):
        lines += [plot, ""]
    return lines


def _evaluation(report: dict, evaluation: dict) -> list[str]:
    if not evaluation:
        return []
    rows: dict[str, dict] = {}
    for model, tasks in evaluation.items():
        for task, figures in tasks.items():
            if task in BENCHMARKS:
                continue
            for metric, value in figures.items():
                if isinstance(value, dict) and task in ("knowledge", "recall", "reward"):
                    for key, inner in value.items():
                        if isinstance(inner, float):
                            rows.setdefault(f"{task}: {metric} {key}", {})[model] = inner
                elif isinstance(value, float):
                    rows.setdefault(f"{task}: {metric}", {})[model] = value
    models = list(evaluation)
    table = [[name, *(values.get(model, "") for model in models)] for name, values in rows.items()]
    lines = ["## Evaluation of every stage's model", ""] + _table(["task: metric", *models], table)
    lines += [f"`{key.removesuffix('.same_model_as')}` holds the same model files as `{twin}` (a stage that kept "
              "its starting model): evaluated once, its figures are the same.\n"
              for key, twin in report.get("eval", {}).items() if key.endswith(".same_model_as")]
    longest = evaluation.get("base", {}).get("regurgitation", {}).get("longest")
    if longest:
        lines += [f"Longest verbatim continuation of a training document by the base model "
                  f"({longest['verbatim_tokens']} tokens): given “{_quote(longest['prompt'])}” it wrote "
                  f"“{_quote(longest['continuation'])}”; the document goes on “{_quote(longest['truth'])}”.", ""]
    return lines


def _benchmarks(run: Path, evaluation: dict) -> list[str]:
    """Every model's standard-benchmark scores side by side, with 95% intervals, as a table and a bar plot."""
    scores = {name: {model: tasks[name] for model, tasks in evaluation.items() if name in tasks}
              for name in BENCHMARKS}
    scores = {name: models for name, models in scores.items() if models}
    if not scores:
        return []
    models = list(dict.fromkeys(model for by_model in scores.values() for model in by_model))

    def cell(figures: dict | None) -> str:
        if figures is None:
            return ""
        low, high = figures["interval_95"]
        return f"{figures['score']:.1%} ({low:.0%}–{high:.0%})"

    rows = [[f"{name} ({next(iter(by_model.values()))['metric'].split(',')[0]}, "
             f"n={next(iter(by_model.values()))['items']})", *(cell(by_model.get(model)) for model in models)]
            for name, by_model in scores.items()]
    plot_scores({name: {model: (f["score"], *f["interval_95"]) for model, f in by_model.items()}
                 for name, by_model in scores.items()}, run / ASSETS / "benchmarks.png", "standard benchmarks")
    return (["## Standard benchmarks", "", "Scored by lm-evaluation-harness (`chatforge eval MODEL --tasks ...`; "
             "docs/evaluation.md); 95% Wilson intervals:", ""] + _table(["benchmark (metric, items)", *models], rows)
            + [f"![standard benchmarks]({ASSETS}/benchmarks.png)", ""])


def _exports(report: dict) -> list[str]:
    exported = {k: v for k, v in report.get("export", {}).items() if k != "seconds"}
    if not exported:
        return []
    lines = ["## Exported models", "", "Each folder loads with `from_pretrained(path, trust_remote_code=True)` "
             "without chatforge and carries its model card (`chatforge push DIR --repo-id ORG/NAME`):", ""]
    return lines + [f"- `{name}`: `{folder}`" for name, folder in exported.items()] + [""]


def write_report(run_dir: str | Path, stage_text: dict | None = None) -> Path:
    """Write ``report.md`` (and its plots) for the speedrun folder ``run_dir``; its path."""
    run = Path(run_dir)
    report = json.loads((run / "report.json").read_text())
    evaluation = json.loads((run / "eval.json").read_text()) if (run / "eval.json").exists() else {}
    (run / ASSETS).mkdir(exist_ok=True)
    lines = [f"# Speedrun report: {Path(report.get('run', {}).get('recipe', '')).parent.name}", ""]
    lines += _summary(report, stage_text or {})
    for section in (_data(run, report), _tokenizer(run, report), _pretraining(run, report),
                    _sft(report, evaluation), _reward_model(report, evaluation), _ppo(run, report), _grpo(run, report),
                    _evaluation(report, evaluation), _benchmarks(run, evaluation), _exports(report)):
        lines += section
    path = run / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
