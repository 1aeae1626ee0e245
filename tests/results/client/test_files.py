"""The result client's files: what a batch leaves on disk, however the file system is made to keep it."""

import hashlib
import json
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.protocol.results import ResultMessage
from results.client import files
from results.client.files import ResultFiles


def result(n: int, body: bytes) -> tuple[ResultMessage, bytes]:
    msg = ResultMessage(key=f"o:{n}", order_id="o", n=n, miner_id="m", fetched_at=datetime(2026, 1, 1, tzinfo=UTC),
                        status=200, final_url="https://example.com/", headers={"Content-Type": "text/html"},
                        body_size=len(body), truncated=False, sha256=hashlib.sha256(body).hexdigest(), elapsed_ms=5,
                        error=None, error_text=None, extracted=f"value {n}")
    return msg, zlib.compress(body)


def on_disk(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("sync", ["syncfs", "fsync per file"])
def test_a_batch_is_on_disk_whole_whichever_way_it_is_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             sync: str) -> None:
    if sync == "syncfs" and files.SYNCFS is None:
        pytest.skip("no syncfs(2) that reports errors here (Linux 5.8 or later)")
    if sync != "syncfs":
        monkeypatch.setattr(files, "SYNCFS", None)
    batch = [result(n, f"<html>page {n}</html>".encode() * n) for n in range(1, 41)]
    written = ResultFiles(tmp_path)
    try:
        paths = written.write(batch)
        again = written.write(batch[:3])
    finally:
        written.close()
    assert all(new for _, new in paths) and not any(new for _, new in again), "each result written once"
    content = on_disk(tmp_path / "o")
    assert len(content) == 3 * 40 and not [name for name in content if name.startswith(".tmp-")]
    for (msg, _), (sidecar, _) in zip(batch, paths, strict=True):
        meta = json.loads(sidecar.read_text())
        assert meta["n"] == msg.n and hashlib.sha256(content[meta["body"]]).hexdigest() == msg.sha256
        assert content[meta["extract"]] == f"value {msg.n}".encode()


def test_a_batch_the_file_system_could_not_keep_leaves_nothing_and_is_written_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed sync (a disk error) fails the batch: it is not acknowledged, and the next delivery writes it."""
    monkeypatch.setattr(files, "SYNCFS", lambda fd: -1)
    batch = [result(n, b"<html>page</html>") for n in range(1, 21)]  # 60 files: the batch's size takes syncfs
    written = ResultFiles(tmp_path)
    try:
        with pytest.raises(OSError, match="syncfs of"):
            written.write(batch)
        assert on_disk(tmp_path / "o") == {}, "no sidecar, no body, no temp file"
        one = [result(99, b"<html>live</html>")]
        assert [new for _, new in written.write(one)] == [True], "a small batch fsyncs its own files, no syncfs"
        monkeypatch.setattr(files, "SYNCFS", None)
        assert [new for _, new in written.write(batch)] == [True] * 20
    finally:
        written.close()
    assert len(on_disk(tmp_path / "o")) == 63
