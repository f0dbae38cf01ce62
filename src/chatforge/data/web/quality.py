"""Extraction quality: how much of a page's reference text an extractor recovers, and how much else it adds."""

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ...errors import InvalidValue
from .steps import HtmlToText

_WORD = re.compile(r"\w+")
# reST markup that is not page text: directives/targets/comments, section underlines, role names.
_REST_LINE = re.compile(r"^\s*(\.\. .*|[=\-~^*#\"'`+]{3,})\s*$")
_REST_ROLE = re.compile(r":[\w-]+:(?=`)")


def rest_to_text(source: str) -> str:
    """Plain text of a reStructuredText source, good enough for word-level comparison."""
    lines = [line for line in source.splitlines() if not _REST_LINE.match(line)]
    return _REST_ROLE.sub("", "\n".join(lines))


def token_scores(extracted: str, reference: str) -> dict[str, float]:
    """Word-level precision, recall and F1 of ``extracted`` against ``reference`` (multiset overlap)."""
    got, want = Counter(_WORD.findall(extracted.lower())), Counter(_WORD.findall(reference.lower()))
    overlap = sum((got & want).values())
    precision = overlap / max(sum(got.values()), 1)
    recall = overlap / max(sum(want.values()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def page_pairs(html_root: str | Path, reference_root: str | Path) -> list[tuple[Path, Path]]:
    """(HTML page, reference text) pairs: ``reference_root/<same path>.txt`` for each page that has one."""
    html_root, reference_root = Path(html_root), Path(reference_root)
    pairs = []
    for page in sorted(html_root.rglob("*.html")):
        reference = reference_root / page.relative_to(html_root).with_suffix(".txt")
        if reference.exists():
            pairs.append((page, reference))
    return pairs


def extraction_quality(pairs: Iterable[tuple[Path, Path]], engines=("trafilatura", "resiliparse")) -> dict:
    """Mean precision/recall/F1 per extraction engine over the pages (reST references converted to text)."""
    pairs = list(pairs)
    if not pairs:
        raise InvalidValue("no (page, reference) pairs to score")
    results = {}
    for engine in engines:
        extractor = HtmlToText(engine=engine)
        scores = [token_scores(extractor.extract(page.read_text(encoding="utf-8")),
                               rest_to_text(reference.read_text(encoding="utf-8"))) for page, reference in pairs]
        results[engine] = {key: sum(score[key] for score in scores) / len(scores)
                           for key in ("precision", "recall", "f1")} | {"pages": len(scores)}
    return results
