"""`crawlcoin` entry point. Each subcommand imports its role's code only when it runs."""

import functools
import sys
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup, TyperOption

from core.errors import CrawlcoinError


def _plain_flags(command: TyperCommand | TyperGroup, ctx: Any) -> None:
    """A flag takes no value: its help line shows none (Typer would print `<bool>`, also for --help)."""
    for param in command.get_params(ctx):
        if isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""


class _Command(TyperCommand):
    def format_help(self, ctx: Any, formatter: Any) -> None:
        _plain_flags(self, ctx)
        super().format_help(ctx, formatter)


class _Group(TyperGroup):
    def format_help(self, ctx: Any, formatter: Any) -> None:
        _plain_flags(self, ctx)
        super().format_help(ctx, formatter)


def _typer(**kwargs: object) -> typer.Typer:
    app = typer.Typer(cls=_Group, **kwargs)  # type: ignore[arg-type]
    app.command = functools.partial(app.command, cls=_Command)  # type: ignore[method-assign]
    return app


app = _typer(help="crawlcoin: a marketplace for recurring web scraping.", no_args_is_help=True,
             pretty_exceptions_enable=False)
serve = _typer(help="Run a single crawlcoin service in the foreground (for replicas and operators).")
app.add_typer(serve, name="serve")
err = Console(stderr=True)


@app.command()
def up(
    miner: bool = typer.Option(False, "--miner", help="Also start one local miner (earning for a local volunteer)."),
    demo: bool = typer.Option(False, "--demo", help="Also order a local demo page and run a miner and a result "
                                                    "client: the whole path in a minute."),
    mining_servers: int = typer.Option(1, "--mining-servers", min=1, max=64,
                                       help="Mining servers to run; more than one sit behind HAProxy on "
                                            "CRAWLCOIN_MINING_PORT (needs the `haproxy` package)."),
    result_servers: int = typer.Option(1, "--result-servers", min=1, max=64,
                                       help="Result servers to run; more than one sit behind HAProxy on "
                                            "CRAWLCOIN_RESULTS_PORT (needs the `haproxy` package)."),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="crawlcoin Prefect workers to run."),
    ha: bool = typer.Option(False, "--ha", help="No single point of failure but the machine: three Cassandra "
                                                "nodes, Valkey with Sentinel, two Prefect API servers, two of "
                                                "each crawlcoin server behind HAProxy (needs Java 17, `haproxy` "
                                                "and `pip install 'crawlcoin[ha]'`)."),
) -> None:
    """Start every crawlcoin service on embedded defaults (SQLite, Valkey, Prefect) and print the URLs."""
    from cli.up import run_stack

    if ha:
        from cli.ha import run_ha

        if miner or demo or max(mining_servers, result_servers, workers) > 1:
            raise CrawlcoinError("--ha runs two of each server and worker, without a local miner or demo: leave "
                                 "out --miner, --demo, --mining-servers, --result-servers and --workers")
        raise typer.Exit(run_ha(_settings()))

    raise typer.Exit(run_stack(_settings(), miner=miner, demo=demo, mining_servers=mining_servers,
                               result_servers=result_servers, workers=workers))


@app.command()
def mine(
    server: str = typer.Option(None, help="Mining server URL (default: http://CRAWLCOIN_HOST:CRAWLCOIN_MINING_PORT)."),
    token: str = typer.Option(..., envvar="CRAWLCOIN_MINER_TOKEN", show_envvar=True,
                              help="A mining token: create one on the dashboard's Mining page, which shows the "
                                   "whole command to run."),
    concurrency: int = typer.Option(4, min=1, max=1024, help="Jobs fetched at the same time."),
    block_domain: list[str] = typer.Option([], "--block-domain", help="Never fetch this domain or its subdomains "
                                                                      "(repeatable)."),
    allow_post: bool = typer.Option(False, "--allow-post", help="Also take jobs that POST (they may change "
                                                                 "something on the target site)."),
    max_body_kib: int = typer.Option(2048, min=1, help="Keep at most this much of each page (KiB)."),
    allow_private_targets: bool = typer.Option(
        False, "--allow-private-targets",
        help="LOCAL TESTING ONLY: let this miner connect to private, loopback and link-local addresses."),
) -> None:
    """Mine: fetch pages for customers and earn a coin for each one delivered."""
    from pydantic import ValidationError

    from miners.client.guard import normalise_domain
    from miners.client.run import run_miner

    settings = _settings()
    try:
        blocked = [normalise_domain(d) for d in block_domain]
    except ValueError as e:
        raise CrawlcoinError(f"--block-domain: {e}") from None
    methods = ["GET", "HEAD", "POST"] if allow_post else ["GET", "HEAD"]
    url = server or f"http://{settings.host}:{settings.mining_port}"
    try:
        code = run_miner(url, token, concurrency, blocked, methods, max_body_kib * 1024, allow_private_targets)
    except ValidationError as e:
        raise CrawlcoinError("invalid miner settings: " + "; ".join(x["msg"] for x in e.errors())) from None
    raise typer.Exit(code)


