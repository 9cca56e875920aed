"""How captured exchanges are shown and replayed: redaction, body previews, curl, edits. Pure."""

from __future__ import annotations

import gzip
import json
import shlex

import pytest

from proxy.dashboard.exchanges import EditError, ReplayRefused, body_view, curl_command, detail, redact_value, replay_request, shown_headers
from proxy.diagnostics.inspector import BODY_LIMIT, BodyTap, Exchange


def raw(*pairs: tuple[str, str]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs)


def captured(method: str = "GET", target: str = "/", headers: tuple[tuple[str, str], ...] = (), body: bytes = b"", *, whole: bool = True) -> Exchange:
    exchange = Exchange(method, "http", "app1.localhost:7080", target, site="app1.localhost", request_headers=raw(("Host", "app1.localhost:7080"), *headers))
    exchange.inspect()
    exchange.request_body.feed(body)
    exchange.request_body.is_complete = whole
    return exchange


def tap(data: bytes) -> BodyTap:
    body = BodyTap(BODY_LIMIT)
    body.feed(data)
    return body


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("Authorization", "Bearer abc.def", "Bearer [redacted]"),
        ("authorization", "opaque-token", "[redacted]"),
        ("Proxy-Authorization", "Basic dXNlcjpwdw==", "Basic [redacted]"),
        ("Cookie", "sid=abc; theme=dark", "sid=[redacted]; theme=[redacted]"),
        ("Set-Cookie", "sid=abc; Path=/; HttpOnly", "sid=[redacted]; Path=/; HttpOnly"),
        ("Accept", "text/html", "text/html"),
    ],
)
def test_redaction_hides_values_but_keeps_scheme_names_and_attributes(name: str, value: str, shown: str) -> None:
    assert redact_value(name, value) == shown


def test_shown_headers_redact_on_request_and_never_show_the_replay_marker() -> None:
    headers = raw(("Cookie", "a=1"), ("X-Localhost-Proxy-Replay", "token"), ("Accept", "*/*"))
    assert shown_headers(headers, redact=True) == [["Cookie", "a=[redacted]"], ["Accept", "*/*"]]
    assert shown_headers(headers, redact=False) == [["Cookie", "a=1"], ["Accept", "*/*"]]


def test_json_is_pretty_printed() -> None:
    view = body_view(tap(b'{"a":[1,2],"b":"\xc3\xa9"}'), raw(("Content-Type", "application/json; charset=utf-8")))
    assert view["kind"] == "json"
    assert view["text"] == json.dumps({"a": [1, 2], "b": "é"}, indent=2, ensure_ascii=False)


def test_truncated_json_is_shown_as_text_not_reformatted() -> None:
    body = b'{"items": [' + b'"x",' * 20_000
    view = body_view(tap(body), raw(("Content-Type", "application/json")))
    assert (view["kind"], view["truncated"], view["size"], view["captured"]) == ("text", True, len(body), BODY_LIMIT)


def test_gzip_bodies_are_shown_decompressed() -> None:
    view = body_view(tap(gzip.compress(b"hello " * 100)), raw(("Content-Type", "text/plain"), ("Content-Encoding", "gzip")))
    assert view["kind"] == "text" and view["text"] == "hello " * 100 and view["note"] == "decompressed from gzip"


def test_brotli_and_other_encodings_are_summarised() -> None:
    view = body_view(tap(b"\x8b\x02\x80hello\x03"), raw(("Content-Type", "text/plain"), ("Content-Encoding", "br")))
    assert view["kind"] == "binary" and "br-compressed" in str(view["text"])


def test_binary_is_summarised_with_its_first_bytes() -> None:
    view = body_view(tap(b"\x89PNG\r\n\x1a\n" + bytes(100)), raw(("Content-Type", "image/png")))
    assert view["kind"] == "binary"
    assert str(view["text"]).startswith("binary, 108 bytes (image/png); starts 89 50 4e 47")


def test_text_labelled_as_octet_stream_is_still_shown_as_text() -> None:
    assert body_view(tap(b"sites:\n  app1: 3000\n"), raw(("Content-Type", "application/octet-stream")))["kind"] == "text"
    assert body_view(tap(bytes(range(256))), raw(("Content-Type", "application/octet-stream")))["kind"] == "binary"


def test_empty_and_uncaptured_bodies() -> None:
    assert body_view(tap(b""), ())["kind"] == "empty"
    assert body_view(tap(b"x"), (), captured=False)["kind"] == "not captured"


def run_curl_words(command: str) -> list[str]:
    return shlex.split(command)


