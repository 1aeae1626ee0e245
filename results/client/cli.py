"""`crawlcoin results`: write every result of your orders to files, live or once."""

import asyncio
import signal
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from results.client.client import Progress, ResultClient

console = Console()


def _table(p: Progress, orders: list[str], out: Path) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_row("written", str(p.written), "already on disk", str(p.duplicates))
    if p.unchanged:
        t.add_row("unchanged (skipped)", str(p.unchanged), "", "")
    t.add_row("orders caught up", f"{len(p.caught_up)}/{len(orders)}", "finished", str(len(p.finished)))
    t.add_row("into", str(out), "last", p.last[-60:])
    return t


async def _run(client: ResultClient, orders: list[str], out: Path) -> Progress:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, client.stop)
    task = asyncio.create_task(client.run())
    if not console.is_terminal:  # logs and pipes: the table once, at the end, on lines of its own
        try:
            return await task
        finally:
            console.print(_table(client.progress, orders, out))
    with Live(_table(client.progress, orders, out), console=console, refresh_per_second=4,
              transient=False) as live:
        while not task.done():
            live.update(_table(client.progress, orders, out))
            await asyncio.wait([task], timeout=0.25)
        live.update(_table(client.progress, orders, out))
    return await task


def run_results(server: str, token: str, orders: list[str], out: Path, once: bool, changes_only: bool = False) -> None:
    client = ResultClient(server, token, orders, out, once=once, changes_only=changes_only)
    progress = asyncio.run(_run(client, orders, out))
    written = f"{progress.written} result(s) written to {out}"
    if progress.pruned:
        written += (f" ({progress.pruned} without their page: the store had deleted it, its retention after an "
                    "earlier delivery over; the .meta.json says when)")
    if progress.stopped:
        console.print(f"stopped: {written}; the next run resumes where this one left off", highlight=False,
                      soft_wrap=True)
    else:
        console.print(written, highlight=False, soft_wrap=True)
