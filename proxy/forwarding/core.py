"""The forwarding core: answers one request from any front-end, through that front-end's sink.

decide() says what to do; this module does it (error pages, redirects, static files, the
dashboard, forwarding) and keeps the record of every exchange: the inspector's capture, the
access log line, advice when a dev server refuses the forwarded Host. It never raises for
anything a client or an app can do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from proxy.config.model import Site, StaticRoot
from proxy.diagnostics import hosthints
from proxy.diagnostics.accesslog import AccessLog
from proxy.diagnostics.inspector import BODY_LIMIT, Exchange, RequestLog
from proxy.diagnostics.nearby import explain_refused
from proxy.forwarding.answer import NO_STORE, Answer, text_answer
from proxy.forwarding.contract import ClientGone, Field, ProxyRequest, ResponseSink, Tunnel
from proxy.forwarding.decide import (
    ForeignHost,
    Forward,
    LoopDetected,
    NoRoute,
    OwnHost,
    ProbeReady,
    RedirectToHttps,
    Refuse,
    ServeStatic,
    UnknownSite,
    decide,
)
from proxy.forwarding.failures import UpstreamFailure, failure_problem
from proxy.forwarding.health import UpstreamHealth
from proxy.forwarding.http import Forwarder, keep_unread_body
from proxy.forwarding.pages import Problem, bare_not_found, problem_answer, unknown_site_answer
from proxy.forwarding.static import serve_static
from proxy.routing.snapshot import Snapshot
from proxy.upstream.dial import upstream_accepts

log = logging.getLogger("proxy")

_ACCEPT = b"accept"


class OwnHostHandler(Protocol):
    """Who answers the proxy's own names (the dashboard)."""

    async def handle(self, request: ProxyRequest, sink: ResponseSink, dashboard_url: str) -> None: ...


