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
    refused = refusal(method, target, (1, 1), headers)
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
    assert refusal(method, target, (1, 1), headers) is None
    assert refusal(method, target, (1, 0), [h for h in headers if h[0].lower() != "transfer-encoding"]) is None


@pytest.mark.parametrize("version", [(0, 9), (2, 0), (1, 2)])
def test_only_http_1_is_spoken(version: tuple[int, int]) -> None:
    refused = refusal("GET", "/", version, [])
    assert refused is not None and refused.status == 505


def test_http_1_0_cannot_be_chunked() -> None:
    refused = refusal("POST", "/", (1, 0), [("Transfer-Encoding", "chunked")])
    assert refused is not None and refused.status == 400
