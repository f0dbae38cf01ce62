import gzip
import html
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from chatforge.data.web.config import WebPipelineConfig
from chatforge.data.web.ground_truth import (
    PLANTED_PII,
    build_ground_truth,
    write_ground_truth,
)
from chatforge.data.web.pipeline import run_web_pipeline


def fates(run_dir: Path) -> dict[str, str]:
    """Document id -> "keep" or the step whose removed/ folder holds it."""
    where = {}
    for shard in (run_dir / "data").glob("*.parquet"):
        for row in pq.read_table(shard).to_pylist():
            where[row["id"]] = "keep"
    for step_dir in (run_dir / "removed").iterdir():
        for part in step_dir.iterdir():
            for line in part.read_text(encoding="utf-8").splitlines():
                where[json.loads(line)["id"]] = step_dir.name
    return where


def output_texts(run_dir: Path) -> dict[str, str]:
    return {row["id"]: row["text"] for shard in (run_dir / "data").glob("*.parquet")
            for row in pq.read_table(shard).to_pylist()}


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ground_truth")
    write_ground_truth(folder)
    lines = (folder / "expected.jsonl").read_text().splitlines()
    expected = {record["id"]: record for record in map(json.loads, lines)}
    return folder, expected


@pytest.fixture(scope="module")
def fineweb_run(ground_truth, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fineweb_run")
    stats = run_web_pipeline(str(ground_truth[0] / "pages.jsonl"), run_dir, WebPipelineConfig.from_preset("fineweb"))
    return run_dir, stats


def test_every_filter_drops_its_pages_and_keeps_the_good_ones(ground_truth, fineweb_run):
    _, expected = ground_truth
    where = fates(fineweb_run[0])
    assert {doc_id: where.get(doc_id) for doc_id in expected} == {doc_id: e["expect"] for doc_id, e in expected.items()}
    dropping_steps = {e["expect"] for e in expected.values()} - {"keep"}
    assert dropping_steps == set(WebPipelineConfig().names) - {"pii"}  # every filtering step is exercised


def test_planted_pii_is_replaced(ground_truth, fineweb_run):
    _, expected = ground_truth
    texts = output_texts(fineweb_run[0])
    pii_pages = [doc_id for doc_id, e in expected.items() if e.get("pii")]
    assert pii_pages and all(doc_id in texts for doc_id in pii_pages)
    for doc_id in pii_pages:
        for planted in PLANTED_PII.values():
            assert planted not in texts[doc_id]
        assert "email@example.com" in texts[doc_id] and "000-00-0000" in texts[doc_id]
    # Private addresses and ordinary numbers are left alone.
    from chatforge.data.web.steps import PIIRemover
    untouched = "Router 192.168.1.1 served 1,234 users in 2023; ISBN 978-0-306-40615-7."
    assert PIIRemover().format(untouched) == untouched


def _shingles(text: str, n: int = 5) -> set:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_near_duplicates_above_point_eight_jaccard_are_removed(fineweb_run):
    records = {r["id"]: r for r in build_ground_truth()}
    original, copy = (records[i] for i in sorted(i for i in records if i.startswith("neardup")))
    a, b = _shingles(original["html"]), _shingles(copy["html"])
    assert len(a & b) / len(a | b) >= 0.8
    where = fates(fineweb_run[0])
    assert sorted([where[original["id"]], where[copy["id"]]]) == ["keep", "minhash"]


def test_stats_report_and_funnel(fineweb_run):
    run_dir, stats = fineweb_run
    assert json.loads((run_dir / "stats.json").read_text()) == stats
    funnel = stats["funnel"]
    assert [entry["step"] for entry in funnel] == ["input", *WebPipelineConfig().names]
    documents = [entry["documents"] for entry in funnel]
    assert documents == sorted(documents, reverse=True) and documents[-1] == stats["output"]["documents"]
    assert funnel[0]["documents"] == len(build_ground_truth())
    report = (run_dir / "report.md").read_text()
    assert all(f"| {entry['step']} | {entry['documents']:,} |" in report for entry in funnel)
    assert (run_dir / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_loads_with_datasets(fineweb_run):
    from datasets import load_dataset

    dataset = load_dataset("parquet", data_files=str(fineweb_run[0] / "data" / "*.parquet"), split="train")
    assert dataset.num_rows == fineweb_run[1]["output"]["documents"]
    assert {"text", "id", "url", "language", "language_score"} <= set(dataset.column_names)
    assert all(score > 0.65 and lang == "en" for score, lang in zip(dataset["language_score"], dataset["language"]))


def test_rerun_of_a_finished_run_changes_nothing(ground_truth, fineweb_run):
    run_dir, stats = fineweb_run
    before = {p: p.stat().st_mtime_ns for p in (run_dir / "data").iterdir()}
    again = run_web_pipeline(str(ground_truth[0] / "pages.jsonl"), run_dir, WebPipelineConfig.from_preset("fineweb"))
    assert again == stats
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "data").iterdir()} == before