class Core:
    """Answers requests against one snapshot at a time; a reload replaces `snapshot` whole."""

    def __init__(self, snapshot: Snapshot, *, forwarder: Forwarder, requests: RequestLog, access_log: AccessLog) -> None:
        self.snapshot = snapshot  # one reference: a request and a handshake see the old snapshot or the new one
        self.https_port: int | None = None  # where the HTTPS listener is, for sites that redirect to it
        self.forwarder = forwarder
        self.health: UpstreamHealth = forwarder.health
        self.requests = requests
        self.access_log = access_log
        self.own_host: OwnHostHandler | None = None
        self.in_flight: set[asyncio.Task[object]] = set()  # requests being answered, for the shutdown's grace period
        self._hinted: set[tuple[str, str]] = set()  # (site, hint) pairs already logged

    async def handle(self, request: ProxyRequest, sink: ResponseSink, *, exchange: Exchange | None = None, replay_of: int | None = None) -> Exchange:
        """Answer one request through its sink and return its record; never raises for what clients or apps do.

        `exchange` is the record to fill (new_exchange(); made here when None); `replay_of` the
        captured request this one replays (the dashboard sends replays here directly).
        """
        started = time.monotonic()
        snapshot = self.snapshot  # one snapshot for the whole request, even across a reload
        if exchange is None:
            exchange = new_exchange(request)
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.add(task)
        try:
            await self._act(request, sink, snapshot, exchange, replay_of)
        except asyncio.CancelledError:
            exchange.note = exchange.note or "client went away; upstream request cancelled"
            raise
        except ClientGone:
            exchange.note = exchange.note or "client went away; upstream request cancelled"
        except Exception:  # a bug in the proxy: log it, answer 500 if nothing was sent yet, keep serving
            log.exception("internal error while handling %s %s%s", request.method, request.authority, request.target)
            exchange.status = 500
            if sink.is_started:
                sink.abort()
            else:
                text_answer(500, "localhost-proxy hit an internal error; see its log.\n").send(sink)
        finally:
            if task is not None:
                self.in_flight.discard(task)
            exchange.duration = time.monotonic() - started
            self._note_host_refusal(exchange)
            self.requests.finish(exchange, time.time())
            self.access_log.record(request.authority, request.method, request.target, exchange.status, exchange.upstream, exchange.duration, exchange.note)
        return exchange

    async def _act(self, request: ProxyRequest, sink: ResponseSink, snapshot: Snapshot, exchange: Exchange, replay_of: int | None) -> None:
        decision = decide(request, snapshot, https_port=self.https_port)
        if isinstance(decision, Forward):  # the common case first
            self._capture(exchange, decision.match.site, replay_of)
            failure = await self.forwarder.forward(request, sink, decision, exchange)
            if failure is not None:
                self._answer(await self._failure_answer(request, decision, failure, exchange), sink, exchange)
            return
        if isinstance(decision, ServeStatic):
            self._capture(exchange, decision.match.site, replay_of)
            exchange.upstream = "static"
            await serve_static(request, _Recorded(sink, exchange), decision.root, decision.match.target, snapshot.private_paths)
            return
        if isinstance(decision, OwnHost):
            assert self.own_host is not None
            await self.own_host.handle(request, _Recorded(sink, exchange), _dashboard_url(request))
            return
        if isinstance(decision, Refuse):
            refused = decision.refusal
            # What follows on this connection cannot be trusted to be framed as meant: it is the last answer.
            problem = Problem(refused.status, refused.title, refused.detail)
            self._answer(problem_answer(problem, _accept(request), _dashboard_url(request), last=True), sink, exchange)
            return
        if isinstance(decision, ForeignHost):
            self._answer(bare_not_found(), sink, exchange)
            return
        if isinstance(decision, UnknownSite):
            self._capture(exchange, None, replay_of)
            answer = unknown_site_answer(
                decision.host, snapshot.config, self.health, _accept(request), request.scheme, request.local_port, _dashboard_url(request)
            )
        else:
            self._capture(exchange, decision.site, replay_of)
            answer = await self._site_answer(decision, request)
        self._answer(answer, sink, exchange)

    async def _site_answer(self, decision: RedirectToHttps | LoopDetected | NoRoute | ProbeReady, request: ProxyRequest) -> Answer:
        """Return the proxy's own answer for a request to a site it does not forward."""
        if isinstance(decision, RedirectToHttps):
            return Answer(308, [(b"Location", decision.location.encode("latin-1", "replace"))])  # 308 keeps the method and body
        if isinstance(decision, ProbeReady):
            return await _probe_answer(decision)
        site = decision.site
        if isinstance(decision, LoopDetected):
            problem = Problem(
                508,
                "Loop detected",
                f"This request for {site.host} came back to the proxy from its own upstream.",
                "The app behind this site forwards requests to the proxy again. Point its proxy setting at the app's real port, or set preserve_host: false.",
                {"site": site.host, "passed through": decision.passed},
            )
        else:
            problem = Problem(
                404,
                "No route for this path",
                f"{site.host} has no route that matches {decision.path}.",
                f"Add a route for it under {site.host} in sites.yaml, or a `/:` route to catch the rest.",
                {"config": str(site.mark)},
            )
        return problem_answer(problem, _accept(request), _dashboard_url(request))

    async def _failure_answer(self, request: ProxyRequest, decision: Forward, failure: UpstreamFailure, exchange: Exchange) -> Answer:
        """Return the 502/504 page for a request no upstream took, saying what listens nearby when it was refused."""
        exchange.note = failure.reason
        exchange.upstream = failure.upstream.authority if failure.upstream else ""
        await keep_unread_body(request, exchange, BODY_LIMIT)
        nearby = None
        if failure.is_refused and failure.upstream is not None and failure.upstream.is_loopback:
            nearby = await asyncio.to_thread(explain_refused, failure.upstream)
            if nearby:
                log.info("%s: %s", decision.match.site.host, nearby)
        return problem_answer(failure_problem(decision.match, failure, nearby), _accept(request), _dashboard_url(request))

    def _answer(self, answer: Answer, sink: ResponseSink, exchange: Exchange) -> None:
        """Send one of the proxy's own answers, kept for the inspector when the exchange is."""
        exchange.status = answer.status
        if exchange.is_inspected:
            exchange.response_started(answer.status, "", tuple(answer.fields))
            exchange.response_body.feed(answer.body)
            exchange.response_body.is_complete = True
        answer.send(sink)

    def _capture(self, exchange: Exchange, site: Site | None, replay_of: int | None) -> None:
        """Keep this request for the inspector, unless its site opted out with `inspect: false`."""
        exchange.site = site.host if site is not None else None
        if site is None or site.inspect or replay_of is not None:
            exchange.inspect()
            exchange.replay_of = replay_of
            self.requests.add(exchange)

    def _note_host_refusal(self, exchange: Exchange) -> None:
        """Log (once per site) and show in the inspector when a dev server refused the forwarded Host."""
        if exchange.site is None or not exchange.upstream or exchange.status not in (200, 400, 403):
            return
        if exchange.status == 200 and not hosthints.could_be_old_webpack_refusal(exchange.response_body.size):
            return
        content_type = next((v.decode("latin-1") for n, v in exchange.response_headers if n.lower() == b"content-type"), "")
        refused_host = hosthints.detect_host_refusal(exchange.status, content_type, bytes(exchange.response_body.data), exchange.host_header)
        if refused_host is None:
            return
        exchange.hint = refused_host.hint
        if (exchange.site, refused_host.hint) not in self._hinted and len(self._hinted) < 1000:
            self._hinted.add((exchange.site, refused_host.hint))
            log.warning("%s: %s", exchange.site, refused_host.hint)


