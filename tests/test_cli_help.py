"""What a newcomer reads first: `--help` and the table of `crawlcoin up`."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from cli.up import print_table

CRAWLCOIN = str(Path(sys.executable).parent / "crawlcoin")


def _help(*args: str) -> str:
    env = dict(os.environ, COLUMNS="120")
    return subprocess.run([CRAWLCOIN, *args, "--help"], capture_output=True, text=True, env=env, check=True).stdout


def _words(text: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_help_sends_users_to_the_dashboard_for_tokens_and_shows_flags_plainly() -> None:
    texts = {args: _help(*args) for args in ((), ("up",), ("mine",), ("results",), ("worker",), ("serve",),
                                             ("serve", "api"))}
    assert "dashboard's Mining page" in _words(texts[("mine",)])
    assert "dashboard's Results page" in _words(texts[("results",)])
    for args, text in texts.items():
        assert "/tokens" not in text, (args, "an API path is no place to send a user for a token")
        assert "<bool>" not in text, (args, text)  # a flag takes no value
    for args, flags in ((("mine",), ("--allow-post", "--allow-private-targets", "--help")), (("results",), ("--once",)),
                        (("up",), ("--miner", "--demo")), ((), ("--install-completion", "--help"))):
        assert all(f"{flag} " in texts[args] for flag in flags), (args, flags)


def test_the_up_table_keeps_whole_urls_and_paths_when_not_a_terminal() -> None:
    rows = [("api", "http://127.0.0.1:8600/docs", "/home/someone/with/a/long/data/dir/.crawlcoin/logs/api.log"),
            ("prefect server", "http://127.0.0.1:4200 (UI; auth string in /home/someone/.crawlcoin/secrets.json)",
             "/home/someone/with/a/long/data/dir/.crawlcoin/logs/prefect.log")]
    out = io.StringIO()
    print_table(Console(file=out, width=80), rows)
    text = out.getvalue()
    for row in rows:
        for cell in row:
            assert cell in text, (cell, text)


def test_the_up_table_folds_rather_than_cuts_on_a_narrow_terminal() -> None:
    rows = [("api", "http://127.0.0.1:8600/docs", "/home/someone/with/a/long/data/dir/.crawlcoin/logs/api.log")]
    out = io.StringIO()
    print_table(Console(file=out, width=60, force_terminal=True, color_system=None), rows)
    assert "…" not in out.getvalue()
    assert "".join(line.strip("│ ") for line in out.getvalue().splitlines()).count("api.log") == 1
