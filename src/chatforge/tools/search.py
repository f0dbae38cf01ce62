"""Local "web search": BM25 (bm25s) over a document collection such as the pretraining corpus."""

import json
from collections.abc import Iterable
from pathlib import Path

import bm25s

from ..errors import InvalidValue, NotFound
from ..io import atomic_directory
from .errors import ToolError

DOCUMENTS_FILE = "documents.jsonl"


class SearchIndex:
    """A BM25 index over documents; :meth:`search` returns the best ``k`` with their scores."""

    def __init__(self, documents: list[str], retriever: bm25s.BM25):
        self.documents = documents
        self.retriever = retriever

    @classmethod
    def build(cls, documents: Iterable[str]) -> "SearchIndex":
        documents = [text for text in documents if text.strip()]
        if not documents:
            raise InvalidValue("cannot build a search index over no documents")
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(documents, stopwords="en", show_progress=False), show_progress=False)
        return cls(documents, retriever)

    def save(self, path: str | Path) -> None:
        with atomic_directory(path) as tmp_dir:
            self.retriever.save(tmp_dir / "bm25")
            with open(tmp_dir / DOCUMENTS_FILE, "w", encoding="utf-8") as handle:
                for text in self.documents:
                    handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "SearchIndex":
        path = Path(path)
        if not (path / DOCUMENTS_FILE).exists():
            raise NotFound(f"{path}: not a search index (no {DOCUMENTS_FILE}); build one with "
                           "`chatforge tools index`")
        with open(path / DOCUMENTS_FILE, encoding="utf-8") as handle:
            documents = [json.loads(line)["text"] for line in handle]
        return cls(documents, bm25s.BM25.load(path / "bm25"))

    def search(self, query: str, k: int = 3) -> list[tuple[float, str]]:
        """The ``k`` best-matching documents with a positive score, best first."""
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.vocab:
            return []
        k = min(k, len(self.documents))
        indices, scores = self.retriever.retrieve(tokens, k=k, show_progress=False)
        return [(float(score), self.documents[int(i)]) for i, score in zip(indices[0], scores[0]) if score > 0]


def search_tool(index: SearchIndex, k: int = 1, max_chars: int = 300):
    """The search tool over ``index``: the best ``k`` passages, each cut to ``max_chars`` characters."""

    def search(query: str) -> str:
        if not query.strip():
            raise ToolError("search: empty query")
        hits = index.search(query, k=k)
        if not hits:
            raise ToolError(f"search: nothing found for {query.strip()!r}")
        return "\n".join(text if len(text) <= max_chars else text[:max_chars].rsplit(" ", 1)[0] + " …"
                         for _, text in hits)

    return search
