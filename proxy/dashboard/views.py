"""The proxy's own hosts (localhost, proxy.localhost, 127.0.0.1, [::1]): dashboard, JSON API, live events, replay.

Only requests whose Host is one of those names reach this module (decide() routes by Host), so a
DNS-rebinding page at another name never sees it. No CORS headers are ever sent; replay, the one
endpoint that makes the proxy do something, takes only a JSON POST from the dashboard's own origin.
Answers go through the same response sink as everything else, whatever protocol the client spoke.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import parse_qsl

from proxy.config.model import Upstreams
from proxy.dashboard import exchanges, pages
from proxy.dashboard.state import ProxyView
from proxy.diagnostics.inspector import BODY_LIMIT, Exchange
from proxy.forwarding.answer import NO_STORE, Answer, json_answer
from proxy.forwarding.contract import ClientGone, Field, ProxyRequest, RequestBody, ResponseSink, Tunnel
from proxy.forwarding.pages import Problem, problem_answer
from proxy.names import OWN_HOSTS
from proxy.upstream.dial import upstream_accepts

log = logging.getLogger("proxy")

PROBE_INTERVAL = 2.0  # seconds between up/down checks while a dashboard is open
KEEPALIVE_INTERVAL = 15.0  # an SSE comment line, so dead clients are noticed
SUBSCRIBER_BACKLOG = 500  # events queued for one slow dashboard before it is dropped (it reconnects)
REPLAY_READ_LIMIT = 10.0  # seconds a replay waits for its answer's body (an SSE stream never ends)
MAX_EDIT_SIZE = 1024 * 1024
COUNTS_DELAY = 0.5  # seconds: traffic counts are re-sent at most this often, however busy the sites
_SCRIPT = resources.files(__package__).joinpath("dashboard.js").read_bytes()
_EVENT_STREAM: list[Field] = [(b"Content-Type", b"text/event-stream"), NO_STORE]


@dataclass(eq=False)
class _Subscriber:
    queue: asyncio.Queue[tuple[str, str] | None] = field(default_factory=lambda: asyncio.Queue(SUBSCRIBER_BACKLOG))
    is_dropped: bool = False


def _error(status: int, error: str, detail: str) -> Answer:
    return json_answer(status, {"error": error, "detail": detail}, NO_STORE)


class Dashboard:
    """Answers the proxy's own hosts; keeps the live event stream and the up/down probe going."""

    def __init__(self, proxy: ProxyView, *, show_secrets: bool = False) -> None:
        self.proxy = proxy
        self.show_secrets = show_secrets  # the default for views; ?secrets=show reveals per request
        self._subscribers: set[_Subscriber] = set()
        self._prober: asyncio.Task[None] | None = None
        self._last_sites = ""
        self._counts_due = False
        proxy.requests.on_finish.append(self._request_finished)

    # ------------------------------------------------------------ routing

    async def handle(self, request: ProxyRequest, sink: ResponseSink, dashboard_url: str) -> None:
        """Answer one request for the proxy's own names through its sink."""
        path, _, raw_query = request.target.partition("?")
        query = _first_values(raw_query)
        accept = (request.field(b"accept") or b"").decode("latin-1")
        scheme, port = request.scheme, request.local_port
        if path.startswith("/api/requests/") and path.endswith("/replay"):
            (await self._replay(request, path.removeprefix("/api/requests/").removesuffix("/replay"))).send(sink)
            return
        if request.method not in ("GET", "HEAD"):
            # No CORS and no Private-Network-Access answers: a preflight from another origin fails here.
            _error(405, "method not allowed", f"{path} answers GET only.").send(sink)
            return
        if path == "/api/events":
            await self._events(sink, scheme, port)
            return
        if path == "/":
            answer = pages.index_answer(self.proxy.config, self.proxy.config_error, self.proxy.health, accept, scheme, port, dashboard_url, self.activity())
        elif path == "/assets/dashboard.js":
            answer = Answer(200, [(b"Content-Type", b"text/javascript; charset=utf-8"), (b"Cache-Control", b"no-cache")], _SCRIPT)
        elif path == "/api/sites":
            if query.get("check"):
                await self.probe_upstreams()
            answer = json_answer(200, self.sites_document(scheme, port), NO_STORE)
        elif path == "/api/requests":
            answer = self._list_requests(query)
        elif path.startswith("/api/requests/"):
            answer = self._one_request(query, path.removeprefix("/api/requests/"))
        else:
            answer = problem_answer(
                Problem(
                    404,
                    "Not found",
                    f"The proxy has no page at {path}.",
                    "The dashboard is at /; the API is described in the README (/api/sites, /api/requests, /api/events).",
                ),
                accept,
                dashboard_url,
            )
        answer.send(sink)

    def _redact(self, query: dict[str, str]) -> bool:
        wanted = query.get("secrets", "")
        return not (wanted == "show" or (self.show_secrets and wanted != "hide"))

    # ------------------------------------------------------------ sites

    def activity(self) -> dict[str, tuple[int, int]]:
        """Return (requests, errors) over the last minute for every site."""
        now = time.time()
        return {site.host: self.proxy.requests.counts.last_minute(site.host, now) for site in self.proxy.config.sites}

    def sites_document(self, scheme: str, port: int | None) -> dict[str, object]:
        return pages.api_sites(self.proxy.config, self.proxy.config_error, self.proxy.health, scheme, port, self.activity())

    async def probe_upstreams(self) -> None:
        """Check every configured upstream accepts connections, and record it as up or down."""
        upstreams = list({u for site in self.proxy.config.sites for r in site.routes if isinstance(r.target, Upstreams) for u in r.target.addresses})
        states = await asyncio.gather(*(upstream_accepts(u, timeout=1.0) for u in upstreams))
        for upstream, is_up in zip(upstreams, states):
            if is_up:
                self.proxy.health.mark_up(upstream)
            else:
                self.proxy.health.mark_down(upstream, "connection refused")

    # ------------------------------------------------------------ requests

    def _list_requests(self, query: dict[str, str]) -> Answer:
        site, status = query.get("site", ""), query.get("status", "")
        try:
            limit = max(1, min(int(query.get("limit", "500")), 500))
        except ValueError:
            return _error(400, "bad limit", "limit must be a number from 1 to 500")
        if status and not _status_filter_is_valid(status):
            return _error(400, "bad status filter", "status is a code (404), a class (2xx, 3xx, 4xx, 5xx) or `failed`")
        found = [e for e in self.proxy.requests.newest_first() if (not site or e.site == site or e.host_header == site) and _status_matches(e, status)]
        return json_answer(200, {"capacity": self.proxy.requests.capacity, "requests": [exchanges.summary(e) for e in found[:limit]]}, NO_STORE)

    def _one_request(self, query: dict[str, str], raw_id: str) -> Answer:
        exchange = self.proxy.requests.get(int(raw_id)) if raw_id.isdigit() else None
        if exchange is None:
            return _error(404, "no such request", f"Request {raw_id} is not (or no longer) kept; the inspector keeps the last {self.proxy.requests.capacity}.")
        return json_answer(200, exchanges.detail(exchange, redact=self._redact(query), ca_path=self.proxy.ca_cert_path), NO_STORE)

    def _request_finished(self, exchange: Exchange) -> None:
        if not self._subscribers:
            return
        self._publish("request", json.dumps(exchanges.summary(exchange)))
        if not self._counts_due:  # the sites' last-minute counts follow within COUNTS_DELAY, not per request
            self._counts_due = True
            asyncio.get_running_loop().call_later(COUNTS_DELAY, self._publish_counts)

    def _publish_counts(self) -> None:
        self._counts_due = False
        if self._subscribers:
            self._publish_sites()

    # ------------------------------------------------------------ replay

    def own_origins(self) -> set[str]:
        """Return every origin the dashboard can be loaded from: reserved host x bound port x scheme."""
        origins = set()
        for listener in self.proxy.listeners:
            default = 443 if listener.scheme == "https" else 80
            suffix = "" if listener.port == default else f":{listener.port}"
            for host in OWN_HOSTS - {"::1"}:
                origins.add(f"{listener.scheme}://{host}{suffix}")
        return origins

    def _refuse_state_change(self, request: ProxyRequest) -> str | None:
        """Return why a request may not change anything, or None when it comes from the dashboard itself."""
        if request.method != "POST":
            return "replay takes POST"
        content_type = (request.field(b"content-type") or b"").decode("latin-1").partition(";")[0].strip().lower()
        if content_type != "application/json":
            return "replay takes a JSON body (Content-Type: application/json)"
        origin = request.field(b"origin")
        if origin is not None:
            text = origin.decode("latin-1")
            return None if text in self.own_origins() else f"origin {text} is not the dashboard's own"
        if request.field(b"sec-fetch-site") == b"same-origin":
            return None
        example = next((o for o in sorted(self.own_origins()) if "://localhost" in o), "http://localhost:7080")
        return f"send the dashboard's own origin in Origin (e.g. {example})"

    async def _replay(self, request: ProxyRequest, raw_id: str) -> Answer:
        refusal = self._refuse_state_change(request)
        if refusal is not None:
            return _error(403, "forbidden", f"{refusal}; only the dashboard may replay requests.")
        original = self.proxy.requests.get(int(raw_id)) if raw_id.isdigit() else None
        if original is None:
            return _error(404, "no such request", f"Request {raw_id} is not (or no longer) kept.")
        too_large = _error(413, "edit too large", f"an edited request may be at most {MAX_EDIT_SIZE // 1024} KiB")
        if request.body is not None and (request.body.length or 0) > MAX_EDIT_SIZE:
            return too_large
        text = await _read_body(request.body, MAX_EDIT_SIZE)
        if text is None:  # a chunked body has no length to check first
            return too_large
        try:
            edit = json.loads(text or b"{}")
        except ValueError:
            return _error(400, "bad JSON", "the body must be a JSON object: {} to replay as captured, or {method, path, headers, body}")
        if not isinstance(edit, dict):
            return _error(400, "bad JSON", "the body must be a JSON object")
        try:
            plan = exchanges.replay_request(original, edit)
        except exchanges.ReplayRefused as exc:
            return _error(409, "cannot replay", str(exc))
        except exchanges.EditError as exc:
            return _error(400, "bad edit", str(exc))
        return await self._send_replay(original, plan)

    async def _send_replay(self, original: Exchange, plan: exchanges.ReplayRequest) -> Answer:
        """Send the request through the whole forwarding path, as if its client had sent it again, and record it anew."""
        fields: list[Field] = [(b"Host", _field_bytes(original.host_header)), *((_field_bytes(n), _field_bytes(v)) for n, v in plan.headers)]
        has_body = bool(plan.body) or plan.method not in ("GET", "HEAD")
        if has_body:
            fields.append((b"Content-Length", b"%d" % len(plan.body)))
        request = ProxyRequest(
            plan.method,
            plan.target,
            original.host_header,
            fields,
            _BytesBody(plan.body) if has_body else None,
            scheme=original.scheme,
            client_ip="127.0.0.1",  # the proxy itself, on loopback
            local_port=self.proxy.port_of(original.scheme),
            protocol="HTTP/1.1",
        )
        exchange = self.proxy.new_exchange(request)
        sink = _ReplaySink()
        replaying = asyncio.ensure_future(self.proxy.replay(request, sink, exchange=exchange, replay_of=original.id))
        try:
            await asyncio.wait([replaying, sink.answered], return_when=asyncio.FIRST_COMPLETED)
            # The answer has begun: its body gets REPLAY_READ_LIMIT (an event stream never ends).
            await asyncio.wait([replaying], timeout=REPLAY_READ_LIMIT)
        finally:
            if not replaying.done():
                replaying.cancel()
                await asyncio.wait([replaying])
        return json_answer(200, {"replay_of": original.id, "request": exchanges.summary(exchange)}, NO_STORE)

    # ------------------------------------------------------------ live events

    def _publish(self, event: str, data: str) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber.queue.put_nowait((event, data))
            except asyncio.QueueFull:  # too slow to keep up: drop it; EventSource reconnects and starts fresh
                subscriber.is_dropped = True
                self._subscribers.discard(subscriber)

    def sites_changed(self) -> None:
        """Tell open dashboards now, not at the next probe: a reload or a config error."""
        if self._subscribers:
            self._publish_sites()

    def _publish_sites(self) -> None:
        # Dashboards build their links from their own location, so one document serves all.
        document = json.dumps(self.sites_document("http", self.proxy.port_of("http")))
        if document != self._last_sites:
            self._last_sites = document
            self._publish("sites", document)

    async def _probe_while_watched(self) -> None:
        while self._subscribers:
            try:
                await self.probe_upstreams()
                self._publish_sites()
            except Exception:  # a bug here must not end live updates for good
                log.exception("internal error while checking upstreams")
            await asyncio.sleep(PROBE_INTERVAL)
        self._prober = None

    async def _events(self, sink: ResponseSink, scheme: str, port: int | None) -> None:
        """Server-sent events: `sites` (the /api/sites document, on change) and `request` (each finished request)."""
        await sink.start(200, "", _EVENT_STREAM)
        subscriber = _Subscriber()
        self._subscribers.add(subscriber)
        if self._prober is None:
            self._prober = asyncio.create_task(self._probe_while_watched())
        try:
            await sink.write(_event("sites", json.dumps(self.sites_document(scheme, port))))
            while not subscriber.is_dropped:
                try:
                    item = await asyncio.wait_for(subscriber.queue.get(), KEEPALIVE_INTERVAL)
                except TimeoutError:
                    await sink.write(b": keep-alive\n\n")
                    continue
                if item is None:
                    break
                await sink.write(_event(*item))
            await sink.end()
        except ClientGone:
            pass
        finally:
            self._subscribers.discard(subscriber)

    async def close(self) -> None:
        """End every event stream (for shutdown)."""
        for subscriber in list(self._subscribers):
            subscriber.is_dropped = True
            with contextlib.suppress(asyncio.QueueFull):
                subscriber.queue.put_nowait(None)
        self._subscribers.clear()
        if self._prober is not None:
            self._prober.cancel()


