"""The running proxy: listeners and their front-end, the forwarding core, the dashboard; start, reload, stop.

Owns the objects' lifetimes, nothing of any request: decisions come from forwarding/decide.py,
answers from forwarding/core.py, bytes from frontends/. A config change builds a whole Snapshot
first and swaps one reference.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Iterable

from aiohttp import web

from proxy.config.model import Config, ListenAddress, Site
from proxy.dashboard.views import Dashboard
from proxy.diagnostics.accesslog import AccessLog
from proxy.diagnostics.inspector import Exchange, RequestLog
from proxy.errors import ListenError
from proxy.forwarding.contract import ProxyRequest, ResponseSink
from proxy.forwarding.core import Core, new_exchange
from proxy.forwarding.health import UpstreamHealth
from proxy.forwarding.http import Forwarder
from proxy.frontends.http1.connection import Http1Server
from proxy.frontends.listeners import Listener, ListenerSet, bind_all
from proxy.routing.snapshot import Snapshot, private_paths
from proxy.routing.table import RoutingTable
from proxy.tls.ca import is_local_tls_name
from proxy.tls.leaves import LeafCache, context_from_files
from proxy.tls.sni import CertificatePicker
from proxy.upstream.pool import UpstreamPool

log = logging.getLogger("proxy")

SHUTDOWN_GRACE = 5.0  # seconds in-flight requests get after SIGTERM


def build_snapshot(config: Config, *, ca_folder: str | None) -> Snapshot:
    """Return the snapshot for a config; raise CertificateError when a site's own certificate cannot be loaded.

    `ca_folder` is where the local CA lives when the proxy serves HTTPS (its keys are private too).
    """
    site_contexts = {site.host: context_from_files(site.tls.cert, site.tls.key) for site in config.sites if site.tls is not None}
    return Snapshot(config, RoutingTable(config.sites), site_contexts, private_paths(config, ca_folder))


class ProxyServer:
    """The running proxy: one snapshot at a time, swapped whole on reload."""

    def __init__(self, config: Config, *, leaves: LeafCache | None = None, show_secrets: bool = False, max_connections: int = 10_000) -> None:
        self.leaves = leaves  # None: no HTTPS listener
        self.max_connections = max_connections  # client connections served at once; see frontends/http1/connection.py
        self.health = UpstreamHealth()
        self.requests = RequestLog()
        self.pool = UpstreamPool()
        self.core = Core(
            build_snapshot(config, ca_folder=self._ca_folder),
            forwarder=Forwarder(self.pool, self.health),
            requests=self.requests,
            access_log=AccessLog(logging.getLogger("proxy.access")),
        )
        self.dashboard = Dashboard(self, show_secrets=show_secrets)
        self.core.own_host = self.dashboard
        self._config_error: str | None = None
        self._runner: web.ServerRunner | None = None
        self._listeners: ListenerSet | None = None
        self._certificates = CertificatePicker(leaves, lambda: self.core.snapshot) if leaves is not None else None
        _warn_about_names_outside_the_ca(config.sites, self.core.snapshot, https=leaves is not None)

    @property
    def _ca_folder(self) -> str | None:
        return os.path.dirname(self.leaves.ca.cert_path) if self.leaves is not None else None

    # ------------------------------------------------------------ the view the dashboard reads

    @property
    def config(self) -> Config:
        return self.core.snapshot.config

    @property
    def config_error(self) -> str | None:
        """The FILE:LINE:COL lines of a file that failed to load; the last good config keeps serving."""
        return self._config_error

    @config_error.setter
    def config_error(self, text: str | None) -> None:
        self._config_error = text
        self.dashboard.sites_changed()

    @property
    def ca_cert_path(self) -> str | None:
        return self.leaves.ca.cert_path if self.leaves is not None else None

    @property
    def listeners(self) -> list[Listener]:
        return self._listeners.listeners if self._listeners is not None else []

    def listen_address(self, scheme: str) -> ListenAddress | None:
        return self._listeners.address(scheme) if self._listeners is not None else None

    def port_of(self, scheme: str) -> int | None:
        return self._listeners.port(scheme) if self._listeners is not None else None

    def new_exchange(self, request: ProxyRequest) -> Exchange:
        return new_exchange(request)

    async def replay(self, request: ProxyRequest, sink: ResponseSink, *, exchange: Exchange, replay_of: int) -> None:
        await self.core.handle(request, sink, exchange=exchange, replay_of=replay_of)

    # ------------------------------------------------------------ reload

    def apply(self, config: Config) -> None:
        """Swap in a new config: a request sees the old snapshot or the new one.

        Raises CertificateError (before swapping anything) when a site's own certificate cannot be
        loaded. Nothing in flight is touched: requests, WebSockets and streams hold their own
        route, and pooled connections and up/down state are keyed by upstream address.
        """
        snapshot = build_snapshot(config, ca_folder=self._ca_folder)
        known = {site.host for site in self.config.sites}
        self.core.snapshot = snapshot
        self._config_error = None
        _warn_about_names_outside_the_ca([site for site in config.sites if site.host not in known], snapshot, https=self.leaves is not None)
        self.requests.counts.forget_except({site.host for site in config.sites})
        self.dashboard.sites_changed()

    # ------------------------------------------------------------ listeners

    async def start(self, http: ListenAddress, https: ListenAddress | None = None, *, allow_remote: bool = False) -> list[Listener]:
        """Bind the listeners and start serving; raise ListenError if one cannot be bound."""
        http_sockets = bind_all(http, allow_remote=allow_remote)
        try:
            https_sockets = bind_all(https, allow_remote=allow_remote) if https is not None else []
        except ListenError:
            for sock in http_sockets:
                sock.close()
            raise
        self._runner = web.ServerRunner(Http1Server(self.core, max_connections=self.max_connections), handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)
        await self._runner.setup()
        self._listeners = ListenerSet(self._runner)
        await self._listeners.serve("http", http, http_sockets, None)
        if https is not None:
            await self._listeners.serve("https", https, https_sockets, self._tls_context())
            self.core.https_port = self.port_of("https")
        return self.listeners

    async def move_listeners(self, scheme: str, address: ListenAddress, *, allow_remote: bool = False) -> list[Listener]:
        """Listen on a new address, then stop the old listeners; raise ListenError and keep the old ones if it fails.

        Connections already accepted on the old sockets carry on until they close.
        """
        assert self._listeners is not None
        sockets = bind_all(address, allow_remote=allow_remote)
        listeners = await self._listeners.serve(scheme, address, sockets, self._tls_context() if scheme == "https" else None)
        if scheme == "https":
            self.core.https_port = self.port_of("https")
        return listeners

    def _tls_context(self) -> ssl.SSLContext:
        assert self._certificates is not None
        return self._certificates.server_context()

    # ------------------------------------------------------------ stop

    async def stop(self) -> None:
        """Stop accepting, end streams and WebSockets, give in-flight requests the grace period."""
        if self._runner is None:
            return
        if self._listeners is not None:
            await self._listeners.stop_accepting()
        await self.dashboard.close()
        await self.core.forwarder.end_open_streams()
        # aiohttp's own shutdown waits its timeout twice over; bound the whole wait here instead.
        in_flight = set(self.core.in_flight)
        if in_flight:
            _, late = await asyncio.wait(in_flight, timeout=SHUTDOWN_GRACE)
            for task in late:
                task.cancel()
            if late:
                log.info("stopped %d request(s) still running after %g s", len(late), SHUTDOWN_GRACE)
                await asyncio.wait(late, timeout=1.0)
        await self._runner.cleanup()
        self.core.access_log.flush()
        await self.pool.close()
        self._runner = None


def _warn_about_names_outside_the_ca(sites: Iterable[Site], snapshot: Snapshot, *, https: bool) -> None:
    if not https:
        return
    for site in sites:
        name = site.host.removeprefix("*.")
        if site.host not in snapshot.site_contexts and not is_local_tls_name(name):
            log.warning(
                "%s: HTTP works, but the local CA cannot sign for names outside .localhost. For HTTPS give the site "
                "`tls: {cert: FILE, key: FILE}` (for example made by `mkcert %s`)",
                site.host,
                site.host,
            )
