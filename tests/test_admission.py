"""Requests answered by the proxy itself before routing. Pure."""

from __future__ import annotations

import pytest

from proxy.forwarding.admission import refusal


def codings(headers: list[tuple[str, str]]) -> list[str]:
    return [value for name, value in headers if name.lower() == "transfer-encoding"]


@pytest.mark.parametrize(
    ("method", "target", "headers", "status"),
    [
        ("CONNECT", "127.0.0.1:22", [], 405),
        ("OPTIONS", "*", [], 400),
        ("GET", "example.com:443", [], 400),
        ("POST", "/", [("Transfer-Encoding", "gzip, chunked")], 501),
        ("POST", "/", [("transfer-encoding", "deflate")], 501),
        ("POST", "/", [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")], 501),
    ],
)
def test_refused(method: str, target: str, headers: list[tuple[str, str]], status: int) -> None:
    refused = refusal(method, target, "HTTP/1.1", "app1.localhost", codings(headers))
    assert refused is not None and refused.status == status and refused.detail


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/", []),
        ("POST", "/upload", [("Transfer-Encoding", "Chunked")]),
        ("OPTIONS", "/api", [("Origin", "http://app1.localhost")]),
        ("PROPFIND", "/dav", []),
    ],
)
def test_forwarded(method: str, target: str, headers: list[tuple[str, str]]) -> None:
    assert refusal(method, target, "HTTP/1.1", "app1.localhost:7080", codings(headers)) is None
    assert refusal(method, target, "HTTP/1.0", "app1.localhost", []) is None


@pytest.mark.parametrize("version", ["HTTP/0.9", "HTTP/2.0", "HTTP/1.2"])
def test_only_http_1_is_spoken(version: str) -> None:
    refused = refusal("GET", "/", version, "localhost", [])
    assert refused is not None and refused.status == 505


def test_http_1_0_cannot_be_chunked() -> None:
    refused = refusal("POST", "/", "HTTP/1.0", "localhost", ["chunked"])
    assert refused is not None and refused.status == 400


@pytest.mark.parametrize(
    "host", ["app1.localhost evil", "app1.localhost, other.localhost", "x@app1.localhost", "app1.localhost/x", "app1.localhost:abc", "a\tb"]
)
def test_a_host_that_is_not_a_host_name_is_refused(host: str) -> None:
    refused = refusal("GET", "/", "HTTP/1.1", host, [])
    assert refused is not None and refused.status == 400


@pytest.mark.parametrize("host", ["app1.localhost", "APP1.localhost:7080", "[::1]:7080", "127.0.0.1", "app1.localhost.", "xn--bcher-kva.localhost", ""])
def test_host_names_pass(host: str) -> None:
    assert refusal("GET", "/", "HTTP/1.1", host, []) is None


@pytest.mark.parametrize("host", ["app1.localhost:65536", "app1.localhost:99999", "app1.localhost:123456", "[::1]:70000", "127.0.0.1:000007080"])
def test_a_host_whose_port_is_not_a_port_is_refused(host: str) -> None:
    """A port has at most five digits and is at most 65535; anything else is no address the client could have used."""
    refused = refusal("GET", "/", "HTTP/1.1", host, [])
    assert refused is not None and refused.status == 400, host
    assert "port" in refused.detail


@pytest.mark.parametrize("host", ["app1.localhost:65535", "app1.localhost:0", "app1.localhost:", "[::1]:1"])
def test_ports_up_to_65535_pass(host: str) -> None:
    assert refusal("GET", "/", "HTTP/1.1", host, []) is None
