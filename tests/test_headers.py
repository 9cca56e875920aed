"""Hop-by-hop stripping and X-Forwarded-*: what crosses the proxy in each direction."""

from __future__ import annotations

import pytest

from proxy.forwarding.contract import Field
from proxy.forwarding.headers import LOOP_HEADER, ClientFields, request_fields_for_upstream, response_fields_for_client, sites_passed, strip_hop_by_hop

Headers = list[tuple[str, str]]


def wire(headers: Headers) -> list[Field]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


def text(fields: list[Field]) -> Headers:
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in fields]


def strip(headers: Headers) -> Headers:
    return text(strip_hop_by_hop(wire(headers)))


END_TO_END: Headers = [("Host", "app1.localhost:7080"), ("Accept", "*/*"), ("Content-Length", "3")]


def names(headers: Headers) -> list[str]:
    return [n.lower() for n, _ in headers]


def values(headers: Headers, name: str) -> list[str]:
    return [v for n, v in headers if n.lower() == name.lower()]


@pytest.mark.parametrize(
    "hop",
    [
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authenticate", "Basic"),
        ("Proxy-Authorization", "Basic eA=="),
        ("TE", "trailers"),
        ("Trailer", "Expires"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "websocket"),
        ("transfer-ENCODING", "chunked"),
    ],
    ids=[
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "any-case",
    ],
)
def test_strip_hop_by_hop_removes_rfc9110_fields(hop: tuple[str, str]) -> None:
    assert strip([*END_TO_END, hop]) == END_TO_END


@pytest.mark.parametrize(
    ("connection", "stripped"),
    [
        (["X-Secret"], ["x-secret"]),
        (["close, X-Secret ,x-other"], ["x-secret", "x-other"]),
        (["x-secret", "X-OTHER"], ["x-secret", "x-other"]),
        (["Host, Content-Length, X-Secret"], ["x-secret"]),
        (["HOST", "content-length"], []),
        ([" , ,"], []),
    ],
    ids=["one", "list-with-spaces", "several-headers-any-case", "never-host-or-length", "never-host-or-length-any-case", "empty-tokens"],
)
def test_strip_hop_by_hop_removes_fields_named_in_connection(connection: list[str], stripped: list[str]) -> None:
    headers = [*END_TO_END, ("X-Secret", "1"), ("X-Other", "2"), *[("Connection", c) for c in connection]]
    kept = strip(headers)
    assert names(kept) == [n for n in names(headers) if n != "connection" and n not in stripped]
    assert ("Host", "app1.localhost:7080") in kept and ("Content-Length", "3") in kept


def test_strip_hop_by_hop_keeps_order_and_repeated_fields() -> None:
    headers = [("Set-Cookie", "a=1"), ("Connection", "close"), ("Set-Cookie", "b=2"), ("Vary", "Accept")]
    assert strip(headers) == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Vary", "Accept")]


