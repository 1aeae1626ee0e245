"""The wire protocols between crawlcoin's processes, one module each; both ends import it.

- `jobs`: the job stream in Valkey (the job queue releases jobs; mining servers hand them out).
- `mining`: the `/mine` Socket.IO namespace (mining server ↔ miner).
- `notices`: the result-notice stream in Valkey (mining servers, dispatch, order sync → result servers).
- `results`: the `/results` Socket.IO namespace (result server ↔ result client).

A module holds its stream or namespace name, its event names and its message models, and
depends on nothing but `core.schemas`, so the client side may import it.
"""

KEY_PREFIX = "crawlcoin"
"""Every key crawlcoin keeps in Valkey starts with this."""