def test_fast_preset_keeps_and_drops_the_same_pages(ground_truth, tmp_path):
    _, expected = ground_truth
    run_web_pipeline(str(ground_truth[0] / "pages.jsonl"), tmp_path, WebPipelineConfig.from_preset("fast"))
    where = fates(tmp_path)
    kept = {doc_id for doc_id, e in expected.items() if e["expect"] == "keep"}
    assert {doc_id for doc_id in expected if where.get(doc_id) == "keep"} == kept


def test_yaml_config_disables_and_reorders_steps(ground_truth, tmp_path):
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text("keep_dropped: true\nsteps:\n  - extract: {engine: resiliparse}\n"
                           "  - language: {languages: [fr, de], language_threshold: 0.5}\n")
    config = WebPipelineConfig.from_yaml(config_file)
    assert config.names == ["extract", "language"] and config.params("language")["languages"] == ["fr", "de"]
    run_web_pipeline(str(ground_truth[0] / "pages.jsonl"), tmp_path / "run", config)
    kept = {doc_id for doc_id, fate in fates(tmp_path / "run").items() if fate == "keep"}
    assert all(doc_id.startswith(("lang-fr", "lang-de")) for doc_id in kept)  # English and Spanish dropped
    assert any(i.startswith("lang-fr") for i in kept) and any(i.startswith("lang-de") for i in kept)


@pytest.mark.parametrize("yaml_text, message", [
    ("steps:\n  - dedupe\n", "unknown pipeline step 'dedupe'"),
    ("steps:\n  - pii\n  - pii\n", "pipeline step 'pii' appears twice"),
    ("preset: slow\n", "unknown preset 'slow'"),
    ("step: [pii]\n", "unknown keys ['step']"),
])
def test_bad_yaml_configs_are_refused_with_the_reason(tmp_path, yaml_text, message):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml_text)
    with pytest.raises(ValueError, match=re.escape(message)):
        WebPipelineConfig.from_yaml(config_file)


def _warc_gz(pages: list[tuple[str, str]]) -> bytes:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    for url, page_html in pages:
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        record = writer.create_warc_record(url, "response", payload=io.BytesIO(page_html.encode()),
                                           http_headers=headers)
        writer.write_record(record)
    return buffer.getvalue()


