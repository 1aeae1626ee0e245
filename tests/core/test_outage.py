"""An outage of a dependency is logged as one warning and one recovery line, whatever the retries."""

import logging

import pytest

from core.outage import Outage


def test_one_warning_per_outage_and_one_line_when_it_is_back(caplog: pytest.LogCaptureFixture) -> None:
    valkey = Outage("Valkey")
    caplog.set_level(logging.INFO, logger="crawlcoin.outage")
    valkey.ok()  # no outage: nothing to say
    for _ in range(50):
        valkey.failed(ConnectionError("Connection refused"), "hand-out")
    valkey.ok()
    valkey.ok()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0][0] == "WARNING"
    assert "Valkey unavailable (hand-out): ConnectionError: Connection refused" in lines[0][1]
    assert lines[1][0] == "INFO" and "Valkey is back after" in lines[1][1] and "49 retries" in lines[1][1]
    assert all(r.exc_info is None for r in caplog.records), "no tracebacks"

    valkey.failed(TimeoutError("timed out"))  # a second outage is reported again
    assert caplog.records[-1].levelname == "WARNING" and "TimeoutError" in caplog.records[-1].getMessage()