def upstream_headers(headers: Headers, **overrides: object) -> Headers:
    kwargs: dict[str, object] = {
        "client_ip": "127.0.0.1",
        "proto": "http",
        "host_header": "app1.localhost:7080",
        "upstream_host": None,
        "via": ["app1.localhost"],
    }
    kwargs.update(overrides)
    return text(request_fields_for_upstream(wire(headers), **kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "spoofed",
    [
        [],
        [("X-Forwarded-For", "6.6.6.6")],
        [("x-forwarded-for", "6.6.6.6"), ("X-FORWARDED-FOR", "7.7.7.7")],
        [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.test"), ("X-Forwarded-Port", "443")],
        [("Connection", "X-Forwarded-For"), ("X-Forwarded-For", "6.6.6.6")],
    ],
    ids=["none-sent", "for", "for-twice-any-case", "proto-host-port", "named-in-connection"],
)
def test_forwarded_headers_replace_what_the_client_sent(spoofed: Headers) -> None:
    out = upstream_headers([*END_TO_END, *spoofed], client_ip="::1", proto="https", host_header="App1.localhost:7443")
    assert values(out, "X-Forwarded-For") == ["::1"]
    assert values(out, "X-Forwarded-Proto") == ["https"]
    assert values(out, "X-Forwarded-Host") == ["App1.localhost:7443"]
    assert values(out, "X-Forwarded-Port") == []


@pytest.mark.parametrize(
    ("upstream_host", "expected"),
    [(None, ["app1.localhost:7080"]), ("127.0.0.1:3000", ["127.0.0.1:3000"])],
    ids=["preserve-host", "replace-host"],
)
def test_host_is_kept_or_replaced_once(upstream_host: str | None, expected: list[str]) -> None:
    out = upstream_headers(END_TO_END, upstream_host=upstream_host)
    assert values(out, "Host") == expected


def test_request_headers_drop_hop_by_hop_and_expect_but_keep_end_to_end() -> None:
    headers = [
        *END_TO_END,
        ("Connection", "keep-alive, X-Secret"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("X-Secret", "1"),
        ("Expect", "100-continue"),
        ("Cookie", "a=1"),
    ]
    out = upstream_headers(headers)
    assert names(out)[: len(END_TO_END) + 1] == ["host", "accept", "content-length", "cookie"]
    assert not {"connection", "keep-alive", "transfer-encoding", "x-secret", "expect"} & set(names(out))


@pytest.mark.parametrize("upgrade", [None, "websocket"], ids=["plain-request", "websocket-handshake"])
def test_websocket_handshake_fields_pass_end_to_end(upgrade: str | None) -> None:
    """The proxy tunnels WebSockets: the client's key must reach the app, whose answer the client checks."""
    handshake = [
        ("Sec-WebSocket-Key", "k"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "chat"),
        ("Sec-WebSocket-Extensions", "permessage-deflate"),
    ]
    out = upstream_headers([*END_TO_END, ("Connection", "Upgrade"), ("Upgrade", "websocket"), *handshake, ("Sec-Fetch-Mode", "cors")], upgrade=upgrade)
    assert all(field in out for field in handshake)
    assert ("Sec-Fetch-Mode", "cors") in out


def test_an_upgrade_is_asked_anew_of_the_upstream_and_only_then() -> None:
    """Upgrade and Connection are hop-by-hop: the client's never pass; the proxy asks for a WebSocket itself."""
    client = [*END_TO_END, ("Connection", "Upgrade, X-Private"), ("Upgrade", "websocket"), ("X-Private", "1")]
    asked = upstream_headers(client, upgrade="websocket")
    assert values(asked, "Connection") == ["Upgrade"] and values(asked, "Upgrade") == ["websocket"]
    assert not values(asked, "X-Private")
    plain = upstream_headers(client)
    assert not values(plain, "Connection") and not values(plain, "Upgrade")


@pytest.mark.parametrize(
    ("incoming", "via", "sent"),
    [
        ([], ["app1.localhost"], "app1.localhost"),
        ([(LOOP_HEADER, "evil.localhost")], ["app1.localhost"], "app1.localhost"),
        ([(LOOP_HEADER.upper(), "a.localhost")], ["a.localhost", "b.localhost"], "a.localhost, b.localhost"),
    ],
    ids=["first-hop", "client-value-replaced", "chain"],
)
def test_loop_header_lists_the_sites_passed(incoming: Headers, via: list[str], sent: str) -> None:
    out = upstream_headers([*END_TO_END, *incoming], via=via)
    assert values(out, LOOP_HEADER) == [sent]


@pytest.mark.parametrize(
    ("headers", "passed"),
    [
        ([], []),
        ([("Accept", "a.localhost")], []),
        ([(LOOP_HEADER, "app1.localhost")], ["app1.localhost"]),
        ([(LOOP_HEADER.lower(), " A.localhost , b.localhost,, ")], ["a.localhost", "b.localhost"]),
        ([(LOOP_HEADER, "a.localhost"), (LOOP_HEADER, "b.localhost")], ["a.localhost", "b.localhost"]),
    ],
    ids=["none", "other-header", "one", "list-any-case-spaces-empties", "repeated-header"],
)
def test_sites_passed(headers: Headers, passed: list[str]) -> None:
    assert sites_passed(loop_header_values(headers)) == passed


def test_sites_passed_reads_back_what_request_headers_wrote() -> None:
    out = upstream_headers(END_TO_END, via=["a.localhost", "b.localhost"])
    assert sites_passed(loop_header_values(out)) == ["a.localhost", "b.localhost"]


def loop_header_values(headers: Headers) -> list[str]:
    """The values the server's case-insensitive header lookup hands to sites_passed."""
    return [v for n, v in headers if n.lower() == LOOP_HEADER.lower()]


def test_response_headers_drop_hop_by_hop_and_connection_named_fields() -> None:
    headers = [
        ("Content-Type", "text/html"),
        ("Connection", "close, X-Internal, Content-Length"),
        ("X-Internal", "1"),
        ("Transfer-Encoding", "chunked"),
        ("Keep-Alive", "timeout=5"),
        ("Content-Length", "10"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]
    assert response_fields_for_client(200, wire(headers)) == ClientFields(
        wire([("Content-Type", "text/html"), ("Content-Length", "10"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]), has_date=False, is_event_stream=False
    )


def test_response_fields_say_whether_the_app_sent_a_date_and_an_event_stream() -> None:
    fields = response_fields_for_client(200, wire([("date", "Thu, 26 Nov 2026 20:00:00 GMT"), ("Content-Type", "text/event-stream; charset=utf-8")]))
    assert isinstance(fields, ClientFields) and fields.has_date and fields.is_event_stream


def test_response_field_bytes_pass_unchanged() -> None:
    fields = response_fields_for_client(200, [(b"X-Name", b"caf\xe9 \xff"), (b"x-lower", b"v")])
    assert isinstance(fields, ClientFields) and fields.fields == [(b"X-Name", b"caf\xe9 \xff"), (b"x-lower", b"v")]


@pytest.mark.parametrize(
    ("status", "headers", "problem"),
    [
        (101, [], "the status code 101"),
        (103, [], "the status code 103"),
        (600, [], "the status code 600"),
        (200, [("Bad Name", "1")], "a malformed header name 'Bad Name'"),
        (200, [("X-Ok:", "1")], "a malformed header name"),
        (200, [("Transfer-Encoding", "chunked, gzip")], "Transfer-Encoding: chunked, gzip"),
        (200, [("Transfer-Encoding", "identity")], "Transfer-Encoding: identity"),
    ],
    ids=["101", "103", "600", "space-in-name", "colon-in-name", "chunked-not-last", "identity"],
)
def test_response_heads_the_proxy_cannot_frame_are_refused(status: int, headers: Headers, problem: str) -> None:
    result = response_fields_for_client(status, wire(headers))
    assert isinstance(result, str) and result.startswith(problem), result


def test_chunked_framing_of_the_app_is_not_passed_on() -> None:
    assert response_fields_for_client(200, wire([("Transfer-Encoding", "gzip, chunked"), ("Vary", "Accept")])) == ClientFields(
        wire([("Vary", "Accept")]), has_date=False, is_event_stream=False
    )
