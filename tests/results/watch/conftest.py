"""The watcher runs inside the result server: the result-delivery fixtures serve here too."""

from tests.results.server.conftest import customer, result_server, settings, store, store_url  # noqa: F401
