"""sites.yaml text -> Config: every accepted form, and every error as FILE:LINE:COL."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from proxy.config.load import disk_root_checker, load_config
from proxy.config.model import Config, StaticRoot, Upstream, Upstreams
from proxy.config.parse import normalize_site_name, parse_config, parse_listen_address, parse_upstream
from proxy.errors import ConfigError, ConfigErrors, ListenError, Mark

FOLDER = "/srv/project"


def parse(text: str, **kwargs: object) -> Config:
    return parse_config(textwrap.dedent(text), "sites.yaml", folder=FOLDER, **kwargs)  # type: ignore[arg-type]


def error_lines(text: str, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse(text, **kwargs)
    return str(info.value).splitlines()


def only_target(config: Config, host: str) -> object:
    (site,) = [s for s in config.sites if s.host == host]
    (route,) = site.routes
    return route.target


# ---------------------------------------------------------------- accepted forms

LOCAL = "localhost"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3000", [Upstream("http", LOCAL, 3000)]),
        ("'3000'", [Upstream("http", LOCAL, 3000)]),
        ("localhost:3000", [Upstream("http", LOCAL, 3000)]),
        ("127.0.0.1:5173", [Upstream("http", "127.0.0.1", 5173)]),
        ("'[::1]:4000'", [Upstream("http", "::1", 4000)]),
        ("http://[::1]:4000", [Upstream("http", "::1", 4000)]),
        ("https://127.0.0.1:8443", [Upstream("https", "127.0.0.1", 8443)]),
        ("HTTP://LOCALHOST:3000/", [Upstream("http", LOCAL, 3000)]),
        ("http://127.0.0.1", [Upstream("http", "127.0.0.1", 80)]),
        ("[3000, 127.0.0.1:3001]", [Upstream("http", LOCAL, 3000), Upstream("http", "127.0.0.1", 3001)]),
        ("{upstream: [3000, 3001]}", [Upstream("http", LOCAL, 3000), Upstream("http", LOCAL, 3001)]),
    ],
    ids=["int", "quoted-int", "localhost-port", "ipv4", "ipv6", "url-ipv6", "https", "url-case-slash", "url-default-port", "list", "mapping-list"],
)
def test_site_value_forms_become_upstreams(value: str, expected: list[Upstream]) -> None:
    target = only_target(parse(f"sites:\n  app1: {value}\n"), "app1.localhost")
    assert isinstance(target, Upstreams)
    assert list(target.addresses) == expected


@pytest.mark.parametrize(
    ("upstream", "dial_hosts"),
    [
        (Upstream("http", LOCAL, 3000), ("127.0.0.1", "::1")),
        (Upstream("http", "127.0.0.1", 3000), ("127.0.0.1",)),
        (Upstream("http", "::1", 3000), ("::1",)),
    ],
    ids=["port-only-dials-both-loopbacks", "ipv4-as-given", "ipv6-as-given"],
)
def test_upstream_dials_both_loopbacks_only_for_localhost(upstream: Upstream, dial_hosts: tuple[str, ...]) -> None:
    assert upstream.dial_hosts == dial_hosts


@pytest.mark.parametrize(
    ("name", "host"),
    [
        ("app1", "app1.localhost"),
        ("App1", "app1.localhost"),
        ("app1.", "app1.localhost"),
        ("app2.localhost", "app2.localhost"),
        ("APP2.Localhost.", "app2.localhost"),
        ("*.preview.localhost", "*.preview.localhost"),
        ("localhost", "localhost"),
    ],
    ids=["dotless", "upper", "trailing-dot", "dotted", "dotted-upper-dot", "wildcard", "bare-localhost"],
)
def test_normalize_site_name(name: str, host: str) -> None:
    assert normalize_site_name(name) == host


def test_defaults_listen_on_both_loopbacks_port_7080_and_preserve_host_with_5s_timeout() -> None:
    config = parse("sites:\n  app1: 3000\n")
    assert (config.listen_http.host, config.listen_http.port) == (None, 7080)
    assert config.listen_http.hosts == ("127.0.0.1", "::1")
    target = only_target(config, "app1.localhost")
    assert isinstance(target, Upstreams)
    assert (target.preserve_host, target.connect_timeout) == (True, 5.0)


def test_mapping_options_are_read() -> None:
    config = parse(
        """\
        listen:
          http: 127.0.0.1:8080
        sites:
          api.localhost:
            upstream: http://127.0.0.1:8000
            preserve_host: false
            connect_timeout: 2.5
        """
    )
    assert (config.listen_http.host, config.listen_http.port) == ("127.0.0.1", 8080)
    assert only_target(config, "api.localhost") == Upstreams((Upstream("http", "127.0.0.1", 8000),), False, 2.5)


def test_inspect_is_on_unless_a_site_turns_it_off() -> None:
    config = parse(
        """\
        sites:
          app1: 3000
          quiet: {upstream: 3001, inspect: false}
          shop:
            inspect: false
            routes: {/: 3002}
        """
    )
    assert {s.host: s.inspect for s in config.sites} == {"app1.localhost": True, "quiet.localhost": False, "shop.localhost": False}


def test_static_root_is_relative_to_the_config_folder() -> None:
    config = parse("sites:\n  docs.localhost:\n    root: ./public\n    spa: true\n")
    assert only_target(config, "docs.localhost") == StaticRoot(os.path.join(FOLDER, "public"), spa=True)


def test_root_folder_defaults_to_the_config_files_folder() -> None:
    config = parse_config("sites:\n  docs: {root: public}\n", "/srv/other/sites.yaml")
    assert only_target(config, "docs.localhost") == StaticRoot("/srv/other/public")


def test_wildcard_site_keeps_its_star() -> None:
    config = parse('sites:\n  "*.preview.localhost": 4000\n')
    (site,) = config.sites
    assert (site.host, site.is_wildcard) == ("*.preview.localhost", True)


def test_routes_are_longest_prefix_first_without_trailing_slash() -> None:
    config = parse(
        """\
        sites:
          shop.localhost:
            routes:
              /: 3000
              /api/: 8000
              /api/v2: 8002
        """
    )
    (site,) = config.sites
    assert [r.prefix for r in site.routes] == ["/api/v2", "/api", "/"]


@pytest.mark.parametrize(
    ("value", "target", "strip_prefix"),
    [
        ("8000", Upstreams((Upstream("http", LOCAL, 8000),), False, 9.0), False),
        ("127.0.0.1:8000", Upstreams((Upstream("http", "127.0.0.1", 8000),), False, 9.0), False),
        ("https://[::1]:8443", Upstreams((Upstream("https", "::1", 8443),), False, 9.0), False),
        ("[8000, 8001]", Upstreams((Upstream("http", LOCAL, 8000), Upstream("http", LOCAL, 8001)), False, 9.0), False),
        ("{upstream: 8000, strip_prefix: true}", Upstreams((Upstream("http", LOCAL, 8000),), False, 9.0), True),
        ("{upstream: 8000, preserve_host: true}", Upstreams((Upstream("http", LOCAL, 8000),), True, 9.0), False),
        ("{root: ./static, spa: true}", StaticRoot(f"{FOLDER}/static", spa=True), False),
    ],
    ids=["port", "address", "url", "list", "strip-prefix", "override-option", "root"],
)
def test_route_value_accepts_every_site_form_and_inherits_site_options(value: str, target: object, strip_prefix: bool) -> None:
    config = parse(f"sites:\n  shop:\n    preserve_host: false\n    connect_timeout: 9\n    routes:\n      /api: {value}\n")
    (site,) = config.sites
    (route,) = site.routes
    assert (route.prefix, route.target, route.strip_prefix) == ("/api", target, strip_prefix)


# ---------------------------------------------------------------- errors, each at FILE:LINE:COL

ERRORS = [
    ("sites:\n  app1: 300o\n", "2:9", "'300o' is not a port, host:port or URL (did you mean 3000?)"),
    ("sites:\n  app1: 127.0.0.1:3OOO\n", "2:9", "(did you mean 3000?)"),
    ("sites:\n  app1: 99999\n", "2:9", "99999 is not a port: ports run from 1 to 65535"),
    ("sites:\n  app1: 0\n", "2:9", "0 is not a port"),
    ("sites:\n  app1: http://127.0.0.1:0\n", "2:9", "port must be a number from 1 to 65535"),
    ("sites:\n  app1: http://127.0.0.1:99999\n", "2:9", "port must be a number from 1 to 65535"),
    ("sites:\n  app1: ftp://127.0.0.1:21\n", "2:9", "must start with http:// or https://"),
    ("sites:\n  app1: http://127.0.0.1:3000/app\n", "2:9", "cannot have a path"),
    ("sites:\n  app1: ::1:4000\n", "2:9", "write an IPv6 upstream in brackets"),
    ("sites:\n  app1: []\n", "2:9", "the upstream list is empty"),
    ("sites:\n  app1: '²'\n", "2:9", "is not a port"),
    ("sites:\n  app1: !!int abc\n", "2:9", "'abc' is not a port"),
    ("sites:\n  app1:\n    upstrem: 3000\n", "3:5", "unknown key 'upstrem' in a site (did you mean 'upstream'?)"),
    ("listen:\n  htp: 7080\nsites: {}\n", "2:3", "unknown key 'htp' in listen (did you mean 'http'?)"),
    ("sitez:\n  app1: 3000\n", "1:1", "unknown key 'sitez' in the top level (did you mean 'sites'?)"),
    ("listen: {http: 70800}\nsites: {}\n", "1:16", "the port must be a number from 0 to 65535"),
    ("listen: {http: '²'}\nsites: {}\n", "1:16", "is not PORT, HOST:PORT or [IPv6]:PORT"),
    ("sites:\n  app1: {upstream: 1, connect_timeout: 0}\n", "2:40", "`connect_timeout:` must be a number of seconds above 0"),
    ("sites:\n  app1: {upstream: 1, preserve_host: yes please}\n", "2:38", "`preserve_host:` must be true or false"),
    ("sites:\n  app1: {upstream: 1, inspect: maybe}\n", "2:32", "`inspect:` must be true or false"),
    ("sites:\n  shop:\n    routes:\n      /: {upstream: 1, inspect: false}\n", "4:24", "unknown key 'inspect' in route /"),
    ("sites:\n  app1: {upstream: 1, root: ./x}\n", "2:23", "use either `upstream:` or `root:`, not both"),
    ("sites:\n  app1: {upstream: 1, spa: true}\n", "2:23", "`spa:` applies only beside `root:`"),
    ("sites:\n  app1: {root: ./x, preserve_host: true}\n", "2:21", "`preserve_host:` applies to upstreams"),
    ("sites:\n  app1: {preserve_host: true}\n", "2:9", "needs `upstream:` (a port, address or URL) or `root:`"),
    ("sites:\n  app1: 3000\n  app1.localhost: 3001\n", "3:3", "app1.localhost is already defined at line 2 ('app1' and 'app1.localhost' are the same host)"),
    ("sites:\n  app1: 3000\n  APP1: 3001\n", "3:3", "('app1' and 'APP1' are the same host)"),
    ("sites:\n  app1: 3000\n  app1: 3001\n", "3:3", "duplicate key 'app1' (first at line 2)"),
    ("sites: {}\nsites: {}\n", "2:1", "duplicate key 'sites' (first at line 1)"),
    ("sites:\n  app1: {upstream: 1, upstream: 2}\n", "2:23", "duplicate key 'upstream'"),
    ("sites:\n  localhost: 3000\n", "2:3", "localhost is the proxy's own address"),
    ("sites:\n  LOCALHOST.: 3000\n", "2:3", "localhost is the proxy's own address"),
    ("sites:\n  proxy: 3000\n", "2:3", "proxy.localhost is the proxy's own address"),
    ("sites:\n  proxy.localhost: 3000\n", "2:3", "proxy.localhost is the proxy's own address"),
    ("sites:\n  127.0.0.1: 3000\n", "2:3", "127.0.0.1 is the proxy's own address"),
    ("sites:\n  '[::1]': 3000\n", "2:3", "[::1] is the proxy's own address"),
    ("sites:\n  '::1': 3000\n", "2:3", "::1 is the proxy's own address"),
    ("sites:\n  10.0.0.1: 3000\n", "2:3", "is an IP address"),
    ("sites:\n  '*': 3000\n", "2:3", "'*' is not a valid host name"),
    ("sites:\n  'a.*.localhost': 3000\n", "2:3", "`*` may only stand alone as the first label"),
    ("sites:\n  app1.localhost:8080: 3000\n", "2:3", "is not a valid host name"),
    ("sites:\n  shop:\n    routes:\n      api: 8000\n", "4:7", "route 'api' must be a path starting with /"),
    ("sites:\n  shop:\n    routes:\n      /api*: 8000\n", "4:7", "must be a plain path prefix"),
    ("sites:\n  shop:\n    routes:\n      /api: 1\n      /api/: 2\n", "5:7", "route /api is already defined at line 4"),
    ("sites:\n  shop:\n    upstream: 1\n    routes: {/: 2}\n", "3:5", "`upstream:` cannot sit beside `routes:`"),
    ("sites:\n  shop:\n    routes:\n      /: {upstream: 1, routes: {}}\n", "4:24", "routes cannot be nested"),
    ("sites:\n  shop:\n    routes: {}\n", "3:13", "`routes:` must map path prefixes"),
    ("sites: [app1]\n", "1:8", "`sites:` must be a mapping"),
    ("- app1\n", "1:1", "the top level must be a mapping"),
    ("listen: {http: 7080}\n", "1:1", "no `sites:` mapping"),
    ("sites:\n  app1: [3000\n", "3:1", "YAML syntax error"),
    ("", "1:1", "the file is empty"),
    ("# only a comment\n", "1:1", "the file is empty"),
]


@pytest.mark.parametrize(("text", "where", "message"), ERRORS, ids=[f"{i:02}-{m[:40]}" for i, (_, _, m) in enumerate(ERRORS)])
def test_error_names_file_line_col_and_what_to_do(text: str, where: str, message: str) -> None:
    lines = error_lines(text)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"sites.yaml:{where}: "), lines[0]
    assert message in lines[0]


def test_every_error_is_reported_in_file_order() -> None:
    lines = error_lines(
        """\
        sites:
          b: 300o
          a:
            upstrem: 1
          localhost: 1
        listen:
          http: nope
        """
    )
    assert [line.split(": ", 1)[0] for line in lines] == ["sites.yaml:2:6", "sites.yaml:4:5", "sites.yaml:5:3", "sites.yaml:7:9"]


def test_config_errors_sort_by_line_then_column_and_join_with_newlines() -> None:
    errors = ConfigErrors([ConfigError(Mark("f", 3, 1), "c"), ConfigError(Mark("f", 1, 9), "b"), ConfigError(Mark("f", 1, 2), "a")])
    assert [e.message for e in errors.errors] == ["a", "b", "c"]
    assert str(errors) == "f:1:2: a\nf:1:9: b\nf:3:1: c"


def test_check_root_gets_the_absolute_path_and_its_problem_is_reported_at_the_value() -> None:
    asked: list[str] = []

    def check_root(path: str) -> str | None:
        asked.append(path)
        return "no good"

    lines = error_lines("sites:\n  docs:\n    root: ./public\n", check_root=check_root)
    assert asked == [f"{FOLDER}/public"]
    assert lines == ["sites.yaml:3:11: no good"]


# ---------------------------------------------------------------- listen addresses and upstream strings


@pytest.mark.parametrize(
    ("text", "host", "port", "is_loopback"),
    [
        ("7080", None, 7080, True),
        (" 7080 ", None, 7080, True),
        ("localhost:7080", None, 7080, True),
        ("127.0.0.1:0", "127.0.0.1", 0, True),
        ("[::1]:7080", "::1", 7080, True),
        ("127.0.0.2:80", "127.0.0.2", 80, True),
        ("127.1:80", "127.0.0.1", 80, True),
        ("0:0", "0.0.0.0", 0, False),
        ("0.0.0.0:1", "0.0.0.0", 1, False),
        ("[::]:80", "::", 80, False),
        ("[0:0::0]:80", "::", 80, False),
        ("[::ffff:0.0.0.0]:80", "::ffff:0:0", 80, False),
        ("0x0:80", "0.0.0.0", 80, False),
        ("192.168.1.5:80", "192.168.1.5", 80, False),
    ],
    ids=[
        "port",
        "spaces",
        "localhost",
        "ipv4-port-0",
        "ipv6",
        "127-8",
        "short-127",
        "zero-zero",
        "any-v4",
        "any-v6",
        "any-v6-long",
        "mapped-any",
        "hex-zero",
        "lan",
    ],
)
def test_parse_listen_address_and_sneaky_non_loopback_forms(text: str, host: str | None, port: int, is_loopback: bool) -> None:
    address = parse_listen_address(text)
    assert (address.host, address.port, address.is_loopback) == (host, port, is_loopback)


@pytest.mark.parametrize(
    "text",
    ["", "http", "65536", "127.0.0.1:", "127.0.0.1:x", "::1:80", "[::1]", "[::1]80", "example.com:80", "²", "1:²"],
    ids=["empty", "word", "port-too-big", "no-port", "bad-port", "unbracketed-v6", "v6-no-port", "v6-no-colon", "hostname", "superscript", "superscript-port"],
)
def test_parse_listen_address_refuses(text: str) -> None:
    with pytest.raises(ListenError):
        parse_listen_address(text)


@pytest.mark.parametrize(
    "value",
    [True, None, 3000.0, "", "300o", "http://", "http://user:pw@127.0.0.1:1", "http://127.0.0.1:1?x", "bad_host!:80", "[::1]"],
    ids=["bool", "none", "float", "empty", "typo", "no-host", "credentials", "query", "bad-host", "v6-no-port"],
)
def test_parse_upstream_raises_value_error_in_words(value: object) -> None:
    with pytest.raises(ValueError, match=r"port|host|URL|credentials|path") as info:
        parse_upstream(value)
    assert "invalid literal" not in str(info.value)


# ---------------------------------------------------------------- the disk: load_config and disk_root_checker


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with sites.yaml, ./public and ./certs beside it."""
    (tmp_path / "public" / "sub").mkdir(parents=True)
    (tmp_path / "certs").mkdir()
    (tmp_path / "sites.yaml").write_text("sites: {}\n")
    (tmp_path / "notes.txt").write_text("x")
    return tmp_path


