"""`crawlcoin results` on a terminal: Ctrl-C and a wrong server end with one clear line."""

import os
import sys
from pathlib import Path

from tests.helpers import Terminal

CRAWLCOIN = str(Path(sys.executable).parent / "crawlcoin")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CRAWLCOIN_")}


def test_ctrl_c_ends_with_a_one_line_summary(result_server, customer, tmp_path) -> None:
    order = customer.order(runs=3)
    customer.deliver(order, [1])
    out = tmp_path / "out"
    with Terminal([CRAWLCOIN, "results", "--server", result_server, "--token", customer.token(), "--out", str(out),
                  "--order", order.id], _env()) as term:
        term.wait_for("caught up", 30)
        term.wait_for("1/1", 30)
        code = term.ctrl_c()
    assert code == 0, term.output
    assert "Traceback" not in term.output and "CancelledError" not in term.output, term.output
    assert term.lines()[-1] == f"stopped: 1 result(s) written to {out}; the next run resumes where this one left off"


def test_a_wrong_server_url_is_one_line(tmp_path) -> None:
    with Terminal([CRAWLCOIN, "results", "--server", "http://127.0.0.1:9", "--token", "cc_x", "--out",
                     str(tmp_path / "out"), "--order", "o1"], _env()) as term:
        code = term.proc.wait(timeout=60)
        term.read()
    assert code == 2
    assert "Unclosed client session" not in term.output and "client_session" not in term.output, term.output
    lines = term.lines()
    error = next(i for i, x in enumerate(lines) if x.startswith("error:"))
    assert " ".join(lines[error:]).startswith("error: cannot connect to the result server at http://127.0.0.1:9 "
                                              "(Connection error); is it running"), lines
