"""``chatforge eval MODEL --tasks ...``: one call that measures a model on the tasks its kind supports.

    bpb            bits per byte on held-out text (any tokenizer: comparable across models)
    format         chat-format adherence on held-out prompts
    arithmetic     word problems with checkable answers: greedy pass@1, sampled pass@1 and pass@k
    gsm_symbolic   the same on reasoning-gym's GSM-symbolic problems
    knowledge      accuracy and "I don't know" rate per group of questions (known / unseen entities)
    word_problems, world_search, python_problems   tool use: accuracy with the tools (calculator, search of the
                   fictional world's pages, sandboxed python) and without them
    regurgitation  how many tokens of a training document the model continues verbatim from its opening
    induction      in-context copying: loss and accuracy on the second copy of repeated random tokens
    recall         cloze facts completed as plain text, at the start of a document and after a sentence
    pairs          pairwise accuracy of a reward model on held-out preference pairs
    rankings       its agreement (Kendall's tau) with held-out K-way rankings
    hellaswag_100, truthfulqa_mc1_100, gsm8k_cot_100, humaneval   standard benchmarks offline, through
                   lm-evaluation-harness (:mod:`~chatforge.eval.harness`)
    hellaswag, arc_easy, arc_challenge, gsm8k, truthfulqa_mc1   the same harness on Hub datasets (need a network)
"""

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from ..data.text_sources import iter_documents
from ..errors import InvalidValue, NotFound
from ..inference.engine import Engine, SamplingParams
from ..io import read_jsonl, write_jsonl
from ..modeling.factory import local_folder
from ..tools import Toolbox, default_toolbox
from .chat import format_adherence, knowledge, look_up_accuracy, python_accuracy, word_problem_accuracy
from .harness import BENCHMARKS, benchmark_items, check_benchmark_names, run_benchmarks
from .induction import repeated_sequence_copying
from .model_identity import file_digest, folder_digest, model_fingerprint
from .problems import problem_accuracy
from .recall import cloze_recall
from .result_cache import EvalCache
from .reward import RewardScorer, pairwise_accuracy, ranking_agreement

#: Tool-use tasks: how each is scored, asked with the tools and without them.
TOOL_TASKS = {"word_problems": word_problem_accuracy, "world_search": look_up_accuracy,
              "python_problems": python_accuracy}
CHAT_TASKS = ("format", "arithmetic", "gsm_symbolic", "knowledge", *TOOL_TASKS)
REWARD_TASKS = ("pairs", "rankings")
#: The :class:`EvalData` field each task reads.
TASK_DATA = {"bpb": "val_text", "format": "prompts", "arithmetic": "problems", "gsm_symbolic": "gsm_symbolic",
             "knowledge": "questions", "regurgitation": "corpus", "recall": "cloze", "pairs": "pairs",
             "rankings": "rankings", **{task: task for task in TOOL_TASKS}}
_PROBLEM_SETTINGS = ("k", "temperature", "max_new_tokens", "seed")
#: The :class:`EvalConfig` settings each task reads besides its limit (the others read none).
TASK_SETTINGS = {"bpb": ("max_length",), "arithmetic": _PROBLEM_SETTINGS, "gsm_symbolic": _PROBLEM_SETTINGS,
                 "regurgitation": ("prefix_tokens", "suffix_tokens"), "induction": ("seed",)}
#: Tasks asked with the model's tools running.
TASKS_WITH_TOOLS = ("format", *TOOL_TASKS)

Source = str | list[dict] | None


