"""The README stays true: its two set-up commands and every setting."""

import re
from pathlib import Path

from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_run_and_test_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    assert blocks[0].endswith("crawlcoin up")
    assert blocks[1].endswith("python -m pytest")
    assert blocks[1] in (ROOT / ".ci" / "run").read_text(), ".ci/run runs the README's test command"


def test_every_setting_is_documented() -> None:
    missing = [name for name in Settings.model_fields if f"`CRAWLCOIN_{name.upper()}`" not in README]
    assert not missing
