"""What to do with a request: one pure function of its head and the current snapshot.

Every front-end asks decide() and acts on the answer; nothing else judges a request. No I/O:
the decision names what to do (refuse, redirect, answer a loop, forward to a route...) and
core.py does it.
"""

from __future__ import annotations

from typing import NamedTuple

from proxy.config.model import Site, StaticRoot, Target, Upstreams
from proxy.forwarding.admission import Refusal, refusal
from proxy.forwarding.contract import ProxyRequest
from proxy.forwarding.headers import LOOP_HEADER, sites_passed
from proxy.names import format_host, normalize_host
from proxy.routing.snapshot import Snapshot
from proxy.routing.table import HostKind, RouteMatch, match_route

# Sent by the proxy's own waiting page (see pages.py) to ask whether the app accepts connections yet.
PROBE_HEADER = "X-Localhost-Proxy-Probe"
_PROBE_HEADER = PROBE_HEADER.lower().encode("ascii")
_LOOP_HEADER = LOOP_HEADER.lower().encode("ascii")


class Refuse(NamedTuple):
    """Not forwarded: the request cannot be passed on unambiguously. The connection takes no further request."""

    refusal: Refusal


class ForeignHost(NamedTuple):
    """A name that is neither local nor configured (what a DNS-rebinding page sends): a bare 404."""


class OwnHost(NamedTuple):
    """The proxy's own names: the dashboard and its API."""


class UnknownSite(NamedTuple):
    """A local name no site has: the 404 that lists the sites and how to add this one."""

    host: str


class RedirectToHttps(NamedTuple):
    site: Site
    location: str


class LoopDetected(NamedTuple):
    """The request came back from the site's own upstream: forwarding it again would loop."""

    site: Site
    passed: list[str]  # the sites it went through, this one included


class NoRoute(NamedTuple):
    site: Site
    path: str


class ProbeReady(NamedTuple):
    """The waiting page asks whether the route's app accepts connections yet."""

    site: Site
    target: Target


class ServeStatic(NamedTuple):
    match: RouteMatch
    root: StaticRoot


class Forward(NamedTuple):
    match: RouteMatch
    upstreams: Upstreams
    via: list[str]  # the sites the request has now passed through (see LOOP_HEADER)


Decision = Refuse | ForeignHost | OwnHost | UnknownSite | RedirectToHttps | LoopDetected | NoRoute | ProbeReady | ServeStatic | Forward

FOREIGN_HOST = ForeignHost()
OWN_HOST = OwnHost()


def decide(request: ProxyRequest, snapshot: Snapshot, *, https_port: int | None) -> Decision:
    """Return what to do with a request, judged by its head alone against one snapshot.

    `https_port` is where the HTTPS listener is (None: there is none), for sites that redirect to it.
    """
    transfer_encodings: list[str] = []
    loop_values: list[str] = []
    probe = None
    for name, value in request.fields:  # one pass over the fields for the three that matter here
        lower = name.lower()
        if lower == b"transfer-encoding":
            transfer_encodings.append(value.decode("latin-1"))
        elif lower == _LOOP_HEADER:
            loop_values.append(value.decode("latin-1"))
        elif lower == _PROBE_HEADER:
            probe = value
    refused = refusal(request.method, request.target, request.protocol, request.authority, transfer_encodings)
    if refused is not None:
        return Refuse(refused)
    kind, site = snapshot.table.classify(request.authority)
    if kind is HostKind.FOREIGN:
        return FOREIGN_HOST
    if kind is HostKind.OWN:
        return OWN_HOST
    if site is None:
        return UnknownSite(normalize_host(request.authority))
    if site.https_redirect and request.scheme == "http" and https_port is not None:
        location = f"https://{format_host(normalize_host(request.authority))}" + (f":{https_port}" if https_port != 443 else "") + request.target
        return RedirectToHttps(site, location)
    passed = sites_passed(loop_values)
    if site.host in passed:
        return LoopDetected(site, [*passed, site.host])
    match = match_route(site, request.target)
    if match is None:
        return NoRoute(site, request.target.partition("?")[0])
    target = match.route.target
    if probe == b"ready":
        return ProbeReady(site, target)
    if isinstance(target, StaticRoot):
        return ServeStatic(match, target)
    return Forward(match, target, [*passed, site.host])
