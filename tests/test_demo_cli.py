import json
import re
import subprocess
import sys

import pytest

from chatforge.data import EMBEDDED_WIKIPEDIA, iter_documents


@pytest.mark.slow
def test_core_demo_command_learns_english(tmp_path):
    """`chatforge demo` (what `make demo` runs): loss well under the unigram baseline, samples made of real words."""
    run = subprocess.run([sys.executable, "-m", "chatforge.cli", "demo", "--output", str(tmp_path)],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"model in {tmp_path / 'model'}" in run.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["val_loss_after"] < summary["unigram_val_loss"] - 0.8
    documents = iter_documents([str(EMBEDDED_WIKIPEDIA)])
    corpus_words = {word.lower() for doc in documents for word in re.findall(r"[A-Za-z]+", doc)}
    sampled = [w.lower() for text in summary["samples"].values() for w in re.findall(r"[A-Za-z]+", text)]
    assert len(sampled) >= 10
    assert sum(word in corpus_words for word in sampled) / len(sampled) >= 0.8
