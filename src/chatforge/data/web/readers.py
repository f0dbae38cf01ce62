"""Read web pages from HTML files, WARC/WET files and JSONL/parquet records, never letting one bad input stop a run.

Every document gets ``metadata["format"]`` (``"html"`` or ``"text"``) and, where known, ``metadata["url"]``.
HTML files in another encoding than UTF-8 are decoded with the charset their ``<meta>`` declares, else the one
detected from their bytes.
A file or record that cannot be read is skipped, counted under ``input_errors`` and logged, with its file
and record, to ``<errors_folder>/<rank>.jsonl`` (``logs/input_errors/`` of a pipeline run).
"""

import codecs
import gzip
import json
import os
import re
import zlib
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers.base import BaseDiskReader

from ...errors import InvalidValue

HTML_SUFFIXES = (".html", ".htm")
WARC_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz", ".wet", ".wet.gz")  # Common Crawl: *.warc.wet.gz
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
WEB_SUFFIXES = HTML_SUFFIXES + WARC_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
DECLARED_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([-\w.:]+)""", re.IGNORECASE)


def decode_page(raw: bytes) -> str:
    """An HTML page's text: UTF-8 (or UTF-16 with a byte-order mark), else the charset its ``<meta>`` declares,
    else the encoding detected from its bytes. Raises ValueError when none of them decodes it."""
    from trafilatura.utils import detect_encoding

    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    if b"\x00" in raw[:4096]:
        raise InvalidValue("binary content, not an HTML page")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        not_utf8 = error.start
    declared = DECLARED_CHARSET.search(raw[:4096])
    candidates = [declared.group(1).decode("ascii")] if declared else []
    for encoding in candidates + detect_encoding(raw):
        try:
            return raw.decode(encoding)
        except (LookupError, UnicodeDecodeError):
            continue
    raise InvalidValue(f"not valid UTF-8 at byte {not_utf8}, and no declared or detected encoding decodes it")


def split_input(path: str) -> tuple[str, str | None]:
    """A data folder and glob pattern for datatrove readers from a folder, a file or a glob (local or fsspec URL)."""
    protocol, separator, rest = path.partition("://") if "://" in path else ("", "", path)
    segments = rest.split("/")
    magic = [i for i, segment in enumerate(segments) if any(char in segment for char in "*?[")]
    if magic:
        folder, pattern = "/".join(segments[:magic[0]]), "/".join(segments[magic[0]:])
    elif rest.lower().endswith(WEB_SUFFIXES) and not os.path.isdir(path):
        folder, pattern = "/".join(segments[:-1]), segments[-1]
    else:
        return path, None
    if not folder:
        folder = "/" if rest.startswith("/") else "."
    return protocol + separator + folder, pattern


class WebPageReader(BaseDiskReader):
    """One reader for every web input: ``.html``/``.htm`` files (one page each), WARC records
    (``response`` records with an HTML payload), WET records (``conversion`` records: text already extracted),
    and JSONL/parquet records with an ``html`` or ``text`` field and an optional ``url``. Files with other
    suffixes are ignored.

    Args:
        data_folder: folder (local or fsspec) to read.
        glob_pattern: only read files matching it (relative to ``data_folder``).
        errors_folder: where ``<rank>.jsonl`` files describing unreadable inputs are written.
        max_bytes: pages or records larger than this are skipped as errors (default 10 MB).
    """

    name = "🕸 Web pages"

    def __init__(self, data_folder, glob_pattern: str | None = None, errors_folder: str | None = None,
                 max_bytes: int = 10_000_000, limit: int = -1, doc_progress: bool = False):
        super().__init__(data_folder, glob_pattern=glob_pattern, limit=limit, doc_progress=doc_progress,
                         recursive=True)
        self.errors_folder = errors_folder
        self.max_bytes = max_bytes
        self._rank = 0

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self._rank = rank
        if self.errors_folder is not None:  # a task that runs again starts its error list afresh
            Path(self.errors_folder, f"{rank:05d}.jsonl").unlink(missing_ok=True)
        yield from super().run(data, rank, world_size)

    def read_file(self, filepath: str) -> DocumentsPipeline:
        name = filepath.lower()
        if not name.endswith(WEB_SUFFIXES):
            return
        try:
            if name.endswith(HTML_SUFFIXES):
                yield from self._read_html(filepath)
            elif name.endswith(WARC_SUFFIXES):
                yield from self._read_warc(filepath)
            elif name.endswith(PARQUET_SUFFIXES):
                yield from self._read_parquet(filepath)
            else:
                yield from self._read_jsonl(filepath)
        except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as error:
            self._error(filepath, None, error)

    def _read_html(self, filepath: str) -> DocumentsPipeline:
        with self.data_folder.open(filepath, "rb") as handle:
            raw = handle.read(self.max_bytes + 1)
        if len(raw) > self.max_bytes:
            return self._error(filepath, None, ValueError(f"page larger than {self.max_bytes} bytes"))
        if not raw.strip():
            return self._error(filepath, None, ValueError("empty file"))
        try:
            page = decode_page(raw)
        except ValueError as error:  # UnicodeDecodeError included
            return self._error(filepath, None, error)
        yield self._document(page, "html", None, filepath, 0)

    def _read_warc(self, filepath: str) -> DocumentsPipeline:
        from datatrove.pipeline.readers.warc import process_record
        from warcio.archiveiterator import ArchiveIterator

        with self.data_folder.open(filepath, "rb") as handle:
            records = ArchiveIterator(handle)
            index = 0
            while True:
                try:
                    record = next(records)
                except StopIteration:
                    return
                except Exception as error:  # warcio raises many kinds on truncated or corrupt archives
                    return self._error(filepath, index, error)
                try:
                    if record.length is not None and record.length > self.max_bytes:
                        self._error(filepath, index, ValueError(f"record larger than {self.max_bytes} bytes"))
                        continue
                    extracted = process_record(record)
                    record.content_stream().read()  # a record cut short leaves part of its length unread
                    if getattr(record.raw_stream, "limit", 0) > 0:
                        raise EOFError("record truncated (the archive ends inside it)")
                except Exception as error:
                    self._error(filepath, index, error)
                    continue
                finally:
                    index += 1
                if extracted and extracted.get("text"):
                    fmt = "text" if record.rec_type == "conversion" else "html"
                    yield self._document(extracted["text"], fmt, extracted.get("url"), filepath, index - 1,
                                         date=extracted.get("date"))

    def _read_jsonl(self, filepath: str) -> DocumentsPipeline:
        with self.data_folder.open(filepath, "rb", compression="infer") as handle:
            for index, line in enumerate(handle):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    document = self._from_record(record, filepath, index)
                except (ValueError, TypeError) as error:
                    self._error(filepath, index, error)
                    continue
                if document is not None:
                    yield document

    def _read_parquet(self, filepath: str) -> DocumentsPipeline:
        import pyarrow.parquet as pq

        with self.data_folder.open(filepath, "rb") as handle:
            table = pq.ParquetFile(handle)
            index = 0
            for batch in table.iter_batches(batch_size=1000):
                for record in batch.to_pylist():
                    try:
                        document = self._from_record(record, filepath, index)
                    except (ValueError, TypeError) as error:
                        self._error(filepath, index, error)
                        document = None
                    index += 1
                    if document is not None:
                        yield document

    def _from_record(self, record, filepath: str, index: int) -> Document | None:
        if not isinstance(record, dict):
            raise TypeError(f"record is a {type(record).__name__}, not an object")
        for field, fmt in (("html", "html"), ("text", "text")):
            value = record.get(field)
            if value is None:
                continue
            if not isinstance(value, str):
                raise TypeError(f"field {field!r} is a {type(value).__name__}, not a string")
            if len(value) > self.max_bytes:
                raise InvalidValue(f"field {field!r} is larger than {self.max_bytes} characters")
            if not value.strip():
                return None
            return self._document(value, fmt, record.get("url"), filepath, index, id_=record.get("id"))
        raise InvalidValue("record has neither an 'html' nor a 'text' field")

    def _document(self, text: str, fmt: str, url, filepath: str, index: int, id_=None, date=None) -> Document:
        metadata = {"format": fmt, "file_path": filepath, "record": index}
        if url:
            metadata["url"] = url
        if date:
            metadata["date"] = date
        return Document(text=text, id=str(id_) if id_ is not None else f"{filepath}/{index}", metadata=metadata)

    def _error(self, filepath: str, record: int | None, error: Exception) -> None:
        self.stat_update("input_errors")
        if self.errors_folder is None:
            return
        os.makedirs(self.errors_folder, exist_ok=True)
        entry = {"file": filepath, "record": record, "error": f"{type(error).__name__}: {error}"}
        with open(Path(self.errors_folder, f"{self._rank:05d}.jsonl"), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