def test_curl_reproduces_method_url_headers_and_body() -> None:
    exchange = captured("POST", "/api/items?x=1", (("Content-Type", "application/json"), ("Content-Length", "9"), ("Connection", "keep-alive")), b'{"a":"b"}')
    command, note = curl_command(exchange, redact=False)
    words = run_curl_words(command)
    assert words[:4] == ["curl", "-X", "POST", "http://app1.localhost:7080/api/items?x=1"]
    assert words[4:6] == ["-H", "Content-Type: application/json"]
    assert "Content-Length: 9" not in words and "Connection: keep-alive" not in words and not any(w.startswith("Host:") for w in words)
    assert words[-2:] == ["--data-binary", '{"a":"b"}'] and note is None


def test_curl_redacts_unless_asked_and_says_so() -> None:
    exchange = captured(headers=(("Authorization", "Bearer s3cret"),))
    command, note = curl_command(exchange, redact=True)
    assert "s3cret" not in command and "Bearer [redacted]" in command and note and "redacted" in note
    command, note = curl_command(exchange, redact=False)
    assert "Authorization: Bearer s3cret" in run_curl_words(command) and note is None


def test_curl_sends_binary_bodies_byte_for_byte_through_printf() -> None:
    exchange = captured("PUT", "/blob", (), b"\x00\xff'\n")
    command, _ = curl_command(exchange, redact=False)
    assert command.startswith("printf '\\000\\377\\047\\012' | curl -X PUT ")
    assert command.endswith("--data-binary @-")


def test_curl_for_https_names_the_local_ca_and_head_uses_head() -> None:
    exchange = captured("HEAD")
    exchange.scheme = "https"
    command, _ = curl_command(exchange, redact=False, ca_path="/home/me/certs/ca.pem")
    assert run_curl_words(command)[:4] == ["curl", "--cacert", "/home/me/certs/ca.pem", "--head"]


def test_curl_leaves_out_a_truncated_body_and_says_why() -> None:
    exchange = captured("POST", "/upload", (), b"z" * (BODY_LIMIT + 1))
    command, note = curl_command(exchange, redact=False)
    assert "--data-binary" not in command and note and "larger than 64 KiB" in note


def test_replay_as_captured_drops_framing_and_host() -> None:
    exchange = captured("POST", "/x", (("Content-Length", "3"), ("Transfer-Encoding", "chunked"), ("Expect", "100-continue"), ("X-A", "1")), b"abc")
    plan = replay_request(exchange, {})
    assert (plan.method, plan.target, plan.headers, plan.body) == ("POST", "/x", [("X-A", "1")], b"abc")


def test_edit_changes_method_path_headers_and_body_and_restores_redacted_secrets() -> None:
    exchange = captured("GET", "/a", (("Authorization", "Bearer real"), ("Cookie", "sid=1")))
    plan = replay_request(
        exchange,
        {
            "method": "put",
            "path": "/b?c=d",
            "headers": [["Authorization", "Bearer [redacted]"], ["Cookie", "sid=2"], ["X-New", "yes"], ["Host", "evil"]],
            "body": "new",
        },
    )
    assert plan.method == "PUT" and plan.target == "/b?c=d" and plan.body == b"new"
    assert plan.headers == [("Authorization", "Bearer real"), ("Cookie", "sid=2"), ("X-New", "yes")]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"method": "GE T"}, "method must be a single word"),
        ({"path": "no-slash"}, "path must start with /"),
        ({"path": "/a b"}, "no spaces"),
        ({"headers": [["X-Bad", "a\r\nInjected: 1"]]}, "line break"),
        ({"headers": [["Bad Name", "v"]]}, "not a valid header name"),
        ({"headers": "X-A: 1"}, "list of [name, value] pairs"),
        ({"body": 5}, "body must be text"),
        ({"url": "http://elsewhere/"}, "unknown field(s) url"),
    ],
)
def test_bad_edits_say_which_field_and_why(edit: dict[str, object], message: str) -> None:
    with pytest.raises(EditError, match=r".*") as info:
        replay_request(captured(), edit)
    assert message in str(info.value) and not isinstance(info.value, ReplayRefused)


def test_a_truncated_or_unfinished_body_is_refused_unless_a_new_body_is_given() -> None:
    truncated = captured("POST", "/up", (("Content-Length", str(BODY_LIMIT + 1)),), b"z" * (BODY_LIMIT + 1))
    unfinished = captured("POST", "/up", (("Content-Length", "100"),), b"z" * 10, whole=False)
    for exchange in (truncated, unfinished):
        with pytest.raises(ReplayRefused):
            replay_request(exchange, {})
        assert replay_request(exchange, {"body": "small"}).body == b"small"
    assert "only the first 64 KiB were kept" in str(detail(truncated, redact=True)["replay_refusal"])
    assert detail(captured(), redact=True)["can_replay"] is True


def test_websocket_upgrades_are_not_replayed() -> None:
    exchange = captured(headers=(("Upgrade", "websocket"), ("Connection", "Upgrade")))
    with pytest.raises(ReplayRefused, match="WebSocket"):
        replay_request(exchange, {})