def _accept(request: ProxyRequest) -> str:
    """Return what the client accepts, for the proxy's own pages (HTML, JSON or text)."""
    return (request.field(_ACCEPT) or b"").decode("latin-1")


def _dashboard_url(request: ProxyRequest) -> str:
    """Return the dashboard's address on the listener the request came in on, for the pages' links."""
    return f"{request.scheme}://localhost:{request.local_port}/" if request.local_port else f"{request.scheme}://localhost/"


def new_exchange(request: ProxyRequest) -> Exchange:
    """Return the record of a request about to be answered: what the access log and the inspector show."""
    return Exchange(request.method, request.scheme, request.authority, request.target, started_at=time.time(), request_headers=tuple(request.fields))


async def _probe_answer(decision: ProbeReady) -> Answer:
    """Return 200 once some upstream of the route accepts connections, else 503 (for the waiting error page)."""
    target = decision.target
    if isinstance(target, StaticRoot):  # files are always ready
        return text_answer(200, "ready\n")
    timeout = min(target.connect_timeout, 1.0)
    for upstream in target.addresses:
        if await upstream_accepts(upstream, timeout):
            return text_answer(200, "ready\n", NO_STORE)
    return text_answer(503, "waiting for the app\n", NO_STORE)


class _Recorded:
    """A sink that notes the answer in the exchange as it passes: the status for the access log, the
    head and the start of the body for the inspector (static files, the dashboard)."""

    def __init__(self, sink: ResponseSink, exchange: Exchange) -> None:
        self._sink = sink
        self._exchange = exchange

    @property
    def is_started(self) -> bool:
        return self._sink.is_started

    def _started(self, status: int, reason: str, fields: list[Field]) -> None:
        self._exchange.status = status
        if self._exchange.is_inspected:
            self._exchange.response_started(status, reason, tuple(fields))

    def send_whole(self, status: int, reason: str, fields: list[Field], body: bytes, *, length: int | None = None, last: bool = False) -> None:
        self._started(status, reason, fields)
        self._exchange.response_body.feed(body)
        self._sink.send_whole(status, reason, fields, body, length=length, last=last)
        self._exchange.response_body.is_complete = True

    async def start(self, status: int, reason: str, fields: list[Field], *, length: int | None = None) -> None:
        self._started(status, reason, fields)
        await self._sink.start(status, reason, fields, length=length)

    async def write(self, data: bytes) -> None:
        await self._sink.write(data)
        self._exchange.response_body.feed(data)

    async def end(self) -> None:
        await self._sink.end()
        self._exchange.response_body.is_complete = True

    def abort(self) -> None:
        self._sink.abort()

    async def upgrade(self, reason: str, fields: list[Field]) -> Tunnel:
        self._started(101, reason, fields)
        return await self._sink.upgrade(reason, fields)
