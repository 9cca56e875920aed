"""What sites.yaml says, as frozen values: sites, routes, their targets, listen addresses.

Pure data: parse.py makes these from text, everything downstream reads them and none changes
them; a reload builds new ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.errors import Mark
from proxy.names import LOOPBACK_ADDRESSES, format_host, is_local_name, is_loopback_ip

DEFAULT_HTTP_PORT = 7080
DEFAULT_HTTPS_PORT = 7443
DEFAULT_CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where a listener binds. host None means 127.0.0.1 and [::1] on the same port."""

    host: str | None
    port: int

    @property
    def hosts(self) -> tuple[str, ...]:
        return LOOPBACK_ADDRESSES if self.host is None else (self.host,)

    @property
    def is_loopback(self) -> bool:
        return all(is_loopback_ip(h) for h in self.hosts)

    def __str__(self) -> str:
        if self.host is None:
            return str(self.port)
        return f"{format_host(self.host)}:{self.port}"


@dataclass(frozen=True, slots=True)
class Upstream:
    """One address a site forwards to. host "localhost" is dialed on 127.0.0.1 and ::1."""

    scheme: str  # "http" or "https"
    host: str  # IPv6 without brackets
    port: int
    # Derived once at load, as every request reads them.
    dial_hosts: tuple[str, ...] = field(init=False, compare=False, repr=False)
    is_loopback: bool = field(init=False, compare=False, repr=False)
    authority: str = field(init=False, compare=False, repr=False)
    _hash: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Vite on recent Node listens on ::1 only, most other servers on 127.0.0.1 only.
        dial_hosts = LOOPBACK_ADDRESSES if self.host == "localhost" else (self.host,)
        object.__setattr__(self, "dial_hosts", dial_hosts)
        object.__setattr__(self, "is_loopback", all(is_local_name(h) for h in dial_hosts))
        object.__setattr__(self, "authority", f"{format_host(self.host)}:{self.port}")
        # Hashed on every request (the pool and the health record key by it): once is enough.
        object.__setattr__(self, "_hash", hash((self.scheme, self.host, self.port)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def tried_addresses(self) -> tuple[str, ...]:
        """Every host:port this upstream dials, for logs and error pages."""
        return tuple(f"{format_host(h)}:{self.port}" for h in self.dial_hosts)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}"


@dataclass(frozen=True, slots=True)
class Upstreams:
    """A route served by one or more upstreams, taken in turn."""

    addresses: tuple[Upstream, ...]
    preserve_host: bool = True
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    verify: bool | None = None  # None: verify certificates of non-loopback upstreams only

    def should_verify(self, upstream: Upstream) -> bool:
        return self.verify if self.verify is not None else not upstream.is_loopback

    def describe(self, *, as_written: bool = False) -> str:
        return ", ".join(_describe_upstream(u, as_written) for u in self.addresses)


@dataclass(frozen=True, slots=True)
class StaticRoot:
    """A route served from files under `path` (absolute, not yet resolved)."""

    path: str
    spa: bool = False

    def describe(self, *, as_written: bool = False) -> str:
        return f"files in {self.path}" + (" (spa)" if self.spa else "")


Target = Upstreams | StaticRoot


@dataclass(frozen=True, slots=True)
class Route:
    """A path prefix of a site and where its requests go."""

    prefix: str  # "/" or "/api": no trailing slash, matched on segment boundaries
    target: Target
    mark: Mark
    strip_prefix: bool = False


@dataclass(frozen=True, slots=True)
class SiteTLS:
    """A site's own certificate (e.g. from mkcert), used instead of one from the local CA."""

    cert: str  # absolute paths
    key: str


@dataclass(frozen=True, slots=True)
class Site:
    """One host name and its routes, longest prefix first."""

    host: str  # lower case, e.g. "app1.localhost" or "*.preview.localhost"
    routes: tuple[Route, ...]
    mark: Mark
    tls: SiteTLS | None = None
    https_redirect: bool = False  # 308 from http:// to https://, path and query kept
    inspect: bool = True  # the dashboard's inspector keeps this site's requests

    @property
    def is_wildcard(self) -> bool:
        return self.host.startswith("*.")

    def same_routing(self, other: Site) -> bool:
        """Return whether two sites send every request to the same place (config lines aside)."""

        def key(site: Site) -> tuple[object, ...]:
            return (tuple((r.prefix, r.target, r.strip_prefix) for r in site.routes), site.tls, site.https_redirect)

        return key(self) == key(other)

    def target_lines(self) -> list[str]:
        """Return one line per route saying where its requests go (`/api -> localhost:8000`)."""
        if len(self.routes) == 1 and self.routes[0].prefix == "/":
            return [self.routes[0].target.describe()]
        return [f"{r.prefix} -> {r.target.describe()}" for r in self.routes]

    def describe(self, *, as_written: bool = False) -> str:
        """The target in one line; `as_written` shows a localhost port as the bare port, as in the file."""
        if len(self.routes) == 1 and self.routes[0].prefix == "/":
            return self.routes[0].target.describe(as_written=as_written)
        return ", ".join(f"{r.prefix} -> {r.target.describe(as_written=as_written)}" for r in self.routes)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything sites.yaml says, validated. Never mutated: a reload builds a new one."""

    file: str
    folder: str
    listen_http: ListenAddress
    sites: tuple[Site, ...] = field(default=())
    listen_https: ListenAddress = ListenAddress(None, DEFAULT_HTTPS_PORT)
    listen_keys: frozenset[str] = frozenset()  # the `listen:` keys the file sets itself
    source_digest: str = ""  # sha256 of the text it was parsed from: a reload of the same bytes is a no-op


def _describe_upstream(upstream: Upstream, as_written: bool) -> str:
    """Return `localhost:3000` (or `3000` as written), `127.0.0.1:5173`, `https://127.0.0.1:8443`."""
    if upstream.scheme == "https":
        return str(upstream)
    return str(upstream.port) if as_written and upstream.host == "localhost" else upstream.authority
