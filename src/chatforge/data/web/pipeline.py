"""Build and run the web-text pipeline on datatrove executors.

Stages (datatrove pipelines, chained with ``depends``; finished tasks are skipped on rerun):

1. ``filter``: read pages -> the steps before ``minhash`` -> intermediate JSONL
2. ``minhash_signatures`` -> 3. ``minhash_buckets`` -> 4. ``minhash_clusters``
5. ``dedup``: intermediate JSONL -> drop near-duplicates -> the steps after ``minhash`` -> parquet

Without a ``minhash`` step, stage 1 writes the parquet output directly.
"""

import glob
import json
from dataclasses import dataclass
from pathlib import Path

from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupSignature,
)
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter, ParquetWriter
from datatrove.utils.hashing import HashConfig

from ...errors import InvalidValue, NotFound
from .config import WebPipelineConfig
from .readers import WebPageReader, split_input
from .steps import (
    HtmlToText,
    LocalLanguageFilter,
    NearDuplicateFilter,
    PIIRemover,
    UrlBlocklistFilter,
)

EXECUTORS = ("local", "slurm", "ray")


@dataclass
class RunLayout:
    """Where a run writes: ``data/`` (parquet output), ``removed/<step>/``, ``logs/<stage>/``, work files."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    def removed(self, step: str) -> str:
        return str(self.root / "removed" / step)

    def logs(self, stage: str) -> str:
        return str(self.root / "logs" / stage)

    def work(self, name: str) -> str:
        return str(self.root / "work" / name)

    @property
    def errors(self) -> str:
        return str(self.root / "logs" / "input_errors")


def output_record(writer, document) -> dict:
    """The columns of the output parquet shards (a fixed schema, whatever metadata a page had)."""
    metadata = document.metadata
    return {
        "text": document.text,
        "id": document.id,
        "url": metadata.get("url") or "",
        "source": metadata.get("file_path") or "",
        "language": metadata.get("language") or "",
        "language_score": float(metadata.get("language_score") or 0.0),
    }


def _exclusion_writer(layout: RunLayout, config: WebPipelineConfig, step: str):
    return JsonlWriter(layout.removed(step), compression=None) if config.keep_dropped else None


#: Blocks that drop documents, by step name; each can keep what it drops (``exclusion_writer``).
DROPPING_BLOCKS = {
    "url_filter": UrlBlocklistFilter,
    "extract": HtmlToText,
    "language": LocalLanguageFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4": C4QualityFilter,
    "fineweb_quality": FineWebQualityFilter,
}


def build_step(name: str, params: dict, layout: RunLayout, config: WebPipelineConfig):
    """One configured pipeline block (``minhash`` excepted: it spans stages)."""
    if name == "pii":
        return PIIRemover(**params)
    if name not in DROPPING_BLOCKS:
        raise InvalidValue(f"unknown pipeline step {name!r}")
    return DROPPING_BLOCKS[name](exclusion_writer=_exclusion_writer(layout, config, name), **params)


def build_stages(input_path: str, output_dir: str | Path, config: WebPipelineConfig, tasks: int = 1,
                 limit: int = -1) -> list[tuple[str, list, int]]:
    """The pipeline's stages as (name, datatrove steps, number of tasks)."""
    layout = RunLayout(Path(output_dir))
    data_folder, glob_pattern = split_input(input_path)
    reader = WebPageReader(data_folder, glob_pattern=glob_pattern, errors_folder=layout.errors, limit=limit)
    names = config.names
    split = names.index("minhash") if "minhash" in names else len(names)
    before = [build_step(name, config.params(name), layout, config) for name in names[:split]]
    after = [build_step(name, config.params(name), layout, config) for name in names[split + 1:]]
    output = ParquetWriter(str(layout.data), output_filename="${rank}.parquet", adapter=output_record)
    if split == len(names):
        return [("filter", [reader, *before, output], tasks)]

    params = config.params("minhash")
    minhash = MinhashConfig(hash_config=HashConfig(precision=64), n_grams=params["n_grams"],
                            num_buckets=params["num_buckets"], hashes_per_bucket=params["hashes_per_bucket"])
    filtered = layout.work("filtered")
    signatures, buckets, clusters = layout.work("signatures"), layout.work("buckets"), layout.work("remove_ids")
    return [
        ("filter", [reader, *before, JsonlWriter(filtered, output_filename="${rank}.jsonl.gz")], tasks),
        ("minhash_signatures", [JsonlReader(filtered), MinhashDedupSignature(signatures, config=minhash)], tasks),
        ("minhash_buckets", [MinhashDedupBuckets(signatures, buckets, config=minhash)], minhash.num_buckets),
        ("minhash_clusters", [MinhashDedupCluster(buckets, clusters, config=minhash)], 1),
        ("dedup", [JsonlReader(filtered),
                   NearDuplicateFilter(clusters, exclusion_writer=_exclusion_writer(layout, config, "minhash")),
                   *after, output], tasks),
    ]


def make_executors(stages, output_dir: str | Path, executor: str = "local", workers: int = 1,
                   executor_options: dict | None = None) -> list:
    """Chain the stages on datatrove's Local, Slurm or Ray executor (``executor_options`` go to its constructor)."""
    if executor not in EXECUTORS:
        raise InvalidValue(f"unknown executor {executor!r}; choose one of {EXECUTORS}")
    layout = RunLayout(Path(output_dir))
    options = dict(executor_options or {})
    executors, previous = [], None
    for name, pipeline, tasks in stages:
        common = dict(pipeline=pipeline, tasks=tasks, logging_dir=layout.logs(name), depends=previous)
        if executor == "local":
            from datatrove.executor import LocalPipelineExecutor

            current = LocalPipelineExecutor(workers=min(workers, tasks), **common, **options)
        elif executor == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            current = SlurmPipelineExecutor(job_name=f"chatforge-{name}", **common, **options)
        else:
            from datatrove.executor import RayPipelineExecutor

            current = RayPipelineExecutor(workers=min(workers, tasks), **common, **options)
        executors.append(current)
        previous = current
    return executors


def run_web_pipeline(input_path: str, output_dir: str | Path, config: WebPipelineConfig | None = None,
                     executor: str = "local", workers: int = 1, tasks: int | None = None,
                     executor_options: dict | None = None, limit: int = -1) -> dict:
    """Run every stage (finished tasks are skipped), then write ``stats.json`` and the report."""
    from .report import collect_stats, write_report

    config = config or WebPipelineConfig()
    if "://" not in input_path and not glob.glob(input_path):
        raise NotFound(f"{input_path}: no such file, folder or matching files")
    stages = build_stages(input_path, output_dir, config, tasks=tasks or workers, limit=limit)
    executors = make_executors(stages, output_dir, executor, workers, executor_options)
    executors[-1].run()  # runs the chain through `depends`
    if executor != "local":
        return {}
    stats = collect_stats(output_dir, [name for name, _, _ in stages], config)
    Path(output_dir, "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
    write_report(output_dir, stats)
    return stats
