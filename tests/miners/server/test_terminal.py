"""`crawlcoin mine` on a terminal: Ctrl-C ends with a one-line summary, the warning is shown once."""

import os

from tests.helpers import Terminal
from tests.miners.server.conftest import CRAWLCOIN


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CRAWLCOIN_")} | {"CRAWLCOIN_MODE": "test"}


def test_ctrl_c_ends_with_a_one_line_summary(mining_server, market, pages) -> None:
    customer = market.user(coins=100)
    _, token = market.miner()
    market.order(customer, pages.url("/page"), runs=2)
    with Terminal([CRAWLCOIN, "mine", "--server", mining_server, "--token", token, "--allow-private-targets"],
                  _env()) as term:
        term.wait_for("mining as", 30)
        term.wait_for("jobs paid 2", 30)
        code = term.ctrl_c()
    assert code == 0, term.output
    assert "Traceback" not in term.output and "CancelledError" not in term.output, term.output
    assert term.lines()[-1] == "stopped: paid 2, unpaid 0, failed 0, coins earned 2", term.lines()[-5:]
    assert term.output.count("is ON") == 1, "the private-targets warning is shown once"


def test_ctrl_c_while_the_server_is_unreachable(tmp_path) -> None:
    with Terminal([CRAWLCOIN, "mine", "--server", "http://127.0.0.1:9", "--token", "cc_x"], _env()) as term:
        term.wait_for("cannot reach", 30)
        code = term.ctrl_c()
    assert code == 0, term.output
    assert "Traceback" not in term.output and "Unclosed client session" not in term.output, term.output
    assert term.lines()[-1] == "stopped: paid 0, unpaid 0, failed 0, coins earned 0", term.lines()[-5:]


def test_unpaid_jobs_name_their_cause(mining_server, market, pages) -> None:
    """A miner without --allow-private-targets refuses a page on this machine, and says so."""
    customer = market.user(coins=100)
    _, token = market.miner()
    market.order(customer, pages.url("/page"), runs=2)
    with Terminal([CRAWLCOIN, "mine", "--server", mining_server, "--token", token], _env()) as term:
        term.wait_for("mining as", 30)
        term.wait_for("jobs unpaid 2", 30)
        code = term.ctrl_c()
    assert code == 0, term.output
    final = " ".join(term.lines()[-3:])
    assert "unpaid 2 (refused target ×2: " in final and "--allow-private-targets" in final, term.lines()[-3:]
