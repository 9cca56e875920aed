"""Listeners, request dispatch by Host, config swap, graceful stop.

Owns the sockets and the event-loop side of the proxy; decisions about names, paths and
headers come from routing.py and headers.py, forwarding from forward.py.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import HttpVersion10, HttpVersion11, web

from proxy.config.load import certs_folder
from proxy.config.model import Config, ListenAddress, Site, StaticRoot, Upstreams
from proxy.dashboard import pages
from proxy.dashboard.views import Dashboard
from proxy.diagnostics import hosthints
from proxy.diagnostics.accesslog import AccessLog
from proxy.diagnostics.hosthints import detect_host_refusal
from proxy.diagnostics.inspector import BODY_LIMIT, Exchange, RequestLog
from proxy.diagnostics.nearby import explain_refused
from proxy.diagnostics.ports import accepts_connections, describe_listener
from proxy.errors import ListenError
from proxy.forwarding.admission import refusal
from proxy.forwarding.headers import LOOP_HEADER, REPLAY_HEADER, sites_passed
from proxy.forwarding.health import UpstreamBook
from proxy.forwarding.http import Forwarder, UpstreamFailure, is_websocket_upgrade, new_upstream_session
from proxy.forwarding.static import serve_static
from proxy.frontends.http1.connection import GuardedServer
from proxy.frontends.http1.heads import ClientRequest, aiohttp_request
from proxy.names import format_host, normalize_host
from proxy.routing.table import HostKind, RouteMatch, RoutingTable, match_route
from proxy.tls.ca import AlertingSSLObject, LeafCache, context_from_files, is_local_tls_name

log = logging.getLogger("proxy")

SHUTDOWN_GRACE = 5.0  # seconds in-flight requests get after SIGTERM
# Room for the large cookies dev apps accumulate on localhost (aiohttp's default is 8 KiB a line).
MAX_HEADER_FIELD = 32 * 1024


@dataclass(frozen=True, slots=True)
class Listener:
    """One bound socket."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"{self.scheme}://{format_host(self.host)}:{self.port}"


@dataclass
class _Bound:
    """The sockets one scheme listens on, and the address they were bound for."""

    address: ListenAddress
    sites: list[web.SockSite]
    listeners: list[Listener]