def test_bad_inputs_are_counted_with_file_and_record_and_the_run_completes(tmp_path):
    good = [r for r in build_ground_truth() if r["id"].startswith("good")][:4]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "good.warc.gz").write_bytes(_warc_gz([(page["url"], page["html"]) for page in good[:2]]))
    archive = _warc_gz([(good[2]["url"], good[2]["html"])] * 3)
    (inputs / "truncated.warc.gz").write_bytes(archive[: len(archive) // 2])
    (inputs / "good.html").write_text(good[3]["html"], encoding="utf-8")
    (inputs / "empty.html").write_bytes(b"")
    (inputs / "binary.htm").write_bytes(bytes(range(256)) * 100)
    with open(inputs / "huge.html", "w") as handle:
        handle.write("<html><body>" + "<p>word </p>" * 4_500_000 + "</body></html>")  # ~50 MB
    (inputs / "records.jsonl").write_text(
        json.dumps({"text": "x " * 10, "url": "https://example.org/a"}) + "\n{not json\n" +
        json.dumps({"body": "no text field"}) + "\n" + json.dumps({"text": 42}) + "\n", encoding="utf-8")
    compressed = gzip.compress("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(2000)).encode())
    (inputs / "truncated.jsonl.gz").write_bytes(compressed[: len(compressed) // 2])

    config = WebPipelineConfig(steps=[("extract", {"engine": "resiliparse"}), ("language", {})])
    stats = run_web_pipeline(str(inputs), tmp_path / "run", config)
    errors = {(Path(e["file"]).name, e["record"]) for e in stats["errors"]}
    assert {("empty.html", None), ("binary.htm", None), ("huge.html", None),
            ("records.jsonl", 1), ("records.jsonl", 2), ("records.jsonl", 3)} <= errors
    assert any(name == "truncated.warc.gz" for name, _ in errors)
    assert any(name == "truncated.jsonl.gz" for name, _ in errors)
    assert stats["input_errors"] == len(stats["errors"]) >= 8
    kept = " ".join(output_texts(tmp_path / "run").values())
    for page in (good[0], good[1], good[3]):  # both records of the intact archive and the good HTML file
        first_sentence = re.search(r"<p>([^<]{40,}?\.)", page["html"]).group(1)
        assert html.unescape(first_sentence) in kept
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Unreadable inputs" in report and "huge.html" in report


def _wet_gz(pages: list[tuple[str, str]]) -> bytes:
    """A Common Crawl WET file: ``conversion`` records holding each page's extracted text."""
    from warcio.warcwriter import WARCWriter

    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    for url, text in pages:
        writer.write_record(writer.create_warc_record(url, "conversion", payload=io.BytesIO(text.encode()),
                                                      warc_content_type="text/plain"))
    return buffer.getvalue()


def test_pages_in_other_encodings_and_wet_records_are_read(tmp_path):
    good = [r for r in build_ground_truth() if r["id"].startswith("good")]
    accented = [page["html"].replace("the ", "thé ") for page in good[:3]]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "declared.html").write_bytes(
        accented[0].replace("<head>", '<head><meta charset="windows-1252">').encode("cp1252"))
    (inputs / "undeclared.html").write_bytes(accented[1].encode("cp1252"))
    (inputs / "utf16.htm").write_bytes(accented[2].encode("utf-16"))
    extracted = ["\n\n".join(map(html.unescape, re.findall(r"<p>([^<]+)</p>", page["html"]))) for page in good[3:5]]
    (inputs / "CC-MAIN-0001.warc.wet.gz").write_bytes(
        _wet_gz([(page["url"], text) for page, text in zip(good[3:5], extracted)]))

    config = WebPipelineConfig(steps=[("extract", {"engine": "resiliparse"}), ("language", {})])
    stats = run_web_pipeline(str(inputs), tmp_path / "run", config)
    assert stats["input_errors"] == 0
    kept = {}
    for doc_id, text in output_texts(tmp_path / "run").items():  # ids are <file>/<record>
        kept.setdefault(Path(doc_id).parent.name, []).append(text)
    for name, page in zip(("declared.html", "undeclared.html", "utf16.htm"), accented):
        sentence = html.unescape(re.search(r"[^.>]+ thé [^.<]+\.", page).group(0).strip())
        assert sentence in kept[name][0]
    assert sorted(kept["CC-MAIN-0001.warc.wet.gz"]) == sorted(extracted)  # WET text skips the HTML extractor


EXTRACT_IN_A_FRESH_PYTHON = """
from datatrove.data import Document
from chatforge.data.web.ground_truth import build_ground_truth
from chatforge.data.web.steps import HtmlToText

pages = [r["html"] for r in build_ground_truth() if r["id"].startswith("good")][:6]
step = HtmlToText("trafilatura", timeout={timeout})
print(len(list(step.run(Document(text=page, id=str(i)) for i, page in enumerate(pages)))), step.stats["total"].total)
"""


def test_a_tight_per_page_timeout_only_drops_slow_pages():
    """The sandboxed extractor starts warm (the engine is loaded before it forks), so its start-up does not eat
    into the per-page timeout: in a Python that has not loaded trafilatura, every ordinary page is extracted."""
    run = subprocess.run([sys.executable, "-c", EXTRACT_IN_A_FRESH_PYTHON.format(timeout=0.2)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["6", "6"]


def test_the_same_stages_go_to_slurm_and_ray_executors(ground_truth, tmp_path):
    from datatrove.executor import RayPipelineExecutor, SlurmPipelineExecutor

    from chatforge.data.web.pipeline import build_stages, make_executors

    stages = build_stages(str(ground_truth[0] / "pages.jsonl"), tmp_path, WebPipelineConfig(), tasks=8)
    slurm = make_executors(stages, tmp_path, "slurm", executor_options={"time": "2:00:00", "partition": "cpu"})
    assert all(isinstance(e, SlurmPipelineExecutor) for e in slurm)
    assert [e.world_size for e in slurm] == [8, 8, 14, 1, 8]  # MinHash buckets run one task per bucket
    assert all(later.depends is earlier for earlier, later in zip(slurm, slurm[1:]))
    ray = make_executors(stages, tmp_path, "ray", workers=4)
    assert all(isinstance(e, RayPipelineExecutor) for e in ray)
    with pytest.raises(ValueError, match="unknown executor 'spark'"):
        make_executors(stages, tmp_path, "spark")


def test_a_killed_run_redoes_only_its_unfinished_tasks(ground_truth, tmp_path):
    lines = (ground_truth[0] / "pages.jsonl").read_text().splitlines(keepends=True)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a.jsonl").write_text("".join(lines[::2]))
    (inputs / "b.jsonl").write_text("".join(lines[1::2]) + "{broken\n")
    config = WebPipelineConfig(steps=[("extract", {"engine": "resiliparse"}), ("language", {})])
    complete = run_web_pipeline(str(inputs), tmp_path / "run", config, tasks=2)
    shards = sorted((tmp_path / "run" / "data").glob("*.parquet"))
    assert len(shards) == 2
    # As if killed while task 1 was writing: no completion marker, a half-written shard.
    (tmp_path / "run" / "logs" / "filter" / "completions" / "00001").unlink()
    shards[1].write_bytes(shards[1].read_bytes()[:100])
    untouched = shards[0].stat().st_mtime_ns
    resumed = run_web_pipeline(str(inputs), tmp_path / "run", config, tasks=2)
    assert shards[0].stat().st_mtime_ns == untouched
    assert resumed["output"] == complete["output"]
    assert resumed["errors"] == complete["errors"] and len(complete["errors"]) == 1
    assert len(output_texts(tmp_path / "run")) == complete["output"]["documents"]


def test_domains_are_split_by_the_bundled_suffix_list_without_a_download(caplog, monkeypatch, tmp_path):
    """The URL filter never fetches the public-suffix list (offline each attempt logs long tracebacks first, and an
    online machine would split by a newer list than another)."""
    import logging

    from chatforge.data.web.steps import UrlBlocklistFilter

    monkeypatch.setenv("TLDEXTRACT_CACHE", str(tmp_path))  # nothing cached from an earlier run
    with caplog.at_level(logging.DEBUG, logger="tldextract"):
        parts = UrlBlocklistFilter().tldextractor("https://news.bbc.co.uk/sport/page.html")
    assert (parts.subdomain, parts.domain, parts.suffix) == ("news", "bbc", "co.uk")
    assert not [record for record in caplog.records if "Public Suffix List" in record.getMessage()]
