"""Why a request could not reach its upstream, in words for the error page, the log and the inspector. Pure.

Every failure comes from the one upstream client (upstream/), so one family of exceptions is
described here: the OS's (refused, unreachable, timed out), TLS's, and the client's own.
"""

from __future__ import annotations

import errno
import ssl
from dataclasses import dataclass

from proxy.config.model import Upstream
from proxy.forwarding.pages import Problem
from proxy.routing.table import RouteMatch
from proxy.upstream.connection import UpstreamClosed, UpstreamError, UpstreamProtocolError


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """Why a request could not reach its upstream, in words for the error page and log."""

    status: int  # 502, 504
    reason: str  # "connection refused"
    hint: str
    tried: tuple[str, ...]  # "127.0.0.1:3000", "[::1]:3000"
    upstream: Upstream | None = None  # the last one tried

    @property
    def is_refused(self) -> bool:
        return self.reason == "connection refused"

    @property
    def may_try_next(self) -> bool:
        """Whether the next upstream of a list may take the request instead: this one never saw it."""
        return self.is_refused or self.status == 504


FAILURES = (OSError, TimeoutError, UpstreamError)  # what describe_failure describes


def describe_failure(exc: BaseException, upstream: Upstream, timeout: float) -> UpstreamFailure:
    """Return the user-facing reason an attempt on `upstream` failed; re-raise what is not a connection failure."""
    tried = upstream.tried_addresses
    port = upstream.port
    if isinstance(exc, TimeoutError):
        return UpstreamFailure(
            504,
            f"no answer within {timeout:g} s while connecting",
            f"Is the app on port {port} stuck, or is a firewall dropping the connection? Raise connect_timeout in sites.yaml if it is just slow to start.",
            tried,
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return UpstreamFailure(
            502,
            f"the app's TLS certificate was not accepted ({exc.verify_message})",
            "Set `verify: false` on this site, or give the app a certificate this machine trusts.",
            tried,
        )
    if isinstance(exc, ssl.SSLError):
        if upstream.scheme == "https":
            hint = f"Does the app on port {port} speak plain HTTP? Then write http://{upstream.authority} in sites.yaml."
        else:
            hint = f"Does the app on port {port} speak HTTPS? Then write https://{upstream.authority} in sites.yaml."
        return UpstreamFailure(502, "the TLS handshake failed", hint, tried)
    if isinstance(exc, UpstreamClosed):
        return UpstreamFailure(
            502,
            "the app closed the connection without answering",
            _not_http_hint("The app closed the connection without answering: check its own log.", upstream),
            tried,
        )
    if isinstance(exc, UpstreamProtocolError):
        return UpstreamFailure(
            502, f"invalid response from the app ({exc})", _not_http_hint("The app answered with something that is not valid HTTP.", upstream), tried
        )
    if isinstance(exc, UpstreamError):
        return UpstreamFailure(502, f"upstream error: {exc}", "Check the app's own log.", tried)
    if isinstance(exc, OSError):
        if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
            return UpstreamFailure(502, "connection refused", f"Nothing is listening on port {port}: start your app, or change the port in sites.yaml.", tried)
        return UpstreamFailure(502, f"cannot connect: {exc.strerror or exc}", f"Check that the app is running and reachable at {upstream.authority}.", tried)
    raise exc


def _not_http_hint(hint: str, upstream: Upstream) -> str:
    if upstream.scheme == "http":
        hint += f" If it speaks HTTPS, write https://{upstream.authority} in sites.yaml."
    return hint


def failure_problem(match: RouteMatch, failure: UpstreamFailure, nearby: str | None) -> Problem:
    """Return the 502/504 page for a route whose upstreams all failed; `nearby` says what listens close by."""
    title = "Upstream timed out" if failure.status == 504 else "Upstream unavailable"
    where = match.site.host + (match.route.prefix if match.route.prefix != "/" else "")
    facts: dict[str, str | list[str]] = {"site": match.site.host, "tried": list(failure.tried), "config": str(match.route.mark)}
    hint = f"{nearby[0].upper()}{nearby[1:]}." if nearby else failure.hint
    return Problem(failure.status, title, f"{where}: {failure.reason}.", hint, facts, reload_when_ready=True)