class ProxyServer:
    """The running proxy: one routing table at a time, swapped whole on reload."""

    def __init__(self, config: Config, *, leaves: LeafCache | None = None, show_secrets: bool = False, max_connections: int = 10_000) -> None:
        self.config = config
        self.max_connections = max_connections  # client connections served at once; see connections.py
        self.table = RoutingTable(config.sites)
        self.leaves = leaves  # None: no HTTPS listener
        self.site_contexts = load_site_contexts(config)  # sites that bring their own certificate
        self._config_error: str | None = None
        self.private_paths = private_paths(config, leaves)
        self.book = UpstreamBook()
        self.requests = RequestLog()
        self.access_log = AccessLog(logging.getLogger("proxy.access"))
        self.dashboard = Dashboard(self, show_secrets=show_secrets)
        self._hinted: set[tuple[str, str]] = set()  # (site, hint) pairs already logged
        self._bound: dict[str, _Bound] = {}  # by scheme
        self._refused_names: set[str] = set()  # TLS names already logged as refused
        self._forwarder: Forwarder | None = None
        self._runner: web.ServerRunner | None = None
        self._in_flight: set[asyncio.Task[object]] = set()  # handler tasks, for the shutdown grace
        _warn_about_names_outside_the_ca(config.sites, self.site_contexts, https=leaves is not None)

    def apply(self, config: Config) -> None:
        """Swap in a new config. One assignment: a request sees the old table or the new one.

        Raises CertificateError (before swapping anything) when a site's own certificate cannot be
        loaded. Nothing in flight is touched: requests, WebSockets and streams hold their own
        route, and pooled connections and up/down state are keyed by upstream address.
        """
        site_contexts = load_site_contexts(config)
        known = {site.host for site in self.config.sites}
        new_sites = [site for site in config.sites if site.host not in known]
        self.config, self.table, self.site_contexts, self._config_error = config, RoutingTable(config.sites), site_contexts, None
        _warn_about_names_outside_the_ca(new_sites, site_contexts, https=self.leaves is not None)
        self.private_paths = private_paths(config, self.leaves)
        self.requests.counts.forget_except({site.host for site in config.sites})
        self.dashboard.sites_changed()

    @property
    def config_error(self) -> str | None:
        """The FILE:LINE:COL lines of a file that failed to load; the last good config keeps serving."""
        return self._config_error

    @config_error.setter
    def config_error(self, text: str | None) -> None:
        self._config_error = text
        self.dashboard.sites_changed()

    # ------------------------------------------------------------ listeners

    @property
    def listeners(self) -> list[Listener]:
        return [listener for scheme in ("http", "https") if scheme in self._bound for listener in self._bound[scheme].listeners]

    def listen_address(self, scheme: str) -> ListenAddress | None:
        bound = self._bound.get(scheme)
        return bound.address if bound else None

    def port_of(self, scheme: str) -> int | None:
        bound = self._bound.get(scheme)
        return bound.listeners[0].port if bound and bound.listeners else None

    async def start(self, http: ListenAddress, https: ListenAddress | None = None, *, allow_remote: bool = False) -> list[Listener]:
        """Bind the listeners and start serving; raise ListenError if one cannot be bound."""
        http_sockets = _bind_all(http, allow_remote=allow_remote)
        try:
            https_sockets = _bind_all(https, allow_remote=allow_remote) if https is not None else []
        except ListenError:
            for sock in http_sockets:
                sock.close()
            raise
        self._forwarder = Forwarder(new_upstream_session(), self.book)
        server = GuardedServer(
            self.handle,
            max_connections=self.max_connections,
            handler_cancellation=True,  # a client that leaves cancels its upstream request
            access_log=None,  # the proxy writes its own access line, with the upstream in it
            auto_decompress=False,  # request bodies are forwarded as sent
            max_field_size=MAX_HEADER_FIELD,
            max_line_size=MAX_HEADER_FIELD,
        )
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)
        await self._runner.setup()
        self._bound["http"] = await self._serve_on("http", http, http_sockets)
        if https is not None:
            self._bound["https"] = await self._serve_on("https", https, https_sockets)
        return self.listeners

    async def move_listeners(self, scheme: str, address: ListenAddress, *, allow_remote: bool = False) -> list[Listener]:
        """Listen on a new address, then stop the old listeners; raise ListenError and keep the old ones if it fails.

        Connections already accepted on the old sockets carry on until they close.
        """
        sockets = _bind_all(address, allow_remote=allow_remote)
        old = self._bound.get(scheme)
        self._bound[scheme] = await self._serve_on(scheme, address, sockets)
        for site in old.sites if old else []:
            await site.stop()
        return self._bound[scheme].listeners

    async def _serve_on(self, scheme: str, address: ListenAddress, sockets: list[socket.socket]) -> _Bound:
        assert self._runner is not None
        bound = _Bound(address, [], [])
        for sock in sockets:
            site = web.SockSite(self._runner, sock, ssl_context=self._tls_context() if scheme == "https" else None)
            await site.start()
            bound.sites.append(site)
            host, port = sock.getsockname()[:2]
            bound.listeners.append(Listener(scheme, host, port))
        return bound

    # ------------------------------------------------------------ TLS

    def _tls_context(self) -> ssl.SSLContext:
        """Return the listener's context: no SNI gets localhost/127.0.0.1/::1, SNI picks a per-host context."""
        assert self.leaves is not None
        context = self.leaves.default_context()
        context.sni_callback = self._pick_certificate
        context.sslobject_class = AlertingSSLObject
        return context

    def _pick_certificate(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        """SNI callback (in the handshake, on the loop): switch to the context for the name asked for."""
        assert self.leaves is not None
        name = (server_name or "").lower().rstrip(".")
        try:
            site = self.table.match_site(name) if name else None
            if site is not None and site.host in self.site_contexts:
                connection.context = self.site_contexts[site.host]
            elif not name:
                connection.context = self.leaves.default_context()
            elif is_local_tls_name(name):
                connection.context = self.leaves.context_for(name)
            else:
                if name not in self._refused_names and len(self._refused_names) < 1000:
                    self._refused_names.add(name)
                    log.warning(
                        "TLS for %s refused: the local CA only signs localhost names. To serve it over HTTPS, give its site "
                        "`tls: {cert: FILE, key: FILE}` (for example from `mkcert %s`), or rename it under .localhost",
                        name,
                        name,
                    )
                if isinstance(connection, AlertingSSLObject):
                    connection.is_refused = True
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        except Exception:  # a bug here must cost one handshake, not the listener
            log.exception("internal error choosing a certificate for %r", name)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    async def stop(self) -> None:
        """Stop accepting, end streams and WebSockets, give in-flight requests the grace period."""
        if self._runner is None:
            return
        for site in list(self._runner.sites):
            await site.stop()
        await self.dashboard.close()
        if self._forwarder is not None:
            await self._forwarder.end_open_streams()
        # aiohttp's own shutdown waits its timeout twice over; bound the whole wait here instead.
        if self._in_flight:
            _, late = await asyncio.wait(set(self._in_flight), timeout=SHUTDOWN_GRACE)
            for task in late:
                task.cancel()
            if late:
                log.info("stopped %d request(s) still running after %g s", len(late), SHUTDOWN_GRACE)
                await asyncio.wait(late, timeout=1.0)
        await self._runner.cleanup()
        self.access_log.flush()
        if self._forwarder is not None:
            await self._forwarder.session.close()
            await self._forwarder.pool.close()
        self._runner = None

    # ------------------------------------------------------------ requests

    async def handle(self, request: ClientRequest) -> web.StreamResponse:
        """Answer one request; never raises for anything a client or upstream can do."""
        started = time.monotonic()
        host_header, target = _host_and_target(request)
        exchange = Exchange(
            request.method, "https" if request.secure else "http", host_header, target, started_at=time.time(), request_headers=request.raw_headers
        )
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            response = await self._dispatch(request, host_header, target, exchange)
            if not exchange.status:  # the proxy's own answer (error page, redirect, file): relay_response did not see it
                exchange.status = response.status
                if exchange.is_inspected:
                    exchange.response_started(response.status, response.reason or "", _raw(response.headers))
                    if isinstance(response, web.Response) and isinstance(response.body, bytes):
                        exchange.response_body.feed(response.body)
                        exchange.response_body.is_complete = True
            return response
        except asyncio.CancelledError:
            exchange.note = exchange.note or "client went away; upstream request cancelled"
            raise
        except ConnectionResetError:
            exchange.note = exchange.note or "client went away; upstream request cancelled"
            return web.Response(status=499)
        except Exception:  # a bug in the proxy: log it, answer 500, keep serving
            log.exception("internal error while handling %s %s%s", request.method, host_header, target)
            exchange.status = 500
            return web.Response(status=500, text="localhost-proxy hit an internal error; see its log.\n")
        finally:
            if task is not None:
                self._in_flight.discard(task)
            exchange.duration = time.monotonic() - started
            self._note_host_refusal(exchange)
            self.requests.finish(exchange, time.time())
            self.access_log.record(host_header, request.method, target, exchange.status, exchange.upstream, exchange.duration, exchange.note)

    def _note_host_refusal(self, exchange: Exchange) -> None:
        """Log (once per site) and show in the inspector when a dev server refused the forwarded Host."""
        if exchange.site is None or not exchange.upstream or exchange.status not in (200, 400, 403):
            return
        if exchange.status == 200 and not hosthints.could_be_old_webpack_refusal(exchange.response_body.size):
            return
        content_type = next((v.decode("latin-1") for n, v in exchange.response_headers if n.lower() == b"content-type"), "")
        refused_host = detect_host_refusal(exchange.status, content_type, bytes(exchange.response_body.data), exchange.host_header)
        if refused_host is None:
            return
        exchange.hint = refused_host.hint
        if (exchange.site, refused_host.hint) not in self._hinted and len(self._hinted) < 1000:
            self._hinted.add((exchange.site, refused_host.hint))
            log.warning("%s: %s", exchange.site, refused_host.hint)

    async def _dispatch(self, request: ClientRequest, host_header: str, target: str, exchange: Exchange) -> web.StreamResponse:
        config, table = self.config, self.table  # one table for the whole request, even across a reload
        kind, site = table.classify(host_header)
        scheme = "https" if request.secure else "http"

        def problem(status: int, title: str, detail: str, hint: str = "", facts: dict[str, str | list[str]] | None = None) -> web.Response:
            return pages.problem_response(pages.Problem(status, title, detail, hint, facts or {}), request.headers.get("Accept", ""), _dashboard_url(request))

        refused = refusal(request.method, target, request.version, host_header, request.headers.getall("Transfer-Encoding", ()))
        if refused is not None:
            if request.version not in (HttpVersion10, HttpVersion11):
                # The status line echoes the request's version; answer in the one the proxy speaks.
                # (BaseRequest.version is a cached property: the cache is what the response reads.)
                aiohttp_request(request)._cache["version"] = HttpVersion11
            response = problem(refused.status, refused.title, refused.detail)
            response.force_close()  # what follows on this connection cannot be trusted to be framed as meant
            return response
        if kind is HostKind.FOREIGN:
            return pages.bare_not_found()
        if kind is HostKind.OWN:
            return await self.dashboard.handle(
                aiohttp_request(request), target, request.headers.get("Accept", ""), scheme, _local_port(request), _dashboard_url(request)
            )
        self._start_capture(request, exchange, site)
        if kind is HostKind.LOCAL or site is None:
            return pages.unknown_site_response(
                normalize_host(host_header), config, self.book, request.headers.get("Accept", ""), scheme, _local_port(request), _dashboard_url(request)
            )
        if site.https_redirect and scheme == "http" and (https_port := self.port_of("https")) is not None:
            # 308 keeps the method and body, unlike 301/302.
            location = f"https://{format_host(normalize_host(host_header))}" + (f":{https_port}" if https_port != 443 else "") + target
            return web.Response(status=308, headers={"Location": location})

        passed = sites_passed(request.headers.getall(LOOP_HEADER, ()))
        if site.host in passed:
            return problem(
                508,
                "Loop detected",
                f"This request for {site.host} came back to the proxy from its own upstream.",
                "The app behind this site forwards requests to the proxy again. Point its proxy setting at the app's real port, or set preserve_host: false.",
                {"site": site.host, "passed through": [*passed, site.host]},
            )
        match = match_route(site, target)
        if match is None:
            return problem(
                404,
                "No route for this path",
                f"{site.host} has no route that matches {target.partition('?')[0]}.",
                f"Add a route for it under {site.host} in sites.yaml, or a `/:` route to catch the rest.",
                {"config": str(site.mark)},
            )
        route_target = match.route.target
        if request.headers.get(pages.PROBE_HEADER) == "ready":  # an error page asking whether the app is up yet
            return await _answer_probe(route_target)
        if isinstance(route_target, StaticRoot):
            exchange.upstream = "static"
            return await serve_static(aiohttp_request(request), route_target, match.target, self.private_paths)
        assert self._forwarder is not None
        via = [*passed, site.host]
        if is_websocket_upgrade(request):
            result = await self._forwarder.forward_websocket(aiohttp_request(request), match, route_target, exchange, via=via, proto=scheme)
        else:
            result = await self._forwarder.forward_http(request, match, route_target, exchange, via=via, proto=scheme)
        if isinstance(result, UpstreamFailure):
            exchange.note = result.reason
            exchange.upstream = result.upstream.authority if result.upstream else ""
            await _keep_unread_body(request, exchange)
            nearby = None
            if result.is_refused and result.upstream is not None and result.upstream.is_loopback:
                nearby = await asyncio.get_running_loop().run_in_executor(None, explain_refused, result.upstream)
                if nearby:
                    log.info("%s: %s", site.host, nearby)
            return pages.problem_response(_failure_problem(match, result, nearby), request.headers.get("Accept", ""), _dashboard_url(request))
        return result

    def _start_capture(self, request: ClientRequest, exchange: Exchange, site: Site | None) -> None:
        """Keep this request for the inspector, unless its site opted out with `inspect: false`."""
        exchange.site = site.host if site is not None else None
        token = request.headers.get(REPLAY_HEADER)
        replay_of = self.dashboard.claim_replay(token) if token else None
        if site is None or site.inspect or replay_of is not None:
            exchange.inspect()
            exchange.replay_of = replay_of
            self.requests.add(exchange)
            if token and replay_of is not None:
                self.dashboard.replay_started(token, exchange)


def private_paths(config: Config, leaves: LeafCache | None) -> frozenset[str]:
    """Return the resolved files and folders no static root may serve: the config, the CA's folder, sites' keys."""
    paths = [config.file, certs_folder(config.file)]
    if leaves is not None:
        paths.append(os.path.dirname(leaves.ca.cert_path))
    for site in config.sites:
        if site.tls is not None:
            paths += [site.tls.cert, site.tls.key]
    return frozenset(os.path.realpath(p) for p in paths)


def load_site_contexts(config: Config) -> dict[str, ssl.SSLContext]:
    """Return the server contexts of sites that bring their own certificate, by site host."""
    return {site.host: context_from_files(site.tls.cert, site.tls.key) for site in config.sites if site.tls is not None}


def _warn_about_names_outside_the_ca(sites: list[Site] | tuple[Site, ...], site_contexts: dict[str, ssl.SSLContext], *, https: bool) -> None:
    if not https:
        return
    for site in sites:
        name = site.host.removeprefix("*.")
        if site.host not in site_contexts and not is_local_tls_name(name):
            log.warning(
                "%s: HTTP works, but the local CA cannot sign for names outside .localhost. For HTTPS give the site "
                "`tls: {cert: FILE, key: FILE}` (for example made by `mkcert %s`)",
                site.host,
                site.host,
            )


def _pretty_json(obj: object) -> str:
    return json.dumps(obj, indent=2)


def _failure_problem(match: RouteMatch, failure: UpstreamFailure, nearby: str | None) -> pages.Problem:
    title = "Upstream timed out" if failure.status == 504 else "Upstream unavailable"
    where = match.site.host + (match.route.prefix if match.route.prefix != "/" else "")
    facts: dict[str, str | list[str]] = {"site": match.site.host, "tried": list(failure.tried), "config": str(match.route.mark)}
    hint = f"{nearby[0].upper()}{nearby[1:]}." if nearby else failure.hint
    return pages.Problem(failure.status, title, f"{where}: {failure.reason}.", hint, facts, reload_when_ready=True)


async def _answer_probe(target: Upstreams | StaticRoot) -> web.Response:
    """Return 200 once some upstream of target accepts connections, else 503 (for the waiting error page)."""
    if isinstance(target, StaticRoot):
        return web.Response(text="ready\n")
    for upstream in target.addresses:
        for host in upstream.dial_hosts:
            if await accepts_connections(host, upstream.port, timeout=min(target.connect_timeout, 1.0)):
                return web.Response(text="ready\n", headers={"Cache-Control": "no-store"})
    return web.Response(status=503, text="waiting for the app\n", headers={"Cache-Control": "no-store"})


def _host_and_target(request: ClientRequest) -> tuple[str, str]:
    """Return the Host to route by and the path?query to forward, exactly as received.

    An absolute-form target (GET http://app1.localhost/x) names its host itself (RFC 9112
    3.2.2); it is routed like any other request and never dialed as written.
    """
    target = request.raw_path
    if target.startswith(("http://", "https://")):
        parts = urlsplit(target)
        path = parts.path or "/"
        return parts.netloc, path + (f"?{parts.query}" if parts.query else "")
    return request.headers.get("Host", ""), target


def _dashboard_url(request: ClientRequest) -> str:
    """Return the dashboard's address on the listener this request came in on, for the error pages' links."""
    scheme, port = ("https" if request.secure else "http"), _local_port(request)
    return f"{scheme}://localhost:{port}/" if port else f"{scheme}://localhost/"


def _local_port(request: ClientRequest) -> int | None:
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport else None
    return sockname[1] if sockname else None


def _raw(headers: Mapping[str, str]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((n.encode("latin-1"), v.encode("latin-1", "replace")) for n, v in headers.items())


async def _keep_unread_body(request: ClientRequest, exchange: Exchange) -> None:
    """Read a small body no upstream took (all refused), so the inspector can replay it once the app is up."""
    length = request.content_length
    if not exchange.is_inspected or exchange.request_body.size or not length or length > BODY_LIMIT or request.headers.get("Expect"):
        return
    try:
        async with asyncio.timeout(2.0):
            exchange.request_body.feed(await aiohttp_request(request).content.readexactly(length))
        exchange.request_body.is_complete = True
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        pass


# ---------------------------------------------------------------- binding


def _bind_all(address: ListenAddress, *, allow_remote: bool) -> list[socket.socket]:
    """Return listening sockets for an address; a bare port gets 127.0.0.1, then [::1] on the same port."""
    if not allow_remote and not address.is_loopback:
        raise ListenError(
            f"refusing to listen on {address}: that is reachable from other machines, and this proxy "
            f"forwards to your dev servers. Use 127.0.0.1 or [::1], or pass --allow-remote if you mean it."
        )
    if address.host is not None:
        return [_bind(address.host, address.port)]
    first = _bind("127.0.0.1", address.port)
    port = first.getsockname()[1]  # port 0: the IPv4 pick is reused for [::1]
    try:
        return [first, _bind("::1", port)]
    except ListenError as exc:
        log.warning("warning: %s; serving on 127.0.0.1 only", exc)
        return [first]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    display = f"{format_host(host)}:{port}"
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ListenError(f"cannot listen on {display}: {exc.strerror} (no IPv6 on this machine?)") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart without waiting out TIME_WAIT
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            holder = describe_listener(port, host)
            by = f" by {holder}" if holder else ""
            raise ListenError(f"cannot listen on {display}: already used{by}; stop it or pass --http {port + 1 if port < 65535 else 7081}") from None
        if exc.errno == errno.EACCES:
            raise ListenError(f"cannot listen on {display}: permission denied (ports below 1024 need root); pass --http 7080") from None
        raise ListenError(f"cannot listen on {display}: {exc.strerror}") from None
    return sock