@pytest.mark.parametrize(
    ("root", "problem"),
    [
        ("public", None),
        ("public/sub", None),
        ("missing", "does not exist"),
        ("notes.txt", "is a file, not a folder"),
        (".", "contains this config file"),
        ("public/..", "contains this config file"),
        ("certs", "contains the certs folder"),
    ],
    ids=["subfolder", "nested", "missing", "file", "config-folder", "dotdot", "certs"],
)
def test_disk_root_checker(project: Path, root: str, problem: str | None) -> None:
    found = disk_root_checker(str(project / "sites.yaml"))(str(project / root))
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_disk_root_checker_refuses_a_parent_of_the_config_folder(project: Path) -> None:
    (project / "inner").mkdir()
    (project / "inner" / "sites.yaml").write_text("sites: {}\n")
    found = disk_root_checker(str(project / "inner" / "sites.yaml"))(str(project))
    assert found is not None and "contains this config file" in found


def test_load_config_resolves_root_beside_the_file(project: Path) -> None:
    (project / "sites.yaml").write_text("sites:\n  docs:\n    root: ./public\n")
    config = load_config(str(project / "sites.yaml"))
    assert only_target(config, "docs.localhost") == StaticRoot(str(project / "public"))
    assert config.folder == str(project)


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("sites:\n  docs:\n    root: ./nope\n", "3:11", "does not exist"),
        ("sites:\n  docs:\n    root: .\n", "3:11", "contains this config file"),
        ("sites:\n  docs:\n    root: ./certs\n", "3:11", "contains the certs folder"),
        ("", "1:1", "the file is empty"),
        ("\n\n", "1:1", "the file is empty"),
    ],
    ids=["missing-root", "root-holds-config", "root-is-certs", "empty", "blank-lines"],
)
def test_load_config_reports_file_line_col(project: Path, text: str, where: str, message: str) -> None:
    path = project / "sites.yaml"
    path.write_text(text)
    with pytest.raises(ConfigErrors) as info:
        load_config(str(path))
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{path}:{where}: ") and message in line


def test_load_config_of_a_missing_file_says_so(tmp_path: Path) -> None:
    path = str(tmp_path / "sites.yaml")
    with pytest.raises(ConfigErrors, match=r"^" + path + r":1:1: no such file"):
        load_config(path)