@dataclass
class EvalData:
    """Where each task's held-out records are: a JSONL file unless said otherwise, or the records themselves."""

    val_text: Source = None  # held-out documents: JSONL/parquet/text files with a `text` field
    prompts: Source = None  # conversations ({"messages"}); the first user turn is the prompt
    problems: Source = None  # {"prompt": messages, "answer"}
    gsm_symbolic: Source = None  # the same, of reasoning-gym's gsm_symbolic
    questions: Source = None  # {"question", "answer", "group"}
    corpus: Source = None  # training documents (any iter_documents source)
    pairs: Source = None  # {"chosen", "rejected"} conversations
    rankings: Source = None  # {"prompt", "completions", "ranking", ...} (chatforge preference-data build)
    cloze: Source = None  # {"prompt", "answer", "group"} fact openings
    word_problems: Source = None  # {"question", "answer", "expression"?}
    world_search: Source = None  # {"question", "answer"}: facts only the search index holds
    python_problems: Source = None  # {"question", "answer"}: results a program computes
    search_index: str | None = None  # the search tool's index (chatforge sft-data build writes one)

    @classmethod
    def from_folders(cls, corpus: str | Path, sft_data: str | Path, problems: str | Path | None,
                     preference_data: str | Path | None, knowledge_questions: str | Path | None = None) -> "EvalData":
        """The held-out files in a speedrun's corpus folder (``train.jsonl``/``val.jsonl``) and in the folders
        that ``chatforge sft-data build``, ``problems build`` and ``preference-data build`` write (None: a run
        without problems or preference data). ``knowledge_questions`` replaces the fictional world's questions
        where a run's probe labelled its own held-out questions known / unknown (a pretrained model's probe)."""
        corpus = Path(corpus)
        data = cls(val_text=str(corpus / "val.jsonl"), corpus=str(corpus / "train.jsonl"),
                   **cls.of_sft_data(sft_data), **cls.of_problems(problems) if problems else {},
                   **cls.of_preference_data(preference_data) if preference_data else {})
        if knowledge_questions:
            data.questions = str(knowledge_questions)
        return data

    @staticmethod
    def of_sft_data(folder: str | Path) -> dict:
        """The held-out files ``chatforge sft-data build`` writes, as fields."""
        folder = Path(folder)
        return {"prompts": str(folder / "test.jsonl"), "questions": str(folder / "world_qa_test.jsonl"),
                "cloze": str(folder / "world_cloze_test.jsonl"), "search_index": str(folder / "search-index"),
                **{task: str(folder / f"{task}_test.jsonl") for task in TOOL_TASKS}}

    @staticmethod
    def of_problems(folder: str | Path) -> dict:
        """The held-out files ``chatforge problems build`` writes, as fields."""
        folder = Path(folder)
        return {"problems": str(folder / "test.jsonl"), "gsm_symbolic": str(folder / "gsm_symbolic_test.jsonl")}

    @staticmethod
    def of_preference_data(folder: str | Path) -> dict:
        """The held-out files ``chatforge preference-data build`` writes, as fields."""
        folder = Path(folder)
        return {"pairs": str(folder / "pairs_test.jsonl"), "rankings": str(folder / "rankings_test.jsonl")}

    def has_data_for(self, task: str) -> bool:
        """Whether the held-out records ``task`` reads are there (tasks that read none always have them)."""
        return task not in TASK_DATA or _available(getattr(self, TASK_DATA[task]))

    def toolbox(self) -> Toolbox:
        """The tools the tool-use tasks are asked with: calculator, python, and search where the index is."""
        return default_toolbox(self.search_index if _available(self.search_index) else None)

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "EvalData":
        """The held-out files of a ``chatforge speedrun`` folder: where its saved stage configs
        (``speedrun/configs/``) put the data, else the speedrun's default layout."""
        run = Path(run_dir)

        def setting(stage: str, key: str, default: Path | None = None) -> str | Path | None:
            config = run / "speedrun/configs" / f"{stage}.yaml"
            return yaml.safe_load(config.read_text()).get(key, default) if config.exists() else default

        return cls.from_folders(run / "corpus", setting("sft", "sft_data_dir", run / "sft-data"),
                                setting("grpo", "problems_dir", run / "problems"),
                                setting("reward", "preference_data_dir", run / "preference-data"),
                                setting("sft-probe", "knowledge_questions"))


