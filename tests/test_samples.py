import json
import shutil

import pytest

from chatforge.data.samples import build_samples
from chatforge.data.text_sources import iter_documents


def test_samples_without_debian_hold_prose_and_ground_truth(tmp_path):
    summary = build_samples(tmp_path / "samples", skip_debian=True)
    assert set(summary) == {"prose/wikipedia.jsonl", "web/ground_truth"}
    assert all(info["license"] for info in summary.values())
    assert len(list(iter_documents([str(tmp_path / "samples/prose/wikipedia.jsonl")]))) == 1000
    expected = (tmp_path / "samples/reference/ground_truth/expected.jsonl").read_text().splitlines()
    pages = (tmp_path / "samples/web/ground_truth/pages.jsonl").read_text().splitlines()
    assert len(expected) == len(pages)
    assert {"keep", "language", "minhash"} <= {json.loads(line)["expect"] for line in expected}
    assert "| `web/ground_truth` |" in (tmp_path / "samples/SOURCES.md").read_text()


def test_a_finished_sample_folder_is_reused(tmp_path):
    first = build_samples(tmp_path / "samples", skip_debian=True)
    (tmp_path / "samples/prose/wikipedia.jsonl").write_text("changed")
    assert build_samples(tmp_path / "samples", skip_debian=True) == first
    assert (tmp_path / "samples/prose/wikipedia.jsonl").read_text() == "changed"


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="real HTML samples come from Debian packages")
def test_real_html_pages_and_reference_text_from_debian(tmp_path):
    summary = build_samples(tmp_path / "samples")
    assert summary["web/python-docs"]["items"] > 40 and summary["web/handbook"]["items"] > 20
    tutorial = tmp_path / "samples/web/python-docs/tutorial/controlflow.html"
    reference = tmp_path / "samples/reference/python-docs/tutorial/controlflow.txt"
    assert "<html" in tutorial.read_text() and "More Control Flow Tools" in reference.read_text()
    assert len(list((tmp_path / "samples/web/handbook").iterdir())) >= 6  # languages


def test_missing_debian_tools_give_a_clear_error(tmp_path, monkeypatch):
    from chatforge.data.samples import SourceUnavailable

    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get on PATH
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(SourceUnavailable, match="python3.11-doc: apt-get is not available here.*--skip-debian"):
        build_samples(tmp_path / "samples")
    assert not (tmp_path / "samples").exists()


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="reference pages come from Debian packages")
def test_both_extractors_recover_the_reference_text_of_real_pages(tmp_path):
    from chatforge.data.web.quality import extraction_quality, page_pairs

    build_samples(tmp_path / "samples")
    samples = tmp_path / "samples"
    pairs = page_pairs(samples / "web/python-docs/tutorial", samples / "reference/python-docs/tutorial")
    assert len(pairs) >= 10
    scores = extraction_quality(pairs)
    for engine in ("trafilatura", "resiliparse"):
        assert scores[engine]["precision"] > 0.85 and scores[engine]["recall"] > 0.8, (engine, scores[engine])


def test_token_scores_on_a_known_case():
    from chatforge.data.web.quality import rest_to_text, token_scores

    reference = rest_to_text(".. _intro:\n\nIntro\n=====\n\nThe :func:`len` function counts items.\n")
    assert reference.split() == ["Intro", "The", "`len`", "function", "counts", "items."]
    scores = token_scores("Home | Intro The len function counts", reference)
    assert scores["precision"] == pytest.approx(5 / 6) and scores["recall"] == pytest.approx(5 / 6)
