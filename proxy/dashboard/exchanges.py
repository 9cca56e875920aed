"""How a captured exchange is shown and replayed: redacted heads, body previews, curl, edits.

Pure: an Exchange in, JSON-ready dicts and strings out. The originals stay in the Exchange;
redaction happens here, on the way out, so replay can still send the real values.
"""

from __future__ import annotations

import json
import re
import shlex
import time
import zlib
from dataclasses import dataclass

from proxy.diagnostics.inspector import BODY_LIMIT, BodyTap, Exchange, RawHeaders
from proxy.forwarding.headers import HOP_BY_HOP, REPLAY_HEADER

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
REDACTED = "[redacted]"
# Written by the client library or the proxy for each request; a replay gets fresh ones.
_NOT_REPLAYED = HOP_BY_HOP | {"host", "content-length", "expect", REPLAY_HEADER.lower()}
_REPLAY = REPLAY_HEADER.lower()
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 field names and methods
_MAX_PREVIEW = 256 * 1024  # a decompressed preview never grows past this
# Media that is binary even when its bytes happen to decode as UTF-8.
_BINARY_MEDIA = ("image/", "audio/", "video/", "font/", "application/zip", "application/gzip", "application/pdf", "application/wasm")


def decode_headers(raw: RawHeaders) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]


def redact_value(name: str, value: str) -> str:
    """Hide a secret header's value but keep what helps debugging: the auth scheme, cookie names, attributes."""
    lower = name.lower()
    if lower in ("authorization", "proxy-authorization"):
        scheme, _, credentials = value.partition(" ")
        return f"{scheme} {REDACTED}" if credentials else REDACTED
    if lower == "cookie":
        return "; ".join(f"{pair.split('=', 1)[0].strip()}={REDACTED}" for pair in value.split(";") if pair.strip())
    if lower == "set-cookie":
        first, sep, attributes = value.partition(";")
        return f"{first.split('=', 1)[0].strip()}={REDACTED}{sep}{attributes}"
    return value


def shown_headers(raw: RawHeaders, *, redact: bool) -> list[list[str]]:
    return [[n, redact_value(n, v) if redact and n.lower() in SECRET_HEADERS else v] for n, v in decode_headers(raw) if n.lower() != _REPLAY]


def _header(raw: RawHeaders, name: str) -> str:
    wanted = name.lower().encode("latin-1")
    for n, v in raw:
        if n.lower() == wanted:
            return v.decode("latin-1")
    return ""