@dataclass
class EvalConfig:
    """How much of each task to run."""

    limit: int = 100  # records per task
    limits: dict[str, int | None] = field(default_factory=dict)  # tasks with another limit (None: all records)
    k: int = 8  # samples per problem for pass@k
    temperature: float = 1.0  # sampling temperature of pass@k
    max_new_tokens: int = 96
    max_length: int = 512  # tokens per document for bits per byte
    prefix_tokens: int = 32  # regurgitation: the opening given ...
    suffix_tokens: int = 32  # ... and the continuation compared
    seed: int = 0
    benchmarks: list[str] = field(default_factory=list)  # a speedrun's standard benchmarks for every language model
    benchmark_tokens: int = 256  # at most this many tokens generated per benchmark item (GSM8K, HumanEval)
    skip: list[str] = field(default_factory=list)  # tasks a speedrun's eval stage leaves out

    def __post_init__(self):
        check_benchmark_names(self.benchmarks)
        if unknown := [task for task in self.skip if task not in TASKS]:
            raise InvalidValue(f"skip: unknown tasks {unknown}; choose from {list(TASKS)}")

    def limit_of(self, task: str) -> int | None:
        return self.limits.get(task, self.limit)


def spread(records: list, limit: int | None) -> list:
    """At most ``limit`` records taken evenly through ``records`` (files are often ordered by kind or group)."""
    if limit is None or len(records) <= limit:
        return records
    return [records[i * len(records) // limit] for i in range(limit)]


def _available(source: Source) -> bool:
    if isinstance(source, list):
        return bool(source)
    return source is not None and ("://" in source or Path(source).exists())


def _records(source: Source, task: str, what: str, limit: int | None, fields: tuple[str, ...]) -> list[dict]:
    """Up to ``limit`` records of the JSONL file (or list), spread over it; a record without one of ``fields``
    raises a ``ValueError`` naming the file and the record."""
    records = source if isinstance(source, list) else read_jsonl(_required(source, task, what))
    for number, record in enumerate(records, 1):
        if missing := [name for name in fields if name not in record]:
            where = f"{source}: record {number}" if isinstance(source, str) else f"{what}: record {number}"
            raise InvalidValue(f"{where} has no {', '.join(missing)} (task {task!r} reads {', '.join(fields)})")
    return spread(records, limit)


def _required(value: str | None, task: str, what: str) -> str:
    if not _available(value):
        raise NotFound(f"task {task!r} needs {what}: {value or 'not given'}")
    return value


@torch.no_grad()
def bits_per_byte(model, tokenizer, documents: Sequence[str], max_length: int = 512, batch_size: int = 8) -> dict:
    """Next-token loss over each document (its first ``max_length`` tokens) in nats per token and bits per
    UTF-8 byte of the predicted text."""
    model.eval()
    nats = tokens = n_bytes = 0.0
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(documents), batch_size), desc="bits per byte", leave=False):
        encoded = [tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
                   for text in documents[start:start + batch_size]]
        encoded = [ids for ids in encoded if len(ids) > 1]
        if not encoded:
            continue
        width = max(map(len, encoded))
        input_ids = torch.zeros(len(encoded), width, dtype=torch.long)
        labels = torch.full_like(input_ids, -100)
        mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(encoded):
            input_ids[row, :len(ids)] = labels[row, :len(ids)] = torch.tensor(ids)
            mask[row, :len(ids)] = 1
            n_bytes += len(tokenizer.decode(ids[1:], skip_special_tokens=True).encode("utf-8"))
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits[:, :-1]
        targets = labels[:, 1:].to(device)
        nats += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum").item()
        tokens += (targets != -100).sum().item()
    return {"loss": nats / max(tokens, 1), "bpb": nats / math.log(2) / max(n_bytes, 1), "documents": len(documents),
            "tokens": int(tokens)}


def regurgitation(engine: Engine, documents: Sequence[str], prefix_tokens: int = 32, suffix_tokens: int = 32,
                  limit: int = 100, batch_size: int = 16) -> dict:
    """Greedy continuations of the openings of training documents, compared token by token with the real
    continuation: the mean and longest verbatim run from the start, the share reproduced in full, and the
    longest example."""
    tokenizer = engine.tokenizer
    cases = []
    for text in documents:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= prefix_tokens + suffix_tokens:
            cases.append(ids[:prefix_tokens + suffix_tokens])
        if len(cases) == limit:
            break
    if not cases:
        raise InvalidValue(f"no training document has {prefix_tokens + suffix_tokens} tokens")
    params = SamplingParams(temperature=0.0, max_new_tokens=suffix_tokens)
    runs, longest = [], None
    for start in tqdm(range(0, len(cases), batch_size), desc="regurgitation", leave=False):
        batch = cases[start:start + batch_size]
        for ids, generated in zip(batch, engine.generate_ids([ids[:prefix_tokens] for ids in batch], params)):
            truth = ids[prefix_tokens:]
            run = next((i for i, (a, b) in enumerate(zip(generated, truth)) if a != b), min(len(generated),
                                                                                             len(truth)))
            runs.append(run)
            if longest is None or run > longest["verbatim_tokens"]:
                longest = {"prompt": tokenizer.decode(ids[:prefix_tokens]), "verbatim_tokens": run,
                           "continuation": tokenizer.decode(generated), "truth": tokenizer.decode(truth)}
    return {"mean_verbatim_tokens": sum(runs) / len(runs), "max_verbatim_tokens": max(runs),
            "full_share": sum(run == suffix_tokens for run in runs) / len(runs), "documents": len(runs),
            "longest": longest}


