"""Host + path -> (Site, Route): exact names, wildcards, own hosts, segment-boundary prefixes."""

from __future__ import annotations

import pytest

from proxy.config.model import Site
from proxy.config.parse import parse_config
from proxy.names import normalize_host
from proxy.routing.table import HostKind, RoutingTable, match_route

SITES = """\
sites:
  app1: 3000
  "*.preview.localhost": 4000
  "*.b.preview.localhost": 4001
  exact.preview.localhost: 4002
  "*.example.com": 4003
  shop.localhost:
    routes:
      /: 3000
      /api: 8000
      /api/v2: 8002
      /static: {upstream: 9000, strip_prefix: true}
  only-api.localhost:
    routes:
      /api/: {upstream: 8000, strip_prefix: true}
"""


@pytest.fixture(scope="module")
def table() -> RoutingTable:
    return RoutingTable(parse_config(SITES, "sites.yaml", folder="/srv").sites)


def site_named(table: RoutingTable, host: str) -> Site:
    (site,) = [s for s in table.sites if s.host == host]
    return site


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("app1.localhost", "app1.localhost"),
        ("App1.LOCALHOST", "app1.localhost"),
        ("app1.localhost:7080", "app1.localhost"),
        ("app1.localhost.", "app1.localhost"),
        ("app1.localhost.:7080", "app1.localhost"),
        (" app1.localhost ", "app1.localhost"),
        ("[::1]:7080", "::1"),
        ("[::1]", "::1"),
        ("127.0.0.1:7080", "127.0.0.1"),
        ("app1.localhost:x", "app1.localhost:x"),
    ],
    ids=["plain", "case", "port", "trailing-dot", "dot-and-port", "spaces", "ipv6-port", "ipv6", "ipv4-port", "non-numeric-port-kept"],
)
def test_normalize_host(header: str, host: str) -> None:
    assert normalize_host(header) == host


@pytest.mark.parametrize(
    ("header", "site_host"),
    [
        ("app1.localhost", "app1.localhost"),
        ("APP1.localhost:7080", "app1.localhost"),
        ("app1.localhost.", "app1.localhost"),
        ("pr-1.preview.localhost", "*.preview.localhost"),
        ("a.b.c.preview.localhost:7080", "*.preview.localhost"),
        ("x.b.preview.localhost", "*.b.preview.localhost"),
        ("y.x.b.preview.localhost", "*.b.preview.localhost"),
        ("b.preview.localhost", "*.preview.localhost"),
        ("exact.preview.localhost", "exact.preview.localhost"),
        ("Exact.Preview.Localhost.:1", "exact.preview.localhost"),
    ],
    ids=[
        "exact",
        "case-and-port",
        "trailing-dot",
        "wildcard-one-label",
        "wildcard-many-labels",
        "most-specific-wildcard",
        "most-specific-deep",
        "outer-wildcard-for-inner-suffix",
        "exact-beats-wildcard",
        "exact-beats-wildcard-normalized",
    ],
)
def test_match_site(table: RoutingTable, header: str, site_host: str) -> None:
    site = table.match_site(header)
    assert site is not None and site.host == site_host


@pytest.mark.parametrize(
    "header",
    ["preview.localhost", "preview.localhost:7080", "localhost", "app2.localhost", "app1.localhost.evil.com", "example.com", ""],
    ids=["wildcard-never-bare-suffix", "bare-suffix-with-port", "localhost", "unknown", "suffix-attack", "wildcard-bare-foreign", "empty"],
)
def test_match_site_finds_nothing(table: RoutingTable, header: str) -> None:
    assert table.match_site(header) is None


def test_match_site_without_wildcards_only_matches_exact_names() -> None:
    table = RoutingTable(parse_config("sites:\n  app1: 3000\n", "sites.yaml", folder="/srv").sites)
    assert table.match_site("x.app1.localhost") is None
    assert table.match_site("app1.localhost") is not None


