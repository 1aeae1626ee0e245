"""The volunteer's mining client: the SSRF-safe fetcher (`fetch`) and, later, the CLI."""

from miners.client.fetch import Fetcher
from miners.client.models import FetchError, FetchPolicy, FetchRequest, FetchResult, Hop

__all__ = ["FetchError", "FetchPolicy", "FetchRequest", "FetchResult", "Fetcher", "Hop"]
