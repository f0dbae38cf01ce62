"""Documents per CPU-second of the web-text pipeline against datatrove's own FineWeb chain, same input, same run.

Three chains see copies of the same documents (the sample corpus' web pages, repeated):
  reference  datatrove blocks configured as in FineWeb's processing script (Trafilatura extractor)
  fineweb    chatforge's ``fineweb`` preset (trafilatura, FineWeb settings)
  fast       chatforge's ``fast`` preset (resiliparse extraction)
up to the filters (MinHash and PII excluded: they run on what the filters keep). CPU time includes the
extraction subprocesses. Also prints the share of the ground-truth must-pass pages each chain keeps, and the
extraction quality (word-level precision/recall/F1) on pages with reference text.

    python bench/data_throughput.py [--samples runs/samples] [--repeat 3]
"""

import argparse
import copy
import json
import resource
import shutil
import tempfile
from pathlib import Path

from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    URLFilter,
)

from chatforge.data.samples import build_samples
from chatforge.data.web.config import WebPipelineConfig
from chatforge.data.web.pipeline import RunLayout, build_step
from chatforge.data.web.quality import extraction_quality, page_pairs
from chatforge.data.web.readers import WebPageReader
from chatforge.data.web.steps import LocalLanguageFilter


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def reference_chain() -> list:
    """FineWeb's first stage with datatrove's blocks (language ID from the local lid.176 model)."""
    return [URLFilter(), Trafilatura(favour_precision=True, timeout=1.0), LocalLanguageFilter(),
            GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False),
            FineWebQualityFilter()]


def chatforge_chain(preset: str, work: Path) -> list:
    config = WebPipelineConfig.from_preset(preset, keep_dropped=False)
    layout = RunLayout(work)
    return [build_step(name, config.params(name), layout, config) for name in config.names
            if name not in ("minhash", "pii")]


def run_chain(steps: list, documents: list) -> tuple[list, float]:
    # datatrove's URL filter asserts a URL; pages read from files have none, so give them their path.
    for doc in documents:
        doc.metadata.setdefault("url", f"https://example.org/{doc.id}")
    start = cpu_seconds()
    stream = iter(documents)
    for step in steps:
        stream = step.run(stream, 0, 1)
    kept = list(stream)
    return kept, cpu_seconds() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", default=None, help="sample corpus folder (built if missing)")
    parser.add_argument("--repeat", type=int, default=3, help="feed the pages this many times")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chatforge-bench-"))
    samples = Path(args.samples or work / "samples")
    build_samples(samples)
    pages = list(WebPageReader(str(samples / "web")).run())
    expected = {json.loads(line)["id"]: json.loads(line)["expect"]
                for line in (samples / "reference/ground_truth/expected.jsonl").read_text().splitlines()}
    must_pass = {doc_id for doc_id, fate in expected.items() if fate in ("keep", "minhash")}

    results = {}
    for name in ("reference", "fineweb", "fast"):
        steps = reference_chain() if name == "reference" else chatforge_chain(name, work / name)
        documents = [copy.deepcopy(doc) for _ in range(args.repeat) for doc in pages]
        kept, seconds = run_chain(steps, documents)
        kept_ids = {doc.id for doc in kept}
        results[name] = {
            "documents": len(documents),
            "cpu_seconds": round(seconds, 2),
            "docs_per_cpu_second": round(len(documents) / seconds, 1),
            "kept": len(kept),
            "must_pass_retention": round(len(must_pass & kept_ids) / len(must_pass), 3),
        }
    for name in ("fineweb", "fast"):
        results[name]["speed_vs_reference"] = round(
            results[name]["docs_per_cpu_second"] / results["reference"]["docs_per_cpu_second"], 2)
    pairs = page_pairs(samples / "web/python-docs", samples / "reference/python-docs")
    results["extraction_quality"] = {engine: {key: round(value, 3) for key, value in scores.items()}
                                     for engine, scores in extraction_quality(pairs).items()}
    print(json.dumps(results, indent=2))
    for name in ("fineweb", "fast"):
        r = results[name]
        print(f"{name}: {r['docs_per_cpu_second']} docs/CPU-s = {r['speed_vs_reference']}x datatrove's FineWeb chain "
              f"({results['reference']['docs_per_cpu_second']}); must-pass retention {r['must_pass_retention']} "
              f"vs {results['reference']['must_pass_retention']}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