def _is_textual(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return (
        media.startswith("text/")
        or media.endswith(("+json", "+xml"))
        or media
        in ("application/json", "application/xml", "application/javascript", "application/x-www-form-urlencoded", "application/graphql", "image/svg+xml")
    )


def _looks_like_text(data: bytes, content_type: str) -> bool:
    """Return whether bytes labelled as something else (octet-stream, nothing) read as UTF-8 text."""
    if content_type.lower().startswith(_BINARY_MEDIA) or b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(data) - 3  # only a character cut off by the 64 KiB limit
    return True


def _charset(content_type: str) -> str:
    match = re.search(r"charset=\"?([\w.-]+)", content_type, re.IGNORECASE)
    return match.group(1) if match else "utf-8"


def _decompressed(data: bytes, encoding: str) -> bytes | None:
    """Return the start of a gzip or deflate body (a cut-off prefix is fine), or None if it cannot be read."""
    wbits = {"gzip": 47, "x-gzip": 47, "deflate": 15}.get(encoding.strip().lower())
    if wbits is None:
        return None
    try:
        return zlib.decompressobj(wbits).decompress(data, _MAX_PREVIEW)
    except zlib.error:
        return None


def body_view(tap: BodyTap, headers: RawHeaders, *, captured: bool = True) -> dict[str, object]:
    """Return how a body is shown: JSON pretty-printed, text as text, anything else summarized."""
    content_type = _header(headers, "Content-Type")
    view: dict[str, object] = {"size": tap.size, "captured": len(tap.data), "truncated": tap.is_truncated, "content_type": content_type}
    if not captured:
        return view | {"kind": "not captured", "text": "Bodies are not kept for this request."}
    if tap.size == 0:
        return view | {"kind": "empty", "text": ""}
    data = bytes(tap.data)
    encoding = _header(headers, "Content-Encoding")
    note = ""
    if encoding and encoding.lower() != "identity":
        unpacked = _decompressed(data, encoding)
        if unpacked is None:
            return view | {"kind": "binary", "text": f"{encoding}-compressed, {tap.size} bytes"}
        data, note = unpacked, f"decompressed from {encoding}"
    if _is_textual(content_type) or _looks_like_text(data, content_type):
        text = data.decode(_charset(content_type), errors="replace")
        if "json" in content_type.lower() and not tap.is_truncated:
            try:
                return view | {"kind": "json", "text": json.dumps(json.loads(text), indent=2, ensure_ascii=False), "note": note}
            except ValueError:
                pass
        return view | {"kind": "text", "text": text, "note": note}
    head = " ".join(f"{b:02x}" for b in data[:32])
    return view | {"kind": "binary", "text": f"binary, {tap.size} bytes{f' ({content_type})' if content_type else ''}; starts {head}"}


def state_of(exchange: Exchange) -> str:
    if exchange.duration is None:
        return "pending"
    if exchange.status == 0 or exchange.note.startswith(("upstream broke off", "client went away")):
        return "aborted"
    return "done"


def summary(exchange: Exchange) -> dict[str, object]:
    """Return the one-line facts of an exchange, as listed in the inspector."""
    return {
        "id": exchange.id,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(exchange.started_at)) + f".{int(exchange.started_at % 1 * 1000):03d}",
        "method": exchange.method,
        "scheme": exchange.scheme,
        "host": exchange.host_header,
        "site": exchange.site,
        "path": exchange.target,
        "status": exchange.status or None,
        "duration_ms": None if exchange.duration is None else round(exchange.duration * 1000, 1),
        "request_bytes": exchange.request_body.size,
        "response_bytes": exchange.response_body.size,
        "upstream": exchange.upstream,
        "note": exchange.note,
        "hint": exchange.hint,
        "replay_of": exchange.replay_of,
        "state": state_of(exchange),
        "stream": exchange.is_stream,
    }


def detail(exchange: Exchange, *, redact: bool, ca_path: str | None = None) -> dict[str, object]:
    """Return everything the inspector shows when a request is opened."""
    refusal = replay_refusal(exchange)
    curl, curl_note = curl_command(exchange, redact=redact, ca_path=ca_path)
    return summary(exchange) | {
        "request": {
            "headers": shown_headers(exchange.request_headers, redact=redact),
            "body": body_view(exchange.request_body, exchange.request_headers),
        },
        "response": None
        if not exchange.status
        else {
            "status": exchange.status,
            "reason": exchange.reason,
            "headers": shown_headers(exchange.response_headers, redact=redact),
            "body": body_view(exchange.response_body, exchange.response_headers, captured=exchange.status != 101),
        },
        "redacted": redact,
        "can_replay": refusal is None,
        "replay_refusal": refusal,
        "curl": curl,
        "curl_note": curl_note,
    }


def replay_refusal(exchange: Exchange) -> str | None:
    """Return why a request cannot be replayed as captured, or None when it can."""
    if exchange.request_body.is_truncated:
        return f"Its body was {exchange.request_body.size} bytes and only the first {BODY_LIMIT // 1024} KiB were kept, so it cannot be sent again as it was. Use edit and replay with a new body."
    if _has_body(exchange) and not exchange.request_body.is_complete:
        return "Its body never fully reached the proxy (the client or upstream stopped first), so it cannot be sent again as it was. Use edit and replay with a new body."
    if _header(exchange.request_headers, "Upgrade"):
        return "It is a WebSocket or other upgrade; reconnect from the app instead."
    return None


def _has_body(exchange: Exchange) -> bool:
    length = _header(exchange.request_headers, "Content-Length")
    return bool(_header(exchange.request_headers, "Transfer-Encoding")) or (length.strip() not in ("", "0"))


