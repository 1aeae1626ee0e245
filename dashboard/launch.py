"""How the dashboard is started: `streamlit run dashboard/server.py` (which serves app.py) with the flags a service
needs."""

import os
import sys
from pathlib import Path
from typing import NoReturn

from core.settings import Settings

APP = Path(__file__).resolve().parent / "server.py"  # serves app.py, with the headers it needs


def streamlit_argv(settings: Settings) -> list[str]:
    """The command line of the dashboard process (the API address comes from the same settings)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.headless=true",
        f"--server.address={settings.host}",
        f"--server.port={settings.dashboard_port}",
        "--server.fileWatcherType=none",
        "--browser.gatherUsageStats=false",
        "--client.showErrorDetails=none",
        "--client.toolbarMode=viewer",
        "--theme.primaryColor=#c08a1e",
    ]


def url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.dashboard_port}"


def health_url(settings: Settings) -> str:
    return f"{url(settings)}/_stcore/health"


def run(settings: Settings | None = None) -> NoReturn:
    """Become the dashboard process (exec), so that signals reach Streamlit itself."""
    argv = streamlit_argv(settings or Settings())
    os.execv(argv[0], argv)
