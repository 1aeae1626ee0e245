"""The watcher runs inside the result server: the result-delivery fixtures serve here too, and the mining ones
for the whole path from a real miner."""

from tests.miners.server.conftest import (  # noqa: F401
    market,
    mining_overrides,
    mining_server,
    mining_settings,
    processes,
)
from tests.results.server.conftest import customer, result_server, settings, store, store_url  # noqa: F401
