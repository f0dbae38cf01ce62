"""Pipeline blocks that datatrove lacks or that need a local twist; each counts what it drops and why."""

import contextlib

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashDedupFilter
from datatrove.pipeline.extractors.base import ExtractorSandbox
from datatrove.pipeline.filters import LanguageFilter, URLFilter
from datatrove.pipeline.formatters.pii import PIIFormatter, PIIReplacer
from datatrove.utils.lid import FT176LID
from datatrove.utils.typeshelper import StatHints
from tldextract import TLDExtract

from ...errors import InvalidValue
from .. import EMBEDDED_DIR

#: fastText lid.176 (quantised), shipped so that language ID works offline.
LID176_PATH = EMBEDDED_DIR / "lid.176.ftz"


#: A page extracted once before the sandbox starts (its warm-up counts against the per-page timeout).
WARM_UP_PAGE = "<html><body><article><p>" + "A warm-up paragraph of plain words. " * 8 + "</p></article></body></html>"


class HtmlToText(PipelineStep):
    """Extract the main text of HTML documents; documents that are already text pass through.

    ``engine="trafilatura"`` uses FineWeb's settings (``favour_precision=True``, deduplication);
    ``engine="resiliparse"`` is the fast option (main-content extraction, many times faster).
    Each page runs in datatrove's sandboxed subprocess with a per-page ``timeout``.
    """

    name = "⛏ Extract"
    type = "🛢 - EXTRAC"

    def __init__(self, engine: str = "trafilatura", timeout: float = 1.0, exclusion_writer=None):
        super().__init__()
        self.exclusion_writer = exclusion_writer
        if engine not in ("trafilatura", "resiliparse"):
            raise InvalidValue(f"unknown extraction engine {engine!r}; use 'trafilatura' or 'resiliparse'")
        self.engine = engine
        self.timeout = timeout

    def extract(self, html: str) -> str:
        if self.engine == "trafilatura":
            from trafilatura import extract

            return extract(html, favor_precision=True, include_comments=False, deduplicate=True) or ""
        from resiliparse.extract.html2text import extract_plain_text

        return extract_plain_text(html, main_content=True, alt_texts=False, links=False, list_bullets=True)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        dropped_writer = self.exclusion_writer or contextlib.nullcontext()
        self.extract(WARM_UP_PAGE)  # loads the engine here, so the sandbox forked below starts within its timeout
        with ExtractorSandbox(timeout=self.timeout, warmup_text="") as sandbox, dropped_writer as writer:
            for doc in data:
                self.stat_update(StatHints.total)
                reason = self._extract_in_place(doc, sandbox) if doc.metadata.get("format") != "text" else None
                if reason is None and doc.text.strip():
                    self.stat_update(StatHints.forwarded)
                    self.update_doc_stats(doc)
                    yield doc
                    continue
                self.stat_update(StatHints.dropped)
                self.stat_update(f"dropped_{reason or 'no_text'}")
                if writer is not None:
                    doc.metadata["filter_reason"] = reason or "no_text"
                    writer.write(doc, rank)

    def _extract_in_place(self, doc: Document, sandbox: ExtractorSandbox) -> str | None:
        """Replace the HTML by its text; the reason it failed, or None."""
        with self.track_time():
            try:
                doc.text = sandbox.process_document(doc.text, self.extract)
            except TimeoutError:
                return "timeout"
            except EOFError:
                return "broken_process"
            except Exception:  # a page that breaks the extractor is dropped, not fatal
                return "extraction_error"
        doc.metadata["format"] = "text"
        return None


class UrlBlocklistFilter(URLFilter):
    """datatrove's URL filter (blocklisted domains, URLs and words); documents without a URL pass. Domains are
    split by tldextract's bundled public-suffix list, never a downloaded one: the same split on every machine, and
    no download attempt (offline, each fails with long tracebacks before the bundled list is used)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tldextractor = TLDExtract(suffix_list_urls=())

    def filter(self, document: Document) -> bool | tuple[bool, str]:
        if not document.metadata.get("url"):
            return True
        return super().filter(document)


class _LocalFT176(FT176LID):
    """fastText lid.176 read from a local file instead of downloaded."""

    def __init__(self, model_path: str, languages: list[str] | None):
        super().__init__(languages)
        self.model_path = model_path

    @property
    def model(self):
        if self._model is None:
            from fasttext.FastText import _FastText

            self._model = _FastText(self.model_path)
        return self._model


class LocalLanguageFilter(LanguageFilter):
    """Keep documents whose language score for one of ``languages`` exceeds ``language_threshold``.

    Uses fastText lid.176 from ``model_path`` (default: the copy shipped with chatforge).
    """

    def __init__(self, languages=("en",), language_threshold: float = 0.65, model_path: str | None = None,
                 exclusion_writer=None):
        super().__init__(list(languages), language_threshold, exclusion_writer=exclusion_writer)
        self.model = _LocalFT176(str(model_path or LID176_PATH), list(languages))


# US social security numbers (area 001-899 but not 666, group 01-99, serial 0001-9999) and North American
# phone numbers in their usual spellings: (555) 123-4567, 555-123-4567, 555.123.4567, +1 555 123 4567.
SSN_PATTERN = r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"
PHONE_PATTERN = r"(?<![\w+])(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}\b"


class CountsKeptText:
    """Mixin: also record the length of every document the block passes on (``doc_len``), which
    datatrove's formatters and dedup filter leave out, so the funnel can count characters."""

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in super().run(data, rank, world_size):
            self.update_doc_stats(doc)
            yield doc


class NearDuplicateFilter(CountsKeptText, MinhashDedupFilter):
    """datatrove's MinHash filter (drops the documents the clustering stage marked as duplicates)."""


class PIIRemover(CountsKeptText, PIIFormatter):
    """datatrove's PII formatter (emails, public IPs) plus US social security and phone numbers."""

    def __init__(self, remove_ssns: bool = True, remove_phones: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.replacers = []
        if remove_ssns:
            self.replacers.append(PIIReplacer(SSN_PATTERN, "000-00-0000"))
        if remove_phones:
            self.replacers.append(PIIReplacer(PHONE_PATTERN, "555-0100"))

    def format(self, text: str) -> str:
        text = super().format(text)
        for replacer in self.replacers:
            text = replacer.replace(text)
        return text


__all__ = [
    "HtmlToText",
    "LID176_PATH",
    "LocalLanguageFilter",
    "NearDuplicateFilter",
    "PIIRemover",
    "UrlBlocklistFilter",
]
