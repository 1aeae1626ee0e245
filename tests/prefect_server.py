"""A real Prefect server for tests (the project's embedded one), started once per session."""

from collections.abc import Iterator
from pathlib import Path

from cli.embedded import prefect_env, prefect_server

__all__ = ["prefect_env", "run_prefect_server"]


def run_prefect_server(home: Path, port: int, log: Path) -> Iterator[str]:
    with prefect_server(home, port, log):
        yield f"http://127.0.0.1:{port}/api"