@serve.command("api")
def serve_api() -> None:
    """Run the HTTP API (uvicorn) with the settings from the environment."""
    import uvicorn

    from api.app import create_app

    settings = _settings()
    # proxy_headers off: the API reads X-Forwarded-For itself, from CRAWLCOIN_TRUSTED_PROXIES only (uvicorn
    # would believe any loopback peer first and hide the real one).
    uvicorn.run(create_app(settings), host=settings.host, port=settings.api_port, proxy_headers=False,
                log_level="info")


@serve.command("mining")
def serve_mining() -> None:
    """Run a mining server (Socket.IO) with the settings from the environment."""
    import uvicorn

    from miners.server.app import MiningServer

    settings = _settings()
    server = MiningServer(settings)
    uvicorn.run(server.app, host=settings.host, port=settings.mining_port, proxy_headers=True, log_level="info",
                ws_max_size=server.max_message_bytes)


@serve.command("results")
def serve_results() -> None:
    """Run a result server (Socket.IO) with the settings from the environment."""
    import uvicorn

    from results.server.app import ResultServer

    settings = _settings()
    uvicorn.run(ResultServer(settings).app, host=settings.host, port=settings.results_port, proxy_headers=True,
                log_level="info")


@app.command()
def results(
    token: str = typer.Option(..., envvar="CRAWLCOIN_RESULTS_TOKEN", show_envvar=True,
                              help="A results token: create one on the dashboard's Results page, which shows the "
                                   "whole command to run."),
    order: list[str] = typer.Option(..., "--order", help="An order whose results to write (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Folder to write the results into (created if missing)."),
    server: str = typer.Option(None, help="Result server URL (default: http://CRAWLCOIN_HOST:CRAWLCOIN_RESULTS_PORT)."),
    once: bool = typer.Option(False, "--once", help="Write what is there now, then exit (for scripts and cron)."),
    changes: bool = typer.Option(False, "--changes",
                                 help="Write only the results whose page (or extracted value) changed since the "
                                      "previous valid result, each with a .diff file."),
) -> None:
    """Write every result of your orders to files: backlog first, then live; resumes where it stopped."""
    from results.client.cli import run_results

    settings = _settings()
    run_results(server or f"http://{settings.host}:{settings.results_port}", token, order, out, once, changes)


@app.command()
def status(
    watch: bool = typer.Option(False, "--watch", metavar="", help="Keep the screen up, refreshed (Ctrl-C ends)."),
    interval: float = typer.Option(2.0, min=0.5, help="Seconds between refreshes with --watch."),
) -> None:
    """One screen of the running marketplace: services up, backlog, lateness, miners, orders late."""
    from cli.status import run_status

    raise typer.Exit(run_status(_settings(), watch, interval, Console()))


@app.command()
def worker(
    pool: str = typer.Option(None, help="Prefect work pool (default: CRAWLCOIN_WORK_POOL)."),
    limit: int = typer.Option(100, min=1, help="Flow runs held at the same time. A run claimed ahead of its "
                              "start waits inside the worker as a cheap coroutine, so keep this well above "
                              "runs per second × (prefetch + run time)."),
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
        err.print(f"[bold red]error:[/] {escape(e.message)}")
        sys.exit(2)


if __name__ == "__main__":
    main()
