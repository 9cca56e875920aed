"""Host + path -> (Site, Route). Pure: no aiohttp, no sockets, no clock.

Built once per config; a reload builds a new RoutingTable and swaps the reference, so a
request sees either the old table or the new one, never a mix.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import NamedTuple

from proxy.config.model import Route, Site
from proxy.names import OWN_HOSTS, is_local_name, normalize_host


class HostKind(enum.Enum):
    OWN = "own"  # localhost, 127.0.0.1, [::1], proxy.localhost: the proxy's index page
    SITE = "site"  # a configured site
    LOCAL = "local"  # under .localhost or a loopback IP, but not configured: helpful 404
    FOREIGN = "foreign"  # anything else (what a DNS-rebinding page sends): bare 404


class RouteMatch(NamedTuple):  # made per request: a NamedTuple is cheaper to make than a frozen dataclass
    """Where a request goes: the route and the request target to send upstream."""

    site: Site
    route: Route
    target: str  # path?query, byte for byte as received unless the route strips its prefix


class RoutingTable:
    """Sites indexed for matching: exact names in one dict, wildcards by their suffix."""

    def __init__(self, sites: Iterable[Site]) -> None:
        self.sites = tuple(sites)
        self._exact = {s.host: s for s in self.sites if not s.is_wildcard}
        self._wildcards = {s.host[2:]: s for s in self.sites if s.is_wildcard}

    def match_site(self, host_header: str) -> Site | None:
        """Return the site for a Host header: the exact name, else the most specific wildcard."""
        return self._match_normalized(normalize_host(host_header))

    def _match_normalized(self, host: str) -> Site | None:
        if (site := self._exact.get(host)) is not None:
            return site
        if not self._wildcards:
            return None
        labels = host.split(".")
        for i in range(1, len(labels)):  # longest suffix first; `*` needs at least one label
            if (site := self._wildcards.get(".".join(labels[i:]))) is not None:
                return site
        return None

    def classify(self, host_header: str) -> tuple[HostKind, Site | None]:
        """Return what a Host header names, and the site when it names one."""
        host = normalize_host(host_header)
        if host in OWN_HOSTS:
            return HostKind.OWN, None
        site = self._match_normalized(host)
        if site is not None:
            return HostKind.SITE, site
        return (HostKind.LOCAL if is_local_name(host) else HostKind.FOREIGN), None


def match_route(site: Site, raw_target: str) -> RouteMatch | None:
    """Return the longest route prefix that matches on a segment boundary, with the target to send.

    `/api` matches `/api`, `/api/x` and `/api?q`, never `/apiary`. Matching is on the raw path
    so that what is forwarded is exactly what arrived.
    """
    path, sep, query = raw_target.partition("?")
    for route in site.routes:  # longest prefix first
        prefix = route.prefix
        if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
            if route.strip_prefix and prefix != "/":
                path = path[len(prefix) :] or "/"
            return RouteMatch(site, route, path + sep + query)
    return None
