"""The supervisor of `crawlcoin up`: restarts with backoff, gives up only on a crash loop."""

import io
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from cli import supervise
from cli.supervise import Child, Supervisor
from core.errors import CrawlcoinError


def run_until(sup: Supervisor, done: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done():  # type: ignore[operator]
        sup.check()
        time.sleep(0.02)


def test_a_crash_loop_stops_the_stack_with_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervise, "BACKOFF_SECONDS", (0.05, 0.1))
    out = io.StringIO()
    sup = Supervisor(Console(file=out, width=200))
    child = Child("flaky", [sys.executable, "-c", "print('bad config line 3'); raise SystemExit(3)"], "", "",
                  tmp_path / "flaky.log")
    child.start({})
    sup.watch(child)
    with pytest.raises(CrawlcoinError) as e:
        run_until(sup, lambda: False, 30)
    assert "flaky died (exit code 3) 5 times in a row, each time within 30 s of starting; giving up" in str(e.value)
    assert "bad config line 3" in str(e.value)
    lines = out.getvalue().splitlines()
    assert lines == ["flaky died (exit code 3); restarting in 0.1 s"] * 4, lines


def test_a_child_that_ran_a_while_is_restarted_and_reported_back(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervise, "FAST_FAILURE_SECONDS", 0.3)
    monkeypatch.setattr(supervise, "SETTLE_SECONDS", 0.2)
    out = io.StringIO()
    sup = Supervisor(Console(file=out, width=200))
    child = Child("sleeper", [sys.executable, "-c", "import time; time.sleep(0.5)"], "", "", tmp_path / "s.log")
    child.start({})
    sup.watch(child)
    run_until(sup, lambda: out.getvalue().count("is back") >= 6, 30)
    lines = out.getvalue().splitlines()
    assert lines[0] == "sleeper died (exit code 0); restarting in 1 s"
    assert lines[1].startswith("sleeper is back (down 1.")
    assert sum("is back" in x for x in lines) >= 6, "lived longer than a fast failure each time: never gives up"


def test_a_one_shot_helper_that_finishes_is_left_alone(tmp_path: Path) -> None:
    """The demo's result client exits 0 when the demo order is done: the stack stays up, nothing restarts."""
    out = io.StringIO()
    sup = Supervisor(Console(file=out, width=200))
    helper = Child("result client", [sys.executable, "-c", "pass"], "", "", tmp_path / "h.log", one_shot=True)
    service = Child("api", [sys.executable, "-c", "import time; time.sleep(60)"], "", "", tmp_path / "a.log")
    for child in (helper, service):
        child.start({})
        sup.watch(child)
    try:
        run_until(sup, lambda: False, 8)  # a restart loop would give up within this (backoff 1+2+4 s)
        assert out.getvalue().splitlines() == ["result client finished its work (exit code 0); the rest keeps running"]
        assert service.exited() is None
    finally:
        service.kill()


def test_a_one_shot_helper_that_fails_is_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervise, "BACKOFF_SECONDS", (0.05, 0.1))
    out = io.StringIO()
    sup = Supervisor(Console(file=out, width=200))
    helper = Child("result client", [sys.executable, "-c", "raise SystemExit(2)"], "", "", tmp_path / "h.log",
                   one_shot=True)
    helper.start({})
    sup.watch(helper)
    run_until(sup, lambda: "restarting" in out.getvalue(), 10)
    assert out.getvalue().splitlines()[0] == "result client died (exit code 2); restarting in 0.1 s"
