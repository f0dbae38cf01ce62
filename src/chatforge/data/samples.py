"""``chatforge data samples``: a small real corpus that needs no network beyond package registries.

    <output>/prose/wikipedia.jsonl            real English prose (shipped with chatforge)
    <output>/web/ground_truth/pages.jsonl     generated pages whose fate per filter is known
    <output>/reference/ground_truth/expected.jsonl   the fate each of those pages must meet
    <output>/web/python-docs/**.html          real English HTML: the Python 3.11 documentation (Debian python3.11-doc)
    <output>/reference/python-docs/**.txt     the reST sources of those pages: reference text for extraction quality
    <output>/web/handbook/<lang>/*.html       real multilingual HTML: the Debian Administrator's Handbook
    <output>/SOURCES.md, sources.json         where each part comes from and its license

A finished folder is reused as is (``.complete`` marker); Debian packages are cached under
``$XDG_CACHE_HOME/chatforge/debian``.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

from ..errors import UserError
from ..io import atomic_directory
from . import EMBEDDED_WIKIPEDIA
from .web.ground_truth import write_ground_truth

COMPLETE_MARKER = ".complete"
PYTHON_DOCS_PAGES = ("tutorial/*.html", "howto/*.html", "faq/*.html", "library/functions.html",
                     "library/stdtypes.html", "library/re.html", "library/json.html", "library/pathlib.html")
HANDBOOK_LANGUAGES = ("en-US", "fr-FR", "de-DE", "es-ES", "it-IT", "pt-BR", "ru-RU", "ja-JP")
HANDBOOK_PAGES = ("apt.html", "basic-configuration.html", "sect.apt-get.html", "packaging-system.html",
                  "sect.debian-development.html", "short-remedies.html")

SOURCES = {
    "prose/wikipedia.jsonl": {
        "what": "1,000 English Wikipedia paragraphs",
        "origin": "evals 3.0.1.post1 (PyPI), registry/data/schelling_point/wikipedia_5.jsonl",
        "license": "CC BY-SA 4.0 (Wikipedia contributors)",
    },
    "web/ground_truth": {
        "what": "generated web pages built to pass or fail each filter (real Wikipedia paragraphs as content)",
        "origin": "chatforge.data.web.ground_truth",
        "license": "CC BY-SA 4.0 (the Wikipedia text); the page scaffolding is chatforge's (Apache-2.0)",
    },
    "web/python-docs": {
        "what": "Python 3.11 documentation pages (Sphinx HTML) and their reST sources",
        "origin": "Debian package python3.11-doc",
        "license": "PSF License Agreement for Python 3.11 documentation",
    },
    "web/handbook": {
        "what": f"The Debian Administrator's Handbook, up to {len(HANDBOOK_PAGES)} chapters in "
                f"{len(HANDBOOK_LANGUAGES)} languages",
        "origin": "Debian package debian-handbook",
        "license": "GPL-2.0+ or CC BY-SA 3.0",
    },
}


class SourceUnavailable(UserError, RuntimeError):
    """A sample source could not be fetched; the message says which and how to do without it."""


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chatforge" / "debian"


def fetch_debian_package(name: str) -> Path:
    """Download a Debian package with apt-get (cached) and unpack it; the unpacked root."""
    cache = _cache_dir()
    root = cache / name
    if (root / COMPLETE_MARKER).exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    hint = "pass --skip-debian to build the samples without the real HTML pages"
    try:
        subprocess.run(["apt-get", "download", name], cwd=cache, check=True, capture_output=True, text=True)
        debs = sorted(cache.glob(f"{name}_*.deb"))
        if not debs:
            raise SourceUnavailable(f"apt-get download {name} produced no .deb in {cache}; {hint}")
        with atomic_directory(root) as tmp_dir:
            subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(tmp_dir)], check=True, capture_output=True, text=True)
            (tmp_dir / COMPLETE_MARKER).touch()
    except FileNotFoundError as error:
        raise SourceUnavailable(f"Debian package {name}: {error.filename} is not available here (it needs a "
                                f"Debian/Ubuntu system); {hint}") from error
    except subprocess.CalledProcessError as error:
        raise SourceUnavailable(f"Debian package {name}: `{' '.join(error.cmd)}` failed: "
                                f"{(error.stderr or '').strip()[-500:]}; {hint}") from error
    return root


def _copy_python_docs(target: Path) -> int:
    html_root = fetch_debian_package("python3.11-doc") / "usr/share/doc/python3.11/html"
    pages = sorted({page for pattern in PYTHON_DOCS_PAGES for page in html_root.glob(pattern)})
    for page in pages:
        relative = page.relative_to(html_root)
        (target / "web/python-docs" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(page, target / "web/python-docs" / relative)
        source = html_root / "_sources" / relative.with_suffix(".rst.txt")
        if source.exists():
            reference = target / "reference/python-docs" / relative.with_suffix(".txt")
            reference.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, reference)
    return len(pages)


def _copy_handbook(target: Path) -> int:
    html_root = fetch_debian_package("debian-handbook") / "usr/share/doc/debian-handbook/html"
    copied = 0
    for language in HANDBOOK_LANGUAGES:
        for page in HANDBOOK_PAGES:
            source = html_root / language / page
            if source.exists():
                destination = target / "web/handbook" / language / page
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)
                copied += 1
    return copied


def build_samples(output_dir: str | Path, skip_debian: bool = False) -> dict:
    """Build the sample corpus (or return the summary of a finished one)."""
    output_dir = Path(output_dir)
    summary_path = output_dir / "sources.json"
    if (output_dir / COMPLETE_MARKER).exists():
        return json.loads(summary_path.read_text())
    with atomic_directory(output_dir) as tmp_dir:
        (tmp_dir / "prose").mkdir()
        shutil.copyfile(EMBEDDED_WIKIPEDIA, tmp_dir / "prose/wikipedia.jsonl")
        pages = write_ground_truth(tmp_dir / "web/ground_truth", expected_dir=tmp_dir / "reference/ground_truth")
        counts = {"prose/wikipedia.jsonl": 1000, "web/ground_truth": pages}
        if not skip_debian:
            counts["web/python-docs"] = _copy_python_docs(tmp_dir)
            counts["web/handbook"] = _copy_handbook(tmp_dir)
        summary = {part: {**SOURCES[part], "items": count} for part, count in counts.items()}
        (tmp_dir / "sources.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        lines = ["# Sample corpus", "", "| part | what | items | origin | license |", "|---|---|---:|---|---|"]
        lines += [f"| `{part}` | {s['what']} | {s['items']} | {s['origin']} | {s['license']} |"
                  for part, s in summary.items()]
        (tmp_dir / "SOURCES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp_dir / COMPLETE_MARKER).touch()
    return summary
