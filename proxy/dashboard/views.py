"""The proxy's own hosts (localhost, proxy.localhost, 127.0.0.1, [::1]): dashboard, JSON API, live events, replay.

Only requests whose Host is one of those names reach this module (server.py routes by Host), so a
DNS-rebinding page at another name never sees it. No CORS headers are ever sent; replay, the one
endpoint that makes the proxy do something, takes only a JSON POST from the dashboard's own origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.config.model import Upstream, Upstreams
from proxy.dashboard import exchanges, pages
from proxy.diagnostics.inspector import BODY_LIMIT, Exchange
from proxy.diagnostics.ports import accepts_connections
from proxy.forwarding.headers import REPLAY_HEADER
from proxy.names import OWN_HOSTS, format_host, normalize_host

if TYPE_CHECKING:
    from proxy.server import ProxyServer

log = logging.getLogger("proxy")

PROBE_INTERVAL = 2.0  # seconds between up/down checks while a dashboard is open
KEEPALIVE_INTERVAL = 15.0  # an SSE comment line, so dead clients are noticed
SUBSCRIBER_BACKLOG = 500  # events queued for one slow dashboard before it is dropped (it reconnects)
REPLAY_READ_LIMIT = 10.0  # seconds a replay waits for its answer's body (an SSE stream never ends)
MAX_EDIT_SIZE = 1024 * 1024
COUNTS_DELAY = 0.5  # seconds: traffic counts are re-sent at most this often, however busy the sites
_SCRIPT = resources.files(__package__).joinpath("dashboard.js").read_bytes()
_JSON_HEADERS = {"Cache-Control": "no-store"}


@dataclass(eq=False)
class _Subscriber:
    queue: asyncio.Queue[tuple[str, str] | None] = field(default_factory=lambda: asyncio.Queue(SUBSCRIBER_BACKLOG))
    is_dropped: bool = False


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(payload, indent=2), status=status, content_type="application/json", headers=_JSON_HEADERS)


def _error(status: int, error: str, detail: str) -> web.Response:
    return _json({"error": error, "detail": detail}, status)


class Dashboard:
    """Answers the proxy's own hosts; keeps the live event stream and the up/down probe going."""

    def __init__(self, server: ProxyServer, *, show_secrets: bool = False) -> None:
        self.server = server
        self.show_secrets = show_secrets  # the default for views; ?secrets=show reveals per request
        self._subscribers: set[_Subscriber] = set()
        self._prober: asyncio.Task[None] | None = None
        self._last_sites = ""
        self._counts_due = False
        self._pending_replays: dict[str, tuple[int, asyncio.Future[Exchange]]] = {}
        self._session: aiohttp.ClientSession | None = None
        server.requests.on_finish.append(self._request_finished)

    # ------------------------------------------------------------ routing

    async def handle(self, request: web.BaseRequest, target: str, accept: str, scheme: str, port: int | None, dashboard_url: str) -> web.StreamResponse:
        path, _, _ = target.partition("?")
        query = request.rel_url.query
        method = request.method
        if path.startswith("/api/requests/") and path.endswith("/replay"):
            return await self._replay(request, path.removeprefix("/api/requests/").removesuffix("/replay"))
        if method not in ("GET", "HEAD"):
            # No CORS and no Private-Network-Access answers: a preflight from another origin fails here.
            return _error(405, "method not allowed", f"{path} answers GET only.")
        if path == "/":
            return pages.index_response(self.server.config, self.server.config_error, self.server.book, accept, scheme, port, dashboard_url, self.activity())
        if path == "/assets/dashboard.js":
            return web.Response(body=_SCRIPT, content_type="text/javascript", headers={"Cache-Control": "no-cache"})
        if path == "/api/sites":
            if query.get("check"):
                await self.probe_upstreams()
            return _json(self.sites_document(scheme, port))
        if path == "/api/requests":
            return self._list_requests(request)
        if path.startswith("/api/requests/"):
            return self._one_request(request, path.removeprefix("/api/requests/"))
        if path == "/api/events":
            return await self._events(request, scheme, port)
        return pages.problem_response(
            pages.Problem(
                404,
                "Not found",
                f"The proxy has no page at {path}.",
                "The dashboard is at /; the API is described in the README (/api/sites, /api/requests, /api/events).",
            ),
            accept,
            dashboard_url,
        )

    def _redact(self, request: web.BaseRequest) -> bool:
        wanted = request.rel_url.query.get("secrets", "")
        return not (wanted == "show" or (self.show_secrets and wanted != "hide"))

    # ------------------------------------------------------------ sites

    def activity(self) -> dict[str, tuple[int, int]]:
        """Return (requests, errors) over the last minute for every site."""
        now = time.time()
        return {site.host: self.server.requests.counts.last_minute(site.host, now) for site in self.server.config.sites}

    def sites_document(self, scheme: str, port: int | None) -> dict[str, object]:
        return pages.api_sites(self.server.config, self.server.config_error, self.server.book, scheme, port, self.activity())

    async def probe_upstreams(self) -> None:
        """Check every configured upstream accepts connections, and record it as up or down."""
        upstreams = {u for site in self.server.config.sites for r in site.routes if isinstance(r.target, Upstreams) for u in r.target.addresses}

        async def probe(upstream: Upstream) -> None:
            for host in upstream.dial_hosts:
                if await accepts_connections(host, upstream.port, timeout=1.0):
                    self.server.book.mark_up(upstream)
                    return
            self.server.book.mark_down(upstream, "connection refused")

        await asyncio.gather(*(probe(u) for u in upstreams))

    # ------------------------------------------------------------ requests

    def _list_requests(self, request: web.BaseRequest) -> web.Response:
        query = request.rel_url.query
        site, status = query.get("site", ""), query.get("status", "")
        try:
            limit = max(1, min(int(query.get("limit", "500")), 500))
        except ValueError:
            return _error(400, "bad limit", "limit must be a number from 1 to 500")
        if status and not _status_filter_is_valid(status):
            return _error(400, "bad status filter", "status is a code (404), a class (2xx, 3xx, 4xx, 5xx) or `failed`")
        found = [e for e in self.server.requests.newest_first() if (not site or e.site == site or e.host_header == site) and _status_matches(e, status)]
        return _json({"capacity": self.server.requests.capacity, "requests": [exchanges.summary(e) for e in found[:limit]]})

    def _one_request(self, request: web.BaseRequest, raw_id: str) -> web.Response:
        exchange = self.server.requests.get(int(raw_id)) if raw_id.isdigit() else None
        if exchange is None:
            return _error(404, "no such request", f"Request {raw_id} is not (or no longer) kept; the inspector keeps the last {self.server.requests.capacity}.")
        ca_path = self.server.leaves.ca.cert_path if self.server.leaves is not None else None
        return _json(exchanges.detail(exchange, redact=self._redact(request), ca_path=ca_path))

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
        for listener in self.server.listeners:
            default = 443 if listener.scheme == "https" else 80
            suffix = "" if listener.port == default else f":{listener.port}"
            for host in OWN_HOSTS - {"::1"}:
                origins.add(f"{listener.scheme}://{host}{suffix}")
        return origins

    def _refuse_state_change(self, request: web.BaseRequest) -> str | None:
        """Return why a request may not change anything, or None when it comes from the dashboard itself."""
        if request.method != "POST":
            return "replay takes POST"
        if request.content_type != "application/json":
            return "replay takes a JSON body (Content-Type: application/json)"
        origin = request.headers.get("Origin")
        if origin is not None:
            return None if origin in self.own_origins() else f"origin {origin} is not the dashboard's own"
        if request.headers.get("Sec-Fetch-Site") == "same-origin":
            return None
        example = next((o for o in sorted(self.own_origins()) if "://localhost" in o), "http://localhost:7080")
        return f"send the dashboard's own origin in Origin (e.g. {example})"

    def claim_replay(self, token: str) -> int | None:
        """Return the captured request a replay is for, if `token` was issued by this dashboard."""
        pending = self._pending_replays.get(token)
        return pending[0] if pending else None

    def replay_started(self, token: str, exchange: Exchange) -> None:
        pending = self._pending_replays.get(token)
        if pending and not pending[1].done():
            pending[1].set_result(exchange)

    async def _replay(self, request: web.BaseRequest, raw_id: str) -> web.Response:
        refusal = self._refuse_state_change(request)
        if refusal is not None:
            return _error(403, "forbidden", f"{refusal}; only the dashboard may replay requests.")
        original = self.server.requests.get(int(raw_id)) if raw_id.isdigit() else None
        if original is None:
            return _error(404, "no such request", f"Request {raw_id} is not (or no longer) kept.")
        if (request.content_length or 0) > MAX_EDIT_SIZE:
            return _error(413, "edit too large", f"an edited request may be at most {MAX_EDIT_SIZE // 1024} KiB")
        try:
            edit = json.loads(await request.read() or b"{}")
        except web.HTTPRequestEntityTooLarge:  # a chunked body has no Content-Length to check first
            return _error(413, "edit too large", f"an edited request may be at most {MAX_EDIT_SIZE // 1024} KiB")
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

    async def _send_replay(self, original: Exchange, plan: exchanges.ReplayRequest) -> web.Response:
        """Send the request to the proxy's own listener, so it takes the whole path and is captured anew."""
        listeners = [li for li in self.server.listeners if li.scheme == original.scheme] or self.server.listeners
        if not listeners:
            return _error(503, "not listening", "the proxy has no listener to replay through")
        listener = listeners[0]
        token = secrets.token_hex(16)
        started: asyncio.Future[Exchange] = asyncio.get_running_loop().create_future()
        self._pending_replays[token] = (original.id, started)
        headers = [("Host", original.host_header), *plan.headers, (REPLAY_HEADER, token)]
        url = URL(f"{listener.scheme}://{format_host(listener.host)}:{listener.port}{plan.target}", encoded=True)
        try:
            async with self._client().request(
                plan.method,
                url,
                headers=headers,
                data=plan.body if plan.body or plan.method not in ("GET", "HEAD") else None,
                ssl=False,  # our own listener on loopback; the name is still sent for the SNI pick
                server_hostname=normalize_host(original.host_header) if listener.scheme == "https" else None,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            ) as answer:
                await _read_some(answer)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return _error(502, "replay failed", f"the proxy could not replay through {listener.url}: {exc}")
        finally:
            self._pending_replays.pop(token, None)
        if not started.done():
            return _error(502, "replay lost", "the replayed request did not reach the proxy")
        replayed = started.result()
        for _ in range(200):  # the handler finishes its record a moment after the last byte
            if replayed.duration is not None:
                break
            await asyncio.sleep(0.01)
        return _json({"replay_of": original.id, "request": exchanges.summary(replayed)})

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

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
        document = json.dumps(self.sites_document("http", self.server.port_of("http")))
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

    async def _events(self, request: web.BaseRequest, scheme: str, port: int | None) -> web.StreamResponse:
        """Server-sent events: `sites` (the /api/sites document, on change) and `request` (each finished request)."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        subscriber = _Subscriber()
        self._subscribers.add(subscriber)
        if self._prober is None:
            self._prober = asyncio.create_task(self._probe_while_watched())
        try:
            await response.write(_event("sites", json.dumps(self.sites_document(scheme, port))))
            while not subscriber.is_dropped:
                try:
                    item = await asyncio.wait_for(subscriber.queue.get(), KEEPALIVE_INTERVAL)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if item is None:
                    break
                await response.write(_event(*item))
        except ConnectionResetError:
            pass
        finally:
            self._subscribers.discard(subscriber)
        return response

    async def close(self) -> None:
        """End every event stream (for shutdown) and the replay client."""
        for subscriber in list(self._subscribers):
            subscriber.is_dropped = True
            with contextlib.suppress(asyncio.QueueFull):
                subscriber.queue.put_nowait(None)
        self._subscribers.clear()
        if self._prober is not None:
            self._prober.cancel()
        if self._session is not None:
            await self._session.close()


def _event(name: str, data: str) -> bytes:
    return f"event: {name}\ndata: {data}\n\n".encode()


async def _read_some(answer: aiohttp.ClientResponse) -> None:
    """Read a replay's answer until it ends, BODY_LIMIT bytes or REPLAY_READ_LIMIT seconds: the inspector keeps the rest."""
    read = 0
    try:
        async with asyncio.timeout(REPLAY_READ_LIMIT):
            async for chunk in answer.content.iter_any():
                read += len(chunk)
                if read > BODY_LIMIT:
                    break
    except TimeoutError:
        pass


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
