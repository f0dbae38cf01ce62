"""Hub-ready export of a trained model folder, with a model card filled from its run, and ``chatforge push``.

An exported folder loads with ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` (or
``AutoModelForSequenceClassification`` for a reward model) and ``pipeline()`` where chatforge is not
installed: safetensors weights, a config with ``auto_map`` and the modeling code beside it, the tokenizer
with its chat template, a generation config, and ``README.md``.
"""

import json
import math
import shutil
from importlib import resources
from pathlib import Path

import jinja2
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from ..errors import InvalidValue
from ..io import atomic_directory

KINDS = ("base", "chat", "reward")
#: What a training folder holds beside the model and is not exported.
NOT_EXPORTED = ("metrics.jsonl", "samples.jsonl", "eval.json", "summary.json", "training_args.bin", "README.md")
REQUIRED = ("config.json", "model.safetensors", "tokenizer_config.json")
SUMMARIES = {
    "base": "A base language model: it continues text like the documents it was pretrained on. It is not an "
            "assistant; prompt it with the start of a document or with a few examples (few-shot).",
    "chat": "An assistant: a base model fine-tuned on conversations (with \"I don't know\" examples from "
            "probing what it knows, and tool calls).",
    "reward": "A reward model: it scores an assistant reply in its conversation (one number, higher is better). "
              "Used as the reward of RLHF with PPO.",
}
#: The summary of a pretrained chat model as the speedrun imported it, before any training here.
IMPORTED = ("A pretrained chat model imported from a GGUF file, with chatforge's tool-call tokens and tool-aware "
            "chat template added: it has not yet learnt to use them.")
#: What reinforcement learning a chat model of these stages had after SFT.
RL_STAGES = {"ppo": "Then tuned with PPO against the reward model (RLHF).",
             "grpo": "Then tuned with PPO against the reward model (RLHF), and with GRPO on word problems whose "
                     "answers are checked."}
LIMITATIONS = {
    "base": ["Small and briefly trained: it writes fluent-looking text that is often wrong or meaningless.",
             "English only; it repeats and may reproduce passages of its training text."],
    "chat": ["Small and briefly trained: it gets most facts wrong; it says \"I don't know\" to much of what it "
             "was found not to know, but it still makes things up.",
             "Its conversations and arithmetic problems are generated, not written by people; it is a "
             "demonstration of the pipeline, not a useful assistant. English only."],
    "reward": ["Trained on rankings built by construction from a rule-based judge, not on human preferences: it "
               "rewards the judge's notion of a good reply and has blind spots (see the evaluation)."],
}


class ExportError(InvalidValue):
    """A folder cannot be exported or pushed; the message says what is missing."""


def _check_complete(folder: Path) -> None:
    missing = [name for name in REQUIRED if not (folder / name).exists()]
    if missing:
        raise ExportError(f"{folder}: not a saved model folder (missing {', '.join(missing)})")


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _evaluation_rows(figures: dict) -> list[tuple[str, str, str]]:
    rows = []
    for task, values in figures.items():
        if "metric" in values:  # a standard benchmark: its one figure, with the item count and interval
            low, high = values["interval_95"]
            rows.append((task, values["metric"].split(",")[0],
                         f"{values['score']:.1%} (95% interval {low:.0%}–{high:.0%}, n={values['items']})"))
            continue
        for metric, value in values.items():
            if isinstance(value, dict) and task == "knowledge":
                rows += [(task, f"{metric} {key}", _format(v)) for key, v in value.items()
                         if key != "questions" and isinstance(v, float)]
            elif isinstance(value, dict) and task == "reward":
                rows += [(task, f"{metric} {key}", _format(v)) for key, v in value.items()
                         if isinstance(v, (int, float))]
            elif isinstance(value, (int, float)):
                rows.append((task, metric, _format(value)))
    return rows


def _data_lines(kind: str, stage: str | None, report: dict) -> list[str]:
    corpus, pretrain = report.get("corpus", {}), report.get("pretrain", {})
    lines = []
    if "model" in report.get("import", {}):
        lines.append(f"Pretrained model: {report['import']['model']}, imported from its GGUF file (its own "
                     "pretraining and instruction tuning).")
    if corpus:
        lines.append(f"Pretraining: {corpus.get('train_documents', 0):,} documents "
                     f"({corpus.get('train_characters', 0):,} characters): English Wikipedia paragraphs "
                     "(CC BY-SA 4.0), the documents of a generated fictional world, and web pages cleaned by "
                     f"chatforge's FineWeb-style pipeline; {pretrain.get('tokens', 0):,} tokens seen.")
    if kind in ("chat", "reward") and stage != "import":
        lines.append("SFT: chatterbot-corpus conversations, generated small talk, identity, refusals, word "
                     "problems, and calculator, Python and search tool use; \"I don't know\" replies where probing "
                     "found the model did not know the answer.")
    if kind == "reward":
        lines.append("Rankings of replies ranked by construction (reference reply and degraded versions of it).")
    if stage in RL_STAGES:
        lines.append("RL: PPO against the reward model on the prompts of the preference set; GRPO on generated "
                     "word problems, rewarded when the final answer is right.")
    return lines


