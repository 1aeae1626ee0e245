"""The real client address of a request (X-Forwarded-For is believed only as far as trusted proxies wrote it), and
the network it belongs to."""

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def real_client(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """Walk the chain from the connection back towards the browser and stop at the first hop that is not a
    trusted proxy: everything left of it could have been written by the client itself."""
    hop = _address(peer or "")
    if hop is None:
        return peer or "unknown"
    chain = [entry for header in forwarded_for for entry in header.split(",")]
    while chain and any(hop in net for net in trusted):
        previous = _address(chain.pop())
        if previous is None:  # a trusted proxy passed on garbage: the proxy is the last address we know
            break
        hop = previous
    return str(hop)


def throttle_key(address: str) -> str:
    """What the per-client counters count by: one IPv4 address, or one IPv6 /64 (what one subscriber gets)."""
    parsed = _address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed) if parsed is not None else address


def network_of(address: str) -> str | None:
    """The network an address belongs to for telling miners apart — an IPv4 /24, an IPv6 /48, what one
    operator or subscriber usually has — or None when it cannot be told: loopback, private, link-local and
    other non-global addresses (miners on one machine or behind one private network), or no address."""
    parsed = _address(address)
    if parsed is None or not parsed.is_global:
        return None
    prefix = 24 if isinstance(parsed, ipaddress.IPv4Address) else 48
    return str(ipaddress.ip_network((parsed, prefix), strict=False))