def _first_user_turns(records: list[dict]) -> list[list[dict]]:
    return [[next(m for m in record["messages"] if m["role"] == "user")] for record in records]


def _task_runners(data: EvalData, config: EvalConfig) -> dict[str, Callable[[Engine], dict]]:
    def records(task: str, what: str, *fields: str) -> list[dict]:
        return _records(getattr(data, TASK_DATA[task]), task, what, config.limit_of(task), fields)

    def bpb(engine: Engine) -> dict:
        documents = list(iter_documents([_required(data.val_text, "bpb", "held-out text")]))
        return bits_per_byte(engine.model, engine.tokenizer, spread(documents, config.limit_of("bpb")),
                             config.max_length)

    def problems(task: str) -> Callable[[Engine], dict]:
        return lambda engine: problem_accuracy(engine, records(task, "problems", "prompt", "answer"), k=config.k,
                                               temperature=config.temperature, max_new_tokens=config.max_new_tokens,
                                               seed=config.seed)

    def regurgitate(engine: Engine) -> dict:
        documents = iter_documents([_required(data.corpus, "regurgitation", "training documents")])
        return regurgitation(engine, documents, config.prefix_tokens, config.suffix_tokens,
                             config.limit_of("regurgitation"))

    def with_and_without_tools(task: str) -> Callable[[Engine], dict]:
        def run(engine: Engine) -> dict:
            if not engine.tools_supported:
                raise InvalidValue(f"task {task!r} needs a model with ChatForge's tool tokens "
                                   "(chatforge model add-tools)")
            tasks = records(task, "tool tasks", "question", "answer")
            return TOOL_TASKS[task](engine, tasks)
        return run

    return {
        "bpb": bpb,
        "format": lambda engine: format_adherence(
            engine, _first_user_turns(records("format", "conversations", "messages"))),
        "arithmetic": problems("arithmetic"),
        "gsm_symbolic": problems("gsm_symbolic"),
        "knowledge": lambda engine: knowledge(engine, records("knowledge", "questions", "question", "answer")),
        "regurgitation": regurgitate,
        "induction": lambda engine: repeated_sequence_copying(engine.model, engine.tokenizer,
                                                              config.limit_of("induction"), seed=config.seed),
        "recall": lambda engine: cloze_recall(engine, records("recall", "cloze items", "prompt", "answer")),
        **{task: with_and_without_tools(task) for task in TOOL_TASKS},
    }


TASKS = ("bpb", "format", "arithmetic", "gsm_symbolic", "knowledge", *TOOL_TASKS, "regurgitation", "induction",
         "recall", *REWARD_TASKS, *BENCHMARKS)


def is_reward_model(model_path: str) -> bool:
    """Whether the checkpoint is a sequence classifier (a reward model) rather than a language model."""
    architectures = AutoConfig.from_pretrained(model_path).architectures or []
    return any(name.endswith("ForSequenceClassification") for name in architectures)


