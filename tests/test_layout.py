"""The import direction of DESIGN.md holds: a volunteer's or customer's install stays light."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIENT_SIDE = ["miners/client", "results/client", "dashboard", "core/protocol"]
ALLOWED_CORE = {"core.schemas", "core.settings", "core.errors", "core.urls", "core.protocol"}


def core_imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            found |= {(str(path.relative_to(ROOT)), n) for n in names if n == "core" or n.startswith("core.")}
    return found


@pytest.mark.parametrize("package", CLIENT_SIDE)
def test_client_side_packages_import_only_the_light_part_of_core(package: str) -> None:
    heavy = {(path, name) for path, name in core_imports(package)
             if not any(name == ok or name.startswith(ok + ".") for ok in ALLOWED_CORE)}
    assert heavy == set()
