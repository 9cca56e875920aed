"""Which certificate a TLS handshake gets, by the name the client asks for (SNI).

A site's own certificate when it brings one, else a leaf the local CA mints for a local name;
a name the CA may not sign for is refused with an unrecognized_name alert (and one log line).
Runs inside the handshake, on the event loop, against the current snapshot.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

from proxy.routing.snapshot import Snapshot
from proxy.tls.ca import is_local_tls_name
from proxy.tls.leaves import AlertingSSLObject, LeafCache

log = logging.getLogger("proxy")

_MAX_REFUSED_LOGGED = 1000  # names logged once each; a page can make a browser ask for endless ones


class CertificatePicker:
    """Chooses each handshake's certificate; its server_context() is the HTTPS listener's."""

    def __init__(self, leaves: LeafCache, snapshot: Callable[[], Snapshot]) -> None:
        self.leaves = leaves
        self._snapshot = snapshot
        self._refused_names: set[str] = set()

    def server_context(self) -> ssl.SSLContext:
        """Return the listener's context: no SNI gets localhost/127.0.0.1/::1, SNI picks a per-host context."""
        context = self.leaves.default_context()
        context.sni_callback = self._pick
        context.sslobject_class = AlertingSSLObject
        return context

    def _pick(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        """SNI callback: switch to the context for the name asked for."""
        name = (server_name or "").lower().rstrip(".")
        try:
            snapshot = self._snapshot()
            site = snapshot.table.match_site(name) if name else None
            if site is not None and site.host in snapshot.site_contexts:
                connection.context = snapshot.site_contexts[site.host]
            elif not name:
                connection.context = self.leaves.default_context()
            elif is_local_tls_name(name):
                connection.context = self.leaves.context_for(name)
            else:
                if name not in self._refused_names and len(self._refused_names) < _MAX_REFUSED_LOGGED:
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
