"""The URL policy shared by the API and the miner."""

import pytest

from core.errors import InvalidInput
from core.urls import check_target_url, forbidden_ip_reason


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("https://example.com", "https://example.com/"),
        ("HTTP://Example.COM:80/a?b=1#frag", "http://example.com/a?b=1#frag"),
        ("http://bücher.example/", "http://xn--bcher-kva.example/"),
        ("https://93.184.215.14:8443/x", "https://93.184.215.14:8443/x"),
        ("http://[2606:4700:4700::1111]/", "http://[2606:4700:4700::1111]/"),
    ],
)
def test_public_urls_are_normalised(url: str, normalised: str) -> None:
    assert check_target_url(url) == normalised


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/", "http://2130706433/", "http://0x7f000001/", "http://0177.0.0.01/", "http://127.1/",
        "http://0x7f.1/", "http://127.0.0.1./", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/", "http://[64:ff9b::7f00:1]/", "http://[2002:7f00:1::]/",
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",  # Teredo whose client is 127.0.0.1
        "http://10.0.0.1/", "http://172.16.5.4/", "http://192.168.1.1/", "http://169.254.169.254/",
        "http://100.64.0.1/", "http://0.0.0.0/", "http://0/", "http://[::]/", "http://224.0.0.251/",
        "http://[ff02::1]/", "http://[fe80::1]/", "http://[fc00::1]/", "http://240.0.0.1/",
        "http://255.255.255.255/", "http://198.18.0.1/", "http://localhost/", "http://a.b.localhost./",
    ],
)
def test_private_and_special_hosts_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput):
        check_target_url(url)
    assert check_target_url(url, allow_private=True).startswith("http://")


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "gopher://example.com/", "data:text/plain,hi", "javascript:alert(1)", "//example.com",
     "example.com", "http://exa mple.com/", "http://example.com:99999/", "http://example.com:0/", "http:///",
     "http://user@example.com/", "http://:pw@example.com/", "http://example.com/\r\nHost: x", ""],
)
def test_malformed_or_unsafe_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput):
        check_target_url(url, allow_private=True)


def test_forbidden_ip_reason_names_the_range() -> None:
    assert forbidden_ip_reason("8.8.8.8") is None
    assert forbidden_ip_reason("2606:4700:4700::1111") is None
    assert "loopback" in (forbidden_ip_reason("127.0.0.53") or "")
    assert "embeds" in (forbidden_ip_reason("::ffff:10.0.0.1") or "")
    assert "link-local" in (forbidden_ip_reason("169.254.0.1") or "")
    assert forbidden_ip_reason("64:ff9b::808:808") is None, "NAT64 of a public address is public"