def evaluate_reward_model(model, tokenizer, tasks: Sequence[str], data: EvalData, config: EvalConfig = EvalConfig(),
                          model_folder: str | Path | None = None) -> dict:
    """Run reward-model ``tasks`` (:data:`REWARD_TASKS`) on a loaded sequence classifier; task name -> figures.
    Where ``model`` and ``tokenizer`` are those of the files in ``model_folder``, figures are kept in and reused
    from the :class:`~chatforge.eval.result_cache.EvalCache` that ``CHATFORGE_EVAL_CACHE`` names."""
    scorer = RewardScorer(model, tokenizer)
    runners = {
        "pairs": lambda: pairwise_accuracy(scorer, _records(data.pairs, "pairs", "preference pairs",
                                                            config.limit_of("pairs"), ("chosen", "rejected"))),
        "rankings": lambda: ranking_agreement(scorer, _records(data.rankings, "rankings", "rankings",
                                                               config.limit_of("rankings"),
                                                               ("prompt", "completions", "ranking")))}
    cache, fingerprint = _cache_for(model_folder)
    return {task: _measured(task, runners[task],
                            _cache_description(task, data, config, model) if cache is not None else None,
                            cache, fingerprint)
            for task in tasks}


def applicable_tasks(tasks: Sequence[str], data: EvalData, engine: Engine) -> list[str]:
    """Those of ``tasks`` whose held-out records are there and that the model can do (tool use needs the tool
    tokens)."""
    return [task for task in tasks if data.has_data_for(task) and (task not in TOOL_TASKS or engine.tools_supported)]


def evaluate_language_model(engine: Engine, tasks: Sequence[str], data: EvalData, config: EvalConfig = EvalConfig(),
                            samples_dir: str | Path | None = None, model_folder: str | Path | None = None) -> dict:
    """Run language-model ``tasks`` with ``engine`` (its toolbox serves the tool-use tasks); task name -> figures.
    ``samples_dir`` gets each benchmark item's prompt, reply and score (``<benchmark>.jsonl``). Where the engine's
    model and tokenizer are those of the files in ``model_folder``, figures are kept in and reused from the
    :class:`~chatforge.eval.result_cache.EvalCache` that ``CHATFORGE_EVAL_CACHE`` names."""
    for task in tasks:
        if task in CHAT_TASKS and engine.tokenizer.chat_template is None:
            raise InvalidValue(f"task {task!r} needs a chat model; {engine.model.name_or_path} has no chat template")
    runners = _task_runners(data, config)
    cache, fingerprint = _cache_for(model_folder)
    results = {}
    for task in (task for task in tasks if task not in BENCHMARKS):
        description = _cache_description(task, data, config, engine.model, engine) if cache is not None else None
        results[task] = _measured(task, lambda: runners[task](engine), description, cache, fingerprint)
    if benchmarks := [task for task in tasks if task in BENCHMARKS]:
        results |= _benchmark_figures(engine, benchmarks, config, samples_dir, cache, fingerprint)
    return {task: results[task] for task in tasks}


def _cache_for(model_folder: str | Path | None) -> tuple[EvalCache | None, str | None]:
    """The environment's eval cache and the fingerprint of ``model_folder``'s files; (None, None) where either is
    missing."""
    cache = EvalCache.from_environment() if model_folder is not None else None
    return cache, model_fingerprint(model_folder) if cache is not None else None


def _measured(task: str, run: Callable[[], dict], description: dict | None, cache: EvalCache | None,
              fingerprint: str | None) -> dict:
    """``run()``'s figures, read from ``cache`` where measured earlier under ``description`` (and the model's
    ``fingerprint``), else measured and kept there; measured and not kept where ``description`` is None."""
    if description is None:
        return run()
    description["model"] = fingerprint
    key = cache.key(description)
    if (kept := cache.get(key)) is not None:
        _say_reused(task, cache, key)
        return kept
    figures = run()
    cache.put(key, description, figures)
    return figures


def _say_reused(task: str, cache: EvalCache, key: str) -> None:
    print(f"{task}: measured earlier on the same model files and settings ({cache.folder / key}.json)", flush=True)


