"""`crawlcoin` entry point. Each subcommand imports its role's code only when it runs."""

import sys

import typer
from pydantic import ValidationError
from rich.console import Console

from core.errors import CrawlcoinError

app = typer.Typer(help="crawlcoin: a marketplace for recurring web scraping.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
serve = typer.Typer(help="Run a single crawlcoin service in the foreground (for replicas and operators).")
app.add_typer(serve, name="serve")
err = Console(stderr=True)


@app.command()
def up() -> None:
    """Start crawlcoin on its embedded defaults (SQLite store, Valkey) and print the URLs."""
    from cli.up import run_stack

    raise typer.Exit(run_stack(_settings()))


@serve.command("api")
def serve_api() -> None:
    """Run the HTTP API (uvicorn) with the settings from the environment."""
    import uvicorn

    from api.app import create_app

    settings = _settings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.api_port, proxy_headers=True,
                log_level="info")


@app.command()
def worker(
    pool: str = typer.Option(None, help="Prefect work pool (default: CRAWLCOIN_WORK_POOL)."),
    limit: int = typer.Option(8, min=1, help="Flow runs executed at the same time."),
    name: str = typer.Option(None, help="Worker name shown in the Prefect UI."),
    prefetch: float = typer.Option(10.0, min=0, help="Seconds ahead of their start that runs are claimed."),
) -> None:
    """Run a crawlcoin Prefect worker: executes dispatch/reconcile runs in-process (run N anywhere)."""
    import anyio

    from flows.worker import CrawlcoinWorker

    settings = _settings()
    w = CrawlcoinWorker(work_pool_name=pool or settings.work_pool, limit=limit, name=name,
                        prefetch_seconds=prefetch, settings=settings)
    anyio.run(w.start)


def _settings():  # noqa: ANN202 - imported lazily so `--help` stays fast
    from core.settings import Settings

    try:
        return Settings()
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, x['loc'])) or 'settings'}: {x['msg']}" for x in e.errors()]
        raise CrawlcoinError("invalid configuration: " + "; ".join(lines)) from None


def main() -> None:
    try:
        app()
    except CrawlcoinError as e:
        err.print(f"[bold red]error:[/] {e.message}")
        sys.exit(2)


if __name__ == "__main__":
    main()