def _event(name: str, data: str) -> bytes:
    return f"event: {name}\ndata: {data}\n\n".encode()


def _first_values(query: str) -> dict[str, str]:
    """Return each query parameter's first value."""
    values: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        values.setdefault(name, value)
    return values


def _field_bytes(text: str) -> bytes:
    """Encode a field name or value back to the bytes it was captured as (shown as Latin-1); an edit's other characters as UTF-8."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


async def _read_body(body: RequestBody | None, limit: int) -> bytes | None:
    """Return a small request body whole, or None when it is larger than limit."""
    if body is None:
        return b""
    data = bytearray()
    async for chunk in body.chunks():
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


class _BytesBody(RequestBody):
    """A replayed request's body, all in memory."""

    def __init__(self, data: bytes) -> None:
        super().__init__(len(data))
        self._data = data

    async def chunks(self) -> AsyncIterator[bytes]:
        self.is_started = True
        if self._data:
            yield self._data


class _ReplaySink:
    """Where a replay's answer goes: read up to BODY_LIMIT (the inspector keeps that much), then the client leaves."""

    def __init__(self) -> None:
        self.answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.is_started = False
        self._read = 0

    def _head(self) -> None:
        self.is_started = True
        if not self.answered.done():
            self.answered.set_result(None)

    def send_whole(self, status: int, reason: str, fields: list[Field], body: bytes, *, length: int | None = None, last: bool = False) -> None:
        self._head()

    async def start(self, status: int, reason: str, fields: list[Field], *, length: int | None = None) -> None:
        self._head()

    async def write(self, data: bytes) -> None:
        self._read += len(data)
        if self._read > BODY_LIMIT:
            raise ClientGone("the replay has read what the inspector keeps")

    async def end(self) -> None:
        pass

    def abort(self) -> None:
        pass

    async def upgrade(self, reason: str, fields: list[Field]) -> Tunnel:
        raise ClientGone("a replay does not open WebSockets")


def _status_filter_is_valid(status: str) -> bool:
    return status == "failed" or (len(status) == 3 and (status.isdigit() or (status[0] in "12345" and status[1:] == "xx")))


def _status_matches(exchange: Exchange, status: str) -> bool:
    if not status:
        return True
    if status == "failed":
        return exchanges.state_of(exchange) == "aborted" or exchange.status >= 500
    if status.endswith("xx"):
        return exchange.status // 100 == int(status[0])
    return exchange.status == int(status)
