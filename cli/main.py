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