def curl_command(exchange: Exchange, *, redact: bool, ca_path: str | None = None) -> tuple[str, str | None]:
    """Return a curl command that sends this request to the proxy again, and a note when it cannot be exact.

    The URL is the one the client used (its Host header names the proxy's port); ca_path is the
    local CA's certificate, so the command works before the CA is trusted system-wide.
    """
    parts = ["curl"]
    if exchange.scheme == "https" and ca_path:
        parts += ["--cacert", shlex.quote(ca_path)]
    if exchange.method == "HEAD":
        parts.append("--head")
    elif exchange.method != "GET" or (exchange.request_body.size and exchange.method == "GET"):
        parts += ["-X", shlex.quote(exchange.method)]
    parts.append(shlex.quote(f"{exchange.scheme}://{exchange.host_header or 'localhost'}{exchange.target}"))
    for name, value in decode_headers(exchange.request_headers):
        if name.lower() in _NOT_REPLAYED:
            continue
        shown = redact_value(name, value) if redact and name.lower() in SECRET_HEADERS else value
        parts += ["-H", shlex.quote(f"{name}: {shown}")]
    note = None
    if redact and any(n.lower() in SECRET_HEADERS for n, _ in decode_headers(exchange.request_headers)):
        note = "Secret header values are shown as [redacted]; turn redaction off to copy the real ones."
    body = bytes(exchange.request_body.data)
    printf = ""
    if exchange.request_body.is_truncated:
        note = f"The body ({exchange.request_body.size} bytes) was larger than {BODY_LIMIT // 1024} KiB and is left out."
    elif body:
        try:
            parts += ["--data-binary", shlex.quote(body.decode("utf-8"))]
        except UnicodeDecodeError:  # binary: printf writes it byte for byte from octal escapes
            printf = "printf '" + "".join(f"\\{b:03o}" for b in body) + "' | "
            parts += ["--data-binary", "@-"]
    return printf + " ".join(parts), note


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """What a replay sends: the original request, or the user's edit of it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


class EditError(ValueError):
    """An edit-and-replay form that cannot be sent; the message says which field and why."""


class ReplayRefused(EditError):
    """The captured request cannot be sent again as it was (its body was not kept whole)."""


def replay_request(exchange: Exchange, edit: dict[str, object]) -> ReplayRequest:
    """Return the request to send again: the captured original with `edit` applied.

    `edit` may set method, path, headers ([[name, value], ...]) and body (text). A secret header
    sent back still showing [redacted] gets its original value. Raises EditError for a bad edit,
    and for an original that cannot be replayed as captured (when no new body is given).
    """
    unknown = set(edit) - {"method", "path", "headers", "body"}
    if unknown:
        raise EditError(f"unknown field(s) {', '.join(sorted(unknown))}; an edit may set method, path, headers and body")
    method = edit.get("method", exchange.method)
    if not isinstance(method, str) or not _TOKEN.match(method):
        raise EditError("method must be a single word such as GET or POST")
    target = edit.get("path", exchange.target)
    if not isinstance(target, str) or not target.startswith("/") or any(c in target for c in " \r\n\0"):
        raise EditError("path must start with / and contain no spaces or line breaks (encode them, e.g. %20)")
    originals = [(n, v) for n, v in decode_headers(exchange.request_headers) if n.lower() not in _NOT_REPLAYED]
    headers = originals
    if "headers" in edit:
        headers = _edited_headers(edit["headers"], originals)
    body_field = edit.get("body")
    if body_field is None:
        refusal = replay_refusal(exchange)
        if refusal is not None:
            raise ReplayRefused(f"This request cannot be replayed: {refusal}")
        body = bytes(exchange.request_body.data)
    elif isinstance(body_field, str):
        body = body_field.encode("utf-8")
    else:
        raise EditError("body must be text (or null to send the captured body)")
    return ReplayRequest(method.upper(), target, headers, body)


def _edited_headers(value: object, originals: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value):
        raise EditError('headers must be a list of [name, value] pairs, e.g. [["Accept", "application/json"]]')
    # Each redacted line sent back gets the original it was shown for, repeated headers included.
    secrets: dict[tuple[str, str], list[str]] = {}
    for n, v in originals:
        if n.lower() in SECRET_HEADERS:
            secrets.setdefault((n.lower(), redact_value(n, v)), []).append(v)
    headers: list[tuple[str, str]] = []
    for name, text in value:
        name = name.strip()
        if not _TOKEN.match(name):
            raise EditError(f"{name!r} is not a valid header name")
        if any(c in text for c in "\r\n\0"):
            raise EditError(f"the value of {name} contains a line break")
        if name.lower() in _NOT_REPLAYED:
            continue  # framing and Host are the proxy's to set
        shown_for = secrets.get((name.lower(), text))
        if shown_for:
            text = shown_for.pop(0) if len(shown_for) > 1 else shown_for[0]
        headers.append((name, text))
    return headers
