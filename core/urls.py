"""URL policy shared by the API (order validation) and the miner (before every connection).

Hosts are parsed with the WHATWG URL standard (ada-url), the same rules browsers and most
HTTP stacks follow, so every spelling of an IPv4 address (decimal `2130706433`, octal
`0177.1`, hex `0x7f.1`, short `127.1`, percent-encoded) is normalised to dotted form before
it is checked. IPv6 forms that embed an IPv4 address (mapped, NAT64, 6to4, Teredo) are
checked through the address they embed.
"""

import ipaddress

import ada_url

from core.errors import InvalidInput

ALLOWED_SCHEMES = ("http:", "https:")
_HOST_DOMAIN, _HOST_IPV4, _HOST_IPV6 = 0, 1, 2
_NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if any(ip in net for net in _NAT64_PREFIXES):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def forbidden_ip_reason(ip: IPAddress | str) -> str | None:
    """Why a miner must not connect to `ip`, or None when it is a public unicast address."""
    ip = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return f"{ip} is a scoped (link-local) address"
        inner = _embedded_ipv4(ip)
        if inner is not None:
            reason = forbidden_ip_reason(inner)
            return f"{ip} embeds {reason}" if reason else None
    for attr, what in (
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_unspecified", "unspecified"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),  # last: Python counts the ranges above as private too
    ):
        if getattr(ip, attr):
            return f"{ip} is a {what} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def _is_localhost_name(host: str) -> bool:
    host = host.rstrip(".")
    return host == "localhost" or host.endswith(".localhost")


def check_target_url(url: str, *, allow_private: bool = False, max_length: int = 2048) -> str:
    """Validate a URL to scrape and return its normalised form, or raise InvalidInput."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput("url is required")
    if len(url) > max_length:
        raise InvalidInput(f"url is longer than {max_length} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise InvalidInput("url contains control characters")
    try:
        parsed = ada_url.URL(url.strip())
    except ValueError:
        raise InvalidInput("url is not a valid absolute URL (expected http:// or https://…)") from None
    if parsed.protocol not in ALLOWED_SCHEMES:
        raise InvalidInput(f"url scheme {parsed.protocol.rstrip(':')!r} is not allowed; use http or https")
    if parsed.username or parsed.password:
        raise InvalidInput("url must not contain a user name or password")
    host = parsed.hostname
    if not host:
        raise InvalidInput("url has no host")
    if parsed.port == "0":
        raise InvalidInput("url port 0 is not allowed")
    if not allow_private:
        if parsed.host_type == _HOST_DOMAIN:
            if _is_localhost_name(host):
                raise InvalidInput(f"url host {host!r} is a loopback name")
        else:
            literal = host[1:-1] if parsed.host_type == _HOST_IPV6 else host
            reason = forbidden_ip_reason(literal)
            if reason:
                raise InvalidInput(f"url host is not allowed: {reason}")
    normalised = parsed.href
    if len(normalised) > max_length:
        raise InvalidInput(f"url is longer than {max_length} characters once normalised")
    return normalised
