"""Requests answered by the proxy itself before routing. Pure."""

from __future__ import annotations

import pytest

from proxy.admission import refusal


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
    refused = refusal(method, target, headers)
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
    assert refusal(method, target, headers) is None
