"""`crawlcoin mine`: the mining loop with a live display and a graceful Ctrl-C."""

import asyncio
import logging
import signal

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from core.protocol.mining import MinerPolicy
from miners.client.miner import Miner
from miners.client.models import FetchPolicy
from miners.client.stats import MinerStats

PRIVATE_TARGETS_WARNING = (
    "WARNING: --allow-private-targets is ON. This miner WILL connect to private, loopback and link-local "
    "addresses: its own machine and network. It exists for local testing only; never use it with a public "
    "mining server."
)


def render(stats: MinerStats) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("server", stats.server)
    table.add_row("state", stats.state)
    table.add_row("jobs paid", str(stats.done))
    table.add_row("jobs held", f"{stats.held} (waiting for another miner to check them)")
    table.add_row("jobs unpaid", stats.unpaid_text())
    table.add_row("jobs failed", str(stats.failed))
    table.add_row("coins earned", str(stats.coins))
    table.add_row("in flight", f"{stats.in_flight} of {stats.capacity}")
    table.add_row("rate", f"{stats.per_minute():.1f} jobs/min")
    table.add_row("reputation", stats.reputation_text())
    parts: list = [table]
    if stats.last_problem:
        parts.append(Text(f"last problem: {stats.last_problem}", style="yellow"))
    return Panel(Group(*parts), title="crawlcoin miner (Ctrl-C: finish jobs in flight and stop)")


def _summary(stats: MinerStats) -> str:
    return (f"[miner] {stats.state} | paid {stats.done} | held {stats.held} | unpaid {stats.unpaid_text()} | "
            f"failed {stats.failed} | coins {stats.coins} | {stats.per_minute():.1f} jobs/min | "
            f"reputation {stats.reputation_text()}")


def final_line(stats: MinerStats) -> str:
    held = f"held {stats.held} (paid once another miner checks them), " if stats.held else ""
    return (f"stopped: paid {stats.done}, {held}unpaid {stats.unpaid_text()}, failed {stats.failed}, "
            f"coins earned {stats.coins}")


class _ShownAlready(logging.Filter):
    """The fetcher logs its own private-targets warning; the command has printed it once already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "allow_private_targets is ON" not in record.getMessage()


async def _mine(miner: Miner, console: Console) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    presses = 0

    def on_signal(signum: int, frame: object) -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            raise SystemExit(130)  # a second Ctrl-C: do not wait
        loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    runner = asyncio.create_task(miner.run(stop))
    if console.is_terminal:
        with Live(render(miner.stats), console=console, refresh_per_second=2) as live:
            while not runner.done():
                live.update(render(miner.stats))
                await asyncio.wait([runner], timeout=0.5)
            live.update(render(miner.stats))
    else:  # logs and pipes: one line on every change of state, and every 10 s
        last, ticks = "", 0
        while not runner.done():
            line = _summary(miner.stats)
            if miner.stats.state != last or ticks % 20 == 0:
                console.print(line, highlight=False, soft_wrap=True)
                last = miner.stats.state
            ticks += 1
            await asyncio.wait([runner], timeout=0.5)
        console.print(_summary(miner.stats), highlight=False, soft_wrap=True)
    await runner


def run_miner(server: str, token: str, concurrency: int, blocked_domains: list[str], methods: list[str],
              max_body_bytes: int, allow_private_targets: bool) -> int:
    console = Console()
    if allow_private_targets:
        Console(stderr=True).print(f"[bold red]{PRIVATE_TARGETS_WARNING}[/]", soft_wrap=True)
        logging.getLogger("miners.client.fetch").addFilter(_ShownAlready())
    policy = MinerPolicy(capacity=concurrency, methods=methods, blocked_domains=blocked_domains,  # type: ignore[arg-type]
                         max_body_bytes=max_body_bytes, client="crawlcoin-miner/0.1")
    fetch_policy = FetchPolicy(max_body_bytes=max_body_bytes, blocked_domains=frozenset(blocked_domains),
                               allow_private_targets=allow_private_targets)
    miner = Miner(server, token, policy, fetch_policy)
    asyncio.run(_mine(miner, console))
    console.print(final_line(miner.stats), highlight=False, soft_wrap=True)
    return 0
