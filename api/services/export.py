"""An order's results as files to take away: JSON Lines or CSV of metadata and extracted values, a ZIP of
the pages. Each is a generator of chunks that reads the store 100 results at a time, so an export of any
size holds one batch in memory (plus, for a ZIP, its directory: about 100 bytes per page)."""

import csv
import io
import json
import mimetypes
import zipfile
from collections.abc import Iterator
from datetime import datetime

from core.storage import Observation, Order, Result, Store

_BATCH = 100
COLUMNS = ["n", "key", "fetched_at", "stored_at", "status", "final_url", "body_size", "truncated", "sha256",
           "elapsed_ms", "error", "error_text", "headers", "extracted", "changed", "previous_n", "validation"]
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8", "zip": "application/zip"}
_EXTENSIONS = {"text/html": ".html", "application/json": ".json", "text/plain": ".txt", "application/xml": ".xml",
               "text/xml": ".xml", "text/csv": ".csv", "application/pdf": ".pdf"}


def results(store: Store, order: Order, since: datetime | None,
            until: datetime | None) -> Iterator[tuple[Result, Observation | None]]:
    """The order's results fetched in [since, until), by n, each with its observation (if observed)."""
    after = 0
    while batch := store.list_results(order.id, after, _BATCH):
        seen = {o.n: o for o in store.list_observations(order.id, after, batch[-1].n - after)}
        for r in batch:
            if (since is None or r.fetched_at >= since) and (until is None or r.fetched_at < until):
                yield r, seen.get(r.n)
        after = batch[-1].n


def row(r: Result, obs: Observation | None) -> dict[str, object]:
    return {"n": r.n, "key": r.job_key, "fetched_at": r.fetched_at.isoformat(), "stored_at": r.stored_at.isoformat(),
            "status": r.status, "final_url": r.final_url, "body_size": r.body_size, "truncated": r.truncated,
            "sha256": r.sha256, "elapsed_ms": r.elapsed_ms, "error": r.error, "error_text": r.error_text,
            "headers": r.headers, "extracted": obs.value if obs else None,
            "changed": obs.changed if obs and obs.valid else None, "previous_n": obs.previous_n if obs else None,
            "validation": r.validation.value}


def jsonl(rows: Iterator[tuple[Result, Observation | None]]) -> Iterator[bytes]:
    for r, obs in rows:
        yield json.dumps(row(r, obs), ensure_ascii=False).encode() + b"\n"


def csv_chunks(rows: Iterator[tuple[Result, Observation | None]]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS)
    writer.writeheader()
    for r, obs in rows:
        writer.writerow(row(r, obs) | {"headers": json.dumps(r.headers, ensure_ascii=False)})
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def file_name(r: Result) -> str:
    """`<n>-<fetched_at>.<ext>`, the name the result client gives the page too."""
    content_type = next((v for k, v in r.headers.items() if k.lower() == "content-type"), "")
    mime = content_type.split(";", 1)[0].strip().lower()
    ext = _EXTENSIONS.get(mime) or (mimetypes.guess_extension(mime) if mime else None) or ".bin"
    return f"{r.n:06d}-{r.fetched_at.strftime('%Y%m%dT%H%M%S%fZ')}{ext}"


class _Sink(io.RawIOBase):
    """A write-only, unseekable file: zipfile then streams (data descriptors after each member)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.chunks.append(bytes(data))
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written

    def drain(self) -> bytes:
        out, self.chunks = b"".join(self.chunks), []
        return out


def zip_chunks(rows: Iterator[tuple[Result, Observation | None]]) -> Iterator[bytes]:
    """The pages (those with a body) and, with an extraction, each extracted value as `<name>.extract.txt`."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for r, obs in rows:
            if r.body_size or r.error is None:
                zf.writestr(file_name(r), r.body)
            if obs is not None and obs.value is not None:
                zf.writestr(file_name(r).rsplit(".", 1)[0] + ".extract.txt", obs.value)
            yield sink.drain()
    yield sink.drain()
