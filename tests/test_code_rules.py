"""The code rules .ci/run enforces (ruff, mypy, import-linter) hold on the tree and catch a violation.

Each check runs the real tool with the project's pyproject.toml on a copy of the source tree,
clean and then with one deliberate violation added, as a reviewer would try it by hand.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PACKAGES = ["core", "api", "flows", "miners", "results", "dashboard", "cli"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The project's packages and pyproject.toml, copied so a violation can be added to them."""
    copy = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, copy / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def run(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / tool), *args], cwd=cwd, capture_output=True, text=True, timeout=240)


def add(tree: Path, path: str, text: str) -> None:
    (tree / path).write_text(text)


def test_import_rules_hold_on_the_tree(tree: Path) -> None:
    done = run("lint-imports", cwd=tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 3 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(("path", "line", "contract"), [
    ("flows/_broken.py", "import api.app\n", "One-way layers"),
    ("core/_broken.py", "import api.app\n", "One-way layers"),
    ("core/_broken.py", "import prefect\n", "core is the shared domain"),
    ("miners/client/_broken.py", "import core.storage\n", "Client side stays light"),
    ("dashboard/_broken.py", "import redis\n", "Client side stays light"),
])
def test_import_rules_catch_a_violation(tree: Path, path: str, line: str, contract: str) -> None:
    add(tree, path, line)
    done = run("lint-imports", cwd=tree)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout and contract in done.stdout, done.stdout


def test_ruff_holds_on_the_tree(tree: Path) -> None:
    done = run("ruff", "check", "--no-cache", ".", cwd=tree)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_catches_unsorted_imports_and_a_swallowed_exception(tree: Path) -> None:
    add(tree, "core/_broken.py", "import sys\nimport os\n\n\ndef quiet() -> None:\n"
                                 "    try:\n        os.remove(sys.argv[0])\n    except Exception:\n        pass\n")
    done = run("ruff", "check", "--no-cache", "--output-format", "concise", ".", cwd=tree)
    assert done.returncode != 0
    assert "core/_broken.py:1:1: I001" in done.stdout and "S110" in done.stdout, done.stdout


def test_mypy_catches_a_type_error(tree: Path) -> None:
    add(tree, "core/_broken.py", "def half(n: int) -> int:\n    return n / 2\n")
    done = run("mypy", "--no-incremental", "core/_broken.py", cwd=tree)
    assert done.returncode != 0
    assert 'Incompatible return value type (got "float", expected "int")' in done.stdout, done.stdout