def _benchmark_figures(engine: Engine, names: list[str], config: EvalConfig, samples_dir: str | Path | None,
                       cache: EvalCache | None, fingerprint: str | None) -> dict:
    """The benchmarks ``names`` scored by lm-evaluation-harness; with a ``cache``, an offline benchmark measured
    earlier on the same model files and settings is read from it, its item records written to ``samples_dir``."""
    described = {}
    if cache is not None:
        for name in names:
            if (description := _benchmark_description(name, config, engine)) is not None:
                description["model"] = fingerprint
                described[name] = (cache.key(description), description)
    results = {}
    for name, (key, _) in described.items():
        kept = cache.entry(key)
        if kept is not None and ("records" in kept or samples_dir is None):
            _say_reused(name, cache, key)
            results[name] = kept["figures"]
            if samples_dir is not None:
                Path(samples_dir).mkdir(parents=True, exist_ok=True)
                write_jsonl(Path(samples_dir) / f"{name}.jsonl", kept["records"])
    if missing := [name for name in names if name not in results]:
        results |= run_benchmarks(engine.model, engine.tokenizer, missing, limit=config.limit,
                                  max_gen_toks=config.benchmark_tokens, seed=config.seed, samples_dir=samples_dir)
        for name in (name for name in missing if name in described):
            records = read_jsonl(Path(samples_dir) / f"{name}.jsonl") if samples_dir is not None else None
            cache.put(*described[name], results[name], records)
    return results


def _placement(model) -> dict:
    """The dtype and device ``model`` runs in."""
    parameter = next(model.parameters())
    return {"dtype": str(parameter.dtype), "device": parameter.device.type}


def _benchmark_description(name: str, config: EvalConfig, engine: Engine) -> dict | None:
    """What decides an offline benchmark's figures besides the model's files and the code; None for a Hub task."""
    items = benchmark_items(name)
    if items is None:
        return None
    return {"task": name, "records": file_digest(items), "limit": config.limit,
            "settings": {"benchmark_tokens": config.benchmark_tokens, "seed": config.seed},
            "harness": version("lm_eval"), **_placement(engine.model)}


def _source_digest(source: Source) -> str | None:
    """SHA-256 of held-out records (a list, or a local file); None for any other source (a Hub dataset, a
    folder), whose figures are not kept."""
    if isinstance(source, list):
        return hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()
    if isinstance(source, str) and Path(source).is_file():
        return file_digest(source)
    return None


def _cache_description(task: str, data: EvalData, config: EvalConfig, model, engine: Engine | None = None
                       ) -> dict | None:
    """What decides ``task``'s figures besides the model's files and the code, or None where they are not kept;
    ``engine`` serves the tool-use tasks."""
    records = _source_digest(getattr(data, TASK_DATA[task])) if task in TASK_DATA else None
    if records is None:
        return None
    description = {"task": task, "records": records, "limit": config.limit_of(task),
                   "settings": {name: getattr(config, name) for name in TASK_SETTINGS.get(task, ())},
                   **_placement(model)}
    if task in TASKS_WITH_TOOLS:
        index = data.search_index
        digest = "none" if not index else folder_digest(index) if Path(index).is_dir() else _source_digest(index)
        if digest is None:
            return None
        description["tools"] = {"names": sorted(engine.toolbox.tools) if engine.toolbox else [],
                                "search_index": digest, "max_tool_calls": engine.max_tool_calls}
    return description


def evaluate_model(model_path: str, tasks: Sequence[str], data: EvalData, config: EvalConfig = EvalConfig(),
                   samples_dir: str | Path | None = None) -> dict:
    """Run ``tasks`` on the model at ``model_path`` (a folder or Hub id; a language or a reward model); task name
    -> figures. ``samples_dir`` gets each benchmark item's prompt, reply and score (``<benchmark>.jsonl``)."""
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise InvalidValue(f"unknown tasks {unknown}; choose from {list(TASKS)}")
    reward_model = is_reward_model(model_path)
    if [task for task in tasks if (task in REWARD_TASKS) != reward_model]:
        kind = f"a reward model: its tasks are {list(REWARD_TASKS)}" if reward_model else "a language model"
        raise InvalidValue(f"{model_path} is {kind}; tasks {list(tasks)} do not all apply")
    if reward_model:
        return evaluate_reward_model(AutoModelForSequenceClassification.from_pretrained(model_path),
                                     AutoTokenizer.from_pretrained(model_path), tasks, data, config,
                                     model_folder=local_folder(model_path))
    return evaluate_language_model(Engine.from_pretrained(model_path, toolbox=data.toolbox()), tasks, data, config,
                                   samples_dir, model_folder=local_folder(model_path))