def model_card(folder: Path, kind: str, run_dir: Path | None = None, model_name: str | None = None,
               stage: str | None = None, repo_id: str | None = None) -> str:
    """The README of an exported folder, from ``model_cards/model_card.md.j2``."""
    config = AutoConfig.from_pretrained(folder)
    report = _load_json(run_dir / "report.json") if run_dir else {}
    evaluation = _load_json(run_dir / "eval.json").get(model_name, {}) if run_dir else {}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        parameters = sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    hardware = report.get("run", {}).get("hardware", {})
    recipe = Path(report.get("run", {}).get("recipe", "custom/speedrun.yaml"))
    template = jinja2.Environment(loader=jinja2.FunctionLoader(_template), keep_trailing_newline=True,
                                  undefined=jinja2.StrictUndefined).get_template("model_card.md.j2")
    return template.render(
        title=f"chatforge {recipe.parent.name} {model_name or kind}", kind=kind, stage=stage or "?", recipe=recipe,
        summary=IMPORTED if stage == "import" else " ".join(filter(None, (SUMMARIES[kind], RL_STAGES.get(stage)))),
        hardware=", ".join(hardware.get("gpus", [])) or f"{hardware.get('cpus', '?')} CPU cores",
        architecture=f"{config.model_type}: {config.num_hidden_layers} layers x {config.hidden_size}, "
                     f"{config.num_attention_heads} heads",
        parameters=parameters, vocab_size=config.vocab_size, context=config.max_position_embeddings,
        repo_hint=repo_id or "PATH_OR_REPO_ID", data=_data_lines(kind, stage, report),
        evaluation=_evaluation_rows(evaluation),
        training=[(name, _format(value)) for name, value in report.get(stage, {}).items()
                  if isinstance(value, (int, float)) and not isinstance(value, bool)],
        limitations=LIMITATIONS[kind])


def _template(name: str) -> str:
    return resources.files("chatforge").joinpath("model_cards", name).read_text(encoding="utf-8")


def export_model(source: str | Path, destination: str | Path, kind: str, run_dir: str | Path | None = None,
                 model_name: str | None = None, stage: str | None = None, repo_id: str | None = None) -> Path:
    """Copy the model files of ``source`` (no checkpoints or logs) to ``destination`` with a model card; a chat
    model's generation stops at the end of its turn first. Replaces ``destination`` in one step."""
    if kind not in KINDS:
        raise ExportError(f"kind {kind!r}: choose one of {KINDS}")
    source, destination = Path(source), Path(destination)
    _check_complete(source)
    with atomic_directory(destination) as tmp_dir:
        for path in source.iterdir():
            if path.is_file() and path.name not in NOT_EXPORTED and path.suffix != ".png":
                shutil.copy2(path, tmp_dir / path.name)
        if kind == "chat":
            generation = GenerationConfig.from_pretrained(tmp_dir)
            tokenizer = AutoTokenizer.from_pretrained(tmp_dir)
            if "<|im_end|>" not in tokenizer.get_vocab():
                raise ExportError(f"{source}: kind 'chat' but the tokenizer has no <|im_end|> token")
            end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
            others = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
            generation.eos_token_id = [end_of_turn] + [i for i in others if i not in (None, end_of_turn)]
            generation.pad_token_id = tokenizer.pad_token_id
            generation.save_pretrained(tmp_dir)
        card = model_card(tmp_dir, kind, Path(run_dir) if run_dir else None, model_name, stage, repo_id)
        (tmp_dir / "README.md").write_text(card, encoding="utf-8")
    return destination


def push(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
         endpoint: str | None = None) -> str:
    """Upload an exported folder to the Hub model repo ``repo_id`` (created if needed); its URL. The token is
    ``token``, else ``HF_TOKEN`` or the one saved by ``hf auth login``; ``endpoint`` is the Hub's address
    (default ``HF_ENDPOINT`` or huggingface.co). Nothing local changes."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    _check_complete(folder)
    if not (folder / "README.md").exists():
        raise ExportError(f"{folder}: no README.md model card; export it first (chatforge export)")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message=f"Upload {folder.name} exported by chatforge")
    except Exception as error:  # network, HTTP, auth or offline mode: each library version raises its own
        raise ExportError(f"could not push {folder} to {repo_id}: {type(error).__name__}: {error}. Check the "
                          "network and your token (HF_TOKEN, or `hf auth login`); nothing was uploaded or changed "
                          "locally.") from error
    return str(url)
