"""Writing results to disk: atomically, once per repetition, with a cursor to resume from.

Layout: `<out>/<order_id>/<n:06d>-<fetched_at>.<ext>` (the body, extension from its content
type) and `<same stem>.meta.json` (status, final URL, headers kept, hash, miner, timings,
error, whether it changed); with the order's extraction `<same stem>.extract.txt` holds the
extracted value, and (with `diffs`, as `--changes` writes) a change's `<same stem>.diff` its
unified diff from the previous valid result. The sidecar is renamed into place last, so its
presence means the result is complete; a result whose sidecar exists is never written again.
`<out>/.crawlcoin/cursor.json` holds, per order, the highest n written, saved after every result.
"""

import json
import mimetypes
import os
import tempfile
from pathlib import Path

from core.protocol.results import ResultMessage

_EXTENSIONS = {"text/html": ".html", "application/json": ".json", "text/plain": ".txt", "application/xml": ".xml",
               "text/xml": ".xml", "text/csv": ".csv", "application/pdf": ".pdf"}


def extension(content_type: str | None) -> str:
    if not content_type:
        return ".bin"
    mime = content_type.split(";", 1)[0].strip().lower()
    return _EXTENSIONS.get(mime) or mimetypes.guess_extension(mime) or ".bin"


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, rename into place: readers see all or nothing."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultFiles:
    def __init__(self, out: Path, diffs: bool = False) -> None:
        self.out = out
        self.diffs = diffs
        self._cursor_path = out / ".crawlcoin" / "cursor.json"
        self._cursor_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.cursors: dict[str, int] = json.loads(self._cursor_path.read_text())
        except (FileNotFoundError, ValueError):
            self.cursors = {}
        self._swept: set[Path] = set()

    def _folder(self, order_id: str) -> Path:
        folder = self.out / order_id
        if folder not in self._swept:
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(".tmp-*"):  # left by a client killed mid-write
                stale.unlink(missing_ok=True)
            self._swept.add(folder)
        return folder

    def stem(self, msg: ResultMessage) -> str:
        return f"{msg.n:06d}-{msg.fetched_at.strftime('%Y%m%dT%H%M%S%fZ')}"

    def written(self, order_id: str, n: int) -> Path | None:
        folder = self.out / order_id
        matches = sorted(folder.glob(f"{n:06d}-*.meta.json")) if folder.is_dir() else []
        return matches[0] if matches else None

    def write(self, msg: ResultMessage, body: bytes) -> tuple[Path, bool]:
        """Write the result unless it is on disk already; returns (sidecar path, newly written)."""
        existing = self.written(msg.order_id, msg.n)
        if existing is not None:
            return existing, False
        folder = self._folder(msg.order_id)
        stem = self.stem(msg)
        content_type = next((v for k, v in msg.headers.items() if k.lower() == "content-type"), None)
        files = {}
        if msg.error is None or body:
            body_path = folder / f"{stem}{extension(content_type)}"
            atomic_write(body_path, body)
            files["body"] = body_path.name
        for suffix, text in ((".extract.txt", msg.extracted), (".diff", msg.diff if self.diffs else None)):
            if text is not None:
                atomic_write(folder / f"{stem}{suffix}", text.encode())
                files[suffix.split(".")[1]] = f"{stem}{suffix}"
        meta = msg.model_dump(mode="json", exclude={"extracted", "diff"}) | files
        sidecar = folder / f"{stem}.meta.json"
        atomic_write(sidecar, json.dumps(meta, indent=2, sort_keys=True).encode())
        return sidecar, True

    def advance(self, order_id: str, n: int) -> None:
        if n > self.cursors.get(order_id, 0):
            self.cursors[order_id] = n
            atomic_write(self._cursor_path, json.dumps(self.cursors, sort_keys=True).encode())