@pytest.mark.parametrize(
    ("header", "kind", "site_host"),
    [
        ("localhost:7080", HostKind.OWN, None),
        ("LOCALHOST.", HostKind.OWN, None),
        ("127.0.0.1:7080", HostKind.OWN, None),
        ("[::1]:7080", HostKind.OWN, None),
        ("proxy.localhost", HostKind.OWN, None),
        ("app1.localhost:7080", HostKind.SITE, "app1.localhost"),
        ("pr-2.preview.localhost", HostKind.SITE, "*.preview.localhost"),
        ("a.example.com", HostKind.SITE, "*.example.com"),
        ("nope.localhost", HostKind.LOCAL, None),
        ("preview.localhost", HostKind.LOCAL, None),
        ("127.0.0.2", HostKind.LOCAL, None),
        ("example.com", HostKind.FOREIGN, None),
        ("attacker.test:7080", HostKind.FOREIGN, None),
        ("10.0.0.1", HostKind.FOREIGN, None),
        ("", HostKind.FOREIGN, None),
    ],
    ids=[
        "localhost",
        "localhost-dot",
        "ipv4",
        "ipv6",
        "proxy",
        "site",
        "wildcard-site",
        "foreign-wildcard-site",
        "unknown-local",
        "bare-wildcard-suffix",
        "loopback-ip",
        "foreign",
        "rebinding",
        "lan-ip",
        "empty",
    ],
)
def test_classify(table: RoutingTable, header: str, kind: HostKind, site_host: str | None) -> None:
    found_kind, site = table.classify(header)
    assert found_kind is kind
    assert (site.host if site else None) == site_host


@pytest.mark.parametrize(
    ("raw", "prefix", "target"),
    [
        ("/", "/", "/"),
        ("/api", "/api", "/api"),
        ("/api/", "/api", "/api/"),
        ("/api/x", "/api", "/api/x"),
        ("/api?q=1", "/api", "/api?q=1"),
        ("/apiary", "/", "/apiary"),
        ("/api.json", "/", "/api.json"),
        ("/API/x", "/", "/API/x"),
        ("/api/v2", "/api/v2", "/api/v2"),
        ("/api/v2x", "/api", "/api/v2x"),
        ("/api/v2/users?id=1", "/api/v2", "/api/v2/users?id=1"),
        ("/api/a%2Fb?x=%20&y=/api", "/api", "/api/a%2Fb?x=%20&y=/api"),
        ("/api%2Fx", "/", "/api%2Fx"),
        ("/%61pi/x", "/", "/%61pi/x"),
        ("/api//x/../y", "/api", "/api//x/../y"),
        ("/x?next=/api/y", "/", "/x?next=/api/y"),
    ],
    ids=[
        "root",
        "exact",
        "slash",
        "below",
        "query",
        "no-partial-segment",
        "no-extension",
        "case-sensitive",
        "longest-wins",
        "v2-partial-segment",
        "longest-with-query",
        "percent-untouched",
        "encoded-slash-not-a-boundary",
        "encoded-letter-not-decoded",
        "dot-segments-untouched",
        "query-not-a-path",
    ],
)
def test_match_route_longest_prefix_on_segment_boundary_forwards_path_unchanged(table: RoutingTable, raw: str, prefix: str, target: str) -> None:
    match = match_route(site_named(table, "shop.localhost"), raw)
    assert match is not None
    assert (match.route.prefix, match.target) == (prefix, target)


@pytest.mark.parametrize(
    ("site_host", "raw", "target"),
    [
        ("shop.localhost", "/static", "/"),
        ("shop.localhost", "/static/", "/"),
        ("shop.localhost", "/static/app.js", "/app.js"),
        ("shop.localhost", "/static?v=1", "/?v=1"),
        ("shop.localhost", "/static/a%20b.css?v=%2F", "/a%20b.css?v=%2F"),
        ("only-api.localhost", "/api/users?id=1", "/users?id=1"),
    ],
    ids=["bare", "slash", "file", "query", "percent-untouched", "prefix-written-with-slash"],
)
def test_strip_prefix_removes_only_the_prefix(table: RoutingTable, site_host: str, raw: str, target: str) -> None:
    match = match_route(site_named(table, site_host), raw)
    assert match is not None and match.route.strip_prefix
    assert match.target == target


@pytest.mark.parametrize("raw", ["/", "/apix", "/other/api"], ids=["root", "partial-segment", "prefix-later-in-path"])
def test_match_route_without_root_route_finds_nothing(table: RoutingTable, raw: str) -> None:
    assert match_route(site_named(table, "only-api.localhost"), raw) is None


def test_single_upstream_site_matches_every_path_unchanged(table: RoutingTable) -> None:
    site = site_named(table, "app1.localhost")
    match = match_route(site, "/deep/path%3F?x=1")
    assert match is not None
    assert (match.site, match.route.prefix, match.target) == (site, "/", "/deep/path%3F?x=1")
