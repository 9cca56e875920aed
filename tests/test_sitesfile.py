"""`add` / `rm` as text edits: the exact resulting text, comments and formatting kept byte for byte."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from proxy.config.edits import SitesFileError, add_site, remove_site, write_atomically, yaml_key, yaml_target
from proxy.config.load import disk_root_checker
from proxy.config.model import StaticRoot, Upstream, Upstreams
from proxy.config.parse import parse_config
from proxy.errors import ConfigErrors

SHIPPED = Path(__file__).resolve().parent.parent / "sites.yaml"
FOLDER = "/srv/project"


def target_of(text: str, host: str) -> object:
    (site,) = [s for s in parse_config(text, "sites.yaml", folder=FOLDER).sites if s.host == host]
    (route,) = site.routes
    return route.target


# ---------------------------------------------------------------- the shipped sites.yaml


def test_add_to_shipped_file_lands_after_welcome_and_before_the_commented_examples() -> None:
    before = SHIPPED.read_text(encoding="utf-8")
    anchor = "    root: ./examples/welcome\n"
    assert before.count(anchor) == 1
    after = add_site(before, "sites.yaml", "app1", "3000")
    assert after == before.replace(anchor, anchor + "  app1: 3000\n")
    assert [s.host for s in parse_config(after, "sites.yaml").sites] == ["welcome.localhost", "app1.localhost"]


def test_rm_of_welcome_in_shipped_file_keeps_the_commented_examples() -> None:
    before = SHIPPED.read_text(encoding="utf-8")
    removed = "  # A static welcome page, so something works before any app runs.\n  welcome:\n    root: ./examples/welcome\n"
    assert before.count(removed) == 1
    after = remove_site(before, "sites.yaml", "welcome")
    assert after == before.replace(removed, "")
    assert parse_config(after, "sites.yaml").sites == ()


def test_add_then_rm_on_shipped_file_gives_back_the_same_bytes() -> None:
    before = SHIPPED.read_text(encoding="utf-8")
    assert remove_site(add_site(before, "sites.yaml", "app1", "3000"), "sites.yaml", "app1.localhost") == before


# ---------------------------------------------------------------- add: where the line goes

ADD_CASES = [
    pytest.param("sites:\n  a: 1\n", "sites:\n  a: 1\n  app1: 3000\n", id="after-last-site"),
    pytest.param("sites:\n    a: 1\n    b: 2\n", "sites:\n    a: 1\n    b: 2\n    app1: 3000\n", id="keeps-four-space-indent"),
    pytest.param("sites:\n  a: 1\nlisten:\n  http: 7080\n", "sites:\n  a: 1\n  app1: 3000\nlisten:\n  http: 7080\n", id="before-a-later-top-key"),
    pytest.param("sites:\n  a: 1", "sites:\n  a: 1\n  app1: 3000\n", id="no-trailing-newline"),
    pytest.param("sites:\r\n  a: 1\r\n", "sites:\r\n  a: 1\r\n  app1: 3000\r\n", id="crlf-line-endings"),
    pytest.param(
        "sites:\n  a:\n    upstream: 1\n    # preserve_host: false\n  # b: 2\n",
        "sites:\n  a:\n    upstream: 1\n    # preserve_host: false\n  app1: 3000\n  # b: 2\n",
        id="after-a-block-value-and-its-own-comments",
    ),
    pytest.param(
        "sites:\n  a: >-\n    3000\n\n\n# end\n", "sites:\n  a: >-\n    3000\n  app1: 3000\n\n\n# end\n", id="after-a-block-scalar-not-its-blank-lines"
    ),
    pytest.param(
        "sites:\n  a: {upstream: 1,\n      preserve_host: false}  # x\n",
        "sites:\n  a: {upstream: 1,\n      preserve_host: false}  # x\n  app1: 3000\n",
        id="after-a-multi-line-flow-value",
    ),
    pytest.param("sites:\n", "sites:\n  app1: 3000\n", id="empty-sites"),
    pytest.param("sites:", "sites:\n  app1: 3000\n", id="empty-sites-no-newline"),
    pytest.param("sites:  # none yet\n  # a: 1\n", "sites:  # none yet\n  app1: 3000\n  # a: 1\n", id="empty-sites-with-comments"),
    pytest.param("sites: ~\n", "sites:\n  app1: 3000\n", id="sites-tilde"),
    pytest.param("sites: null  # none\n", "sites:  # none\n  app1: 3000\n", id="sites-null-with-comment"),
    pytest.param("sites: {}\n", "sites:\n  app1: 3000\n", id="sites-empty-flow"),
    pytest.param("listen:\n  http: 7080\n", "listen:\n  http: 7080\nsites:\n  app1: 3000\n", id="no-sites-key"),
    pytest.param("listen:\n  http: 7080", "listen:\n  http: 7080\nsites:\n  app1: 3000\n", id="no-sites-key-no-newline"),
    pytest.param("", "sites:\n  app1: 3000\n", id="empty-file"),
    pytest.param("# my sites\n", "# my sites\nsites:\n  app1: 3000\n", id="only-comments"),
    pytest.param("\ufeffsites:\n  a: 1\n", "\ufeffsites:\n  a: 1\n  app1: 3000\n", id="byte-order-mark"),
]


@pytest.mark.parametrize(("before", "after"), ADD_CASES)
def test_add_inserts_one_line_and_changes_nothing_else(before: str, after: str) -> None:
    assert add_site(before, "sites.yaml", "app1", "3000") == after


@pytest.mark.parametrize(
    ("target", "line", "meaning"),
    [
        pytest.param("3000", "3000", Upstreams((Upstream("http", "localhost", 3000),)), id="port"),
        pytest.param("localhost:3000", "localhost:3000", Upstreams((Upstream("http", "localhost", 3000),)), id="localhost-port"),
        pytest.param("127.0.0.1:5173", "127.0.0.1:5173", Upstreams((Upstream("http", "127.0.0.1", 5173),)), id="ipv4"),
        pytest.param("[::1]:4000", '"[::1]:4000"', Upstreams((Upstream("http", "::1", 4000),)), id="ipv6-quoted"),
        pytest.param("http://[::1]:4000", "http://[::1]:4000", Upstreams((Upstream("http", "::1", 4000),)), id="ipv6-url"),
        pytest.param("https://127.0.0.1:8443", "https://127.0.0.1:8443", Upstreams((Upstream("https", "127.0.0.1", 8443),)), id="https-url"),
        pytest.param("[8000, 8001]", "[8000, 8001]", Upstreams((Upstream("http", "localhost", 8000), Upstream("http", "localhost", 8001))), id="flow-list"),
        pytest.param(
            "{upstream: 8000, preserve_host: false}",
            "{upstream: 8000, preserve_host: false}",
            Upstreams((Upstream("http", "localhost", 8000),), preserve_host=False),
            id="flow-mapping-upstream",
        ),
        pytest.param("{root: ./public, spa: true}", "{root: ./public, spa: true}", StaticRoot(f"{FOLDER}/public", spa=True), id="flow-mapping-root"),
        pytest.param("  3000  ", "3000", Upstreams((Upstream("http", "localhost", 3000),)), id="spaces-trimmed"),
    ],
)
def test_add_writes_each_target_form_so_it_means_what_was_typed(target: str, line: str, meaning: object) -> None:
    after = add_site("sites:\n  a: 1\n", "sites.yaml", "app1", target)
    assert after == f"sites:\n  a: 1\n  app1: {line}\n"
    assert target_of(after, "app1.localhost") == meaning


@pytest.mark.parametrize(
    ("name", "key"),
    [
        pytest.param("app1", "app1", id="plain"),
        pytest.param("App1.localhost", "App1.localhost", id="as-typed"),
        pytest.param("*.preview.localhost", '"*.preview.localhost"', id="wildcard-quoted"),
        pytest.param("3000", '"3000"', id="number-quoted"),
    ],
)
def test_add_writes_the_name_as_typed_quoted_only_when_yaml_needs_it(name: str, key: str) -> None:
    assert yaml_key(name) == key
    assert add_site("sites:\n  a: 1\n", "sites.yaml", name, "4000") == f"sites:\n  a: 1\n  {key}: 4000\n"


@pytest.mark.parametrize(
    ("target", "written"),
    [("yes", '"yes"'), ("~", '"~"'), ("&a 1", '"&a 1"'), ("3000 # x", '"3000 # x"'), ('say "hi"', 'say "hi"'), ("[1", '"[1"')],
)
def test_yaml_target_quotes_what_yaml_would_read_differently(target: str, written: str) -> None:
    assert yaml_target(target) == written


# ---------------------------------------------------------------- add --replace

REPLACE_CASES = [
    pytest.param("sites:\n  app1: 3000\n", "app1", "sites:\n  app1: 4000\n", id="one-line"),
    pytest.param("sites:\n  app1: 3000\n", "app1.localhost", "sites:\n  app1: 4000\n", id="other-spelling-keeps-key"),
    pytest.param(
        "sites:\n  app1: 3000        # frontend\n  b: 2\n",
        "app1",
        "sites:\n  app1: 4000        # frontend\n  b: 2\n",
        id="comment-kept-in-its-column",
    ),
    pytest.param("sites:\n  app1: 3000 # frontend\n", "app1", "sites:\n  app1: 4000 # frontend\n", id="comment-one-space"),
    pytest.param(
        "sites:\n  app1:\n    upstream: 3000\n    preserve_host: false\n  b: 2  # two\n",
        "app1",
        "sites:\n  app1: 4000\n  b: 2  # two\n",
        id="multi-line-block",
    ),
    pytest.param(
        "sites:\n  app1:   # the frontend\n    # options:\n    upstream: 3000\n\n  # b\n  b: 2\n",
        "app1",
        "sites:\n  app1: 4000 # the frontend\n\n  # b\n  b: 2\n",
        id="block-with-comment-on-key-line",
    ),
    pytest.param("sites:\n  app1: {upstream: 3000,\n    verify: false}  # x\n", "app1", "sites:\n  app1: 4000  # x\n", id="multi-line-flow"),
    pytest.param("sites:\n  app1: 300o\n", "app1", "sites:\n  app1: 4000\n", id="fixes-a-broken-site"),
    pytest.param("sites:\n  b: 2\n", "app1", "sites:\n  b: 2\n  app1: 4000\n", id="absent-name-is-added"),
]


@pytest.mark.parametrize(("before", "name", "after"), REPLACE_CASES)
def test_replace_changes_only_the_value(before: str, name: str, after: str) -> None:
    assert add_site(before, "sites.yaml", name, "4000", replace=True) == after


def test_replace_with_a_longer_value_pushes_the_comment_right() -> None:
    before = "sites:\n  app1: 3000  # frontend\n"
    assert add_site(before, "sites.yaml", "app1", "https://127.0.0.1:8443", replace=True) == "sites:\n  app1: https://127.0.0.1:8443 # frontend\n"


def test_replace_refuses_an_alias_value() -> None:
    with pytest.raises(SitesFileError, match="alias"):
        add_site("sites:\n  a: &port 3000\n  b: *port\n", "sites.yaml", "b", "4000", replace=True)


# ---------------------------------------------------------------- rm

THREE = "sites:\n  a: 1\n  b: 2\n  c: 3\n"
RM_CASES = [
    pytest.param(THREE, "a", "sites:\n  b: 2\n  c: 3\n", id="first"),
    pytest.param(THREE, "b.localhost", "sites:\n  a: 1\n  c: 3\n", id="middle"),
    pytest.param(THREE, "c", "sites:\n  a: 1\n  b: 2\n", id="last"),
    pytest.param("sites:\n  a: 1\n  b: 2", "b", "sites:\n  a: 1\n", id="last-no-trailing-newline"),
    pytest.param("sites:\n  a: 1\n", "a", "sites:\n", id="only-site"),
    pytest.param(
        "sites:\n  a: 1\n  b:\n    upstream: 2\n    # verify: true\n    preserve_host: false\n    # connect_timeout: 9\n  c: 3\n",
        "b",
        "sites:\n  a: 1\n  c: 3\n",
        id="block-value-and-its-comments",
    ),
    pytest.param(
        "sites:\n  a: 1\n  # b is the API\n  # (port 2)\n  b: 2   # api\n  c: 3\n",
        "b",
        "sites:\n  a: 1\n  c: 3\n",
        id="comment-above-goes-with-it",
    ),
    pytest.param(
        "sites:\n  a: 1\n  # about the next sites\n\n  b: 2\n  c: 3\n",
        "b",
        "sites:\n  a: 1\n  # about the next sites\n\n  c: 3\n",
        id="comment-behind-blank-line-stays",
    ),
    pytest.param(
        "sites:\n  a: 1\n\n  # b\n  b: 2\n\n  c: 3\n",
        "b",
        "sites:\n  a: 1\n\n  c: 3\n",
        id="between-blank-lines-one-blank-stays",
    ),
    pytest.param(
        "sites:\n  a: 1\n\n  b: 2\n",
        "b",
        "sites:\n  a: 1\n",
        id="last-after-blank-line",
    ),
    pytest.param(
        "# top\nsites:  # all of them\n  a: 1\n  b: 2\n  # c: 3\n\n  # d: 4\n# end\n",
        "b",
        "# top\nsites:  # all of them\n  a: 1\n  # c: 3\n\n  # d: 4\n# end\n",
        id="trailing-comments-stay",
    ),
    pytest.param(
        "sites:\n  a: 1\n  # the API\n  b: 2\nlisten:\n  http: 7080\n",
        "b",
        "sites:\n  a: 1\nlisten:\n  http: 7080\n",
        id="before-a-later-top-key",
    ),
    pytest.param('sites:\n  "*.preview.localhost": 4000\n  a: 1\n', "*.preview.localhost", "sites:\n  a: 1\n", id="quoted-wildcard"),
    pytest.param("sites:\r\n  a: 1\r\n  b: 2\r\n", "a", "sites:\r\n  b: 2\r\n", id="crlf"),
    pytest.param("sites:\n  a: 1\n  b: 300o\n", "b", "sites:\n  a: 1\n", id="a-broken-site"),
]


@pytest.mark.parametrize(("before", "name", "after"), RM_CASES)
def test_rm_removes_the_site_and_its_own_comments_only(before: str, name: str, after: str) -> None:
    assert remove_site(before, "sites.yaml", name) == after


# ---------------------------------------------------------------- refusals


def test_rm_of_unknown_name_suggests_the_closest_and_lists_the_sites() -> None:
    with pytest.raises(SitesFileError) as info:
        remove_site(THREE.replace("c: 3", "app2: 3"), "sites.yaml", "app3")
    assert str(info.value) == "there is no site app3.localhost in sites.yaml (did you mean app2?); its sites are: a, b, app2"


def test_rm_from_a_file_without_sites_says_so() -> None:
    with pytest.raises(SitesFileError, match="has no sites yet"):
        remove_site("sites:\n", "sites.yaml", "app1")


@pytest.mark.parametrize("name", ["app1", "APP1.localhost", "app1.localhost."])
def test_add_of_existing_name_without_replace_says_where_it_is(name: str) -> None:
    before = "sites:\n  a: 1\n  app1: 3000   # frontend\n"
    with pytest.raises(SitesFileError) as info:
        add_site(before, "sites.yaml", name, "4000")
    assert str(info.value) == "app1.localhost is already in sites.yaml at line 3 (app1: 3000); use --replace to change it"


def test_add_of_existing_block_site_names_its_lines() -> None:
    with pytest.raises(SitesFileError, match=r"at line 2 \(api, lines 2-4\); use --replace"):
        add_site("sites:\n  api:\n    upstream: 1\n    verify: true\n", "sites.yaml", "api.localhost", "2")


@pytest.mark.parametrize(
    ("name", "target", "message"),
    [
        pytest.param("app1", "99999", "sites.yaml:3:9: 99999 is not a port: ports run from 1 to 65535", id="bad-port"),
        pytest.param("app1", "300o", "sites.yaml:3:9: '300o' is not a port, host:port or URL (did you mean 3000?)", id="typo"),
        pytest.param("localhost", "3000", "sites.yaml:3:3: localhost is the proxy's own address", id="reserved-name"),
    ],
)
def test_add_producing_an_invalid_config_raises_config_errors(name: str, target: str, message: str) -> None:
    before = "sites:\n  a: 1\n"
    kept = str(before)
    with pytest.raises(ConfigErrors) as info:
        add_site(before, "sites.yaml", name, target)
    assert str(info.value).startswith(message)
    assert before == kept


def test_add_checks_static_roots_with_the_given_checker(tmp_path: Path) -> None:
    config = tmp_path / "sites.yaml"
    (tmp_path / "public").mkdir()
    before = "sites:\n  a: 1\n"
    after = add_site(before, str(config), "docs", "{root: ./public}", check_root=disk_root_checker(str(config)))
    assert after == "sites:\n  a: 1\n  docs: {root: ./public}\n"
    with pytest.raises(ConfigErrors, match="does not exist"):
        add_site(before, str(config), "docs", "{root: ./missing}", check_root=disk_root_checker(str(config)))


@pytest.mark.parametrize(
    ("before", "message"),
    [
        pytest.param("sites:\n  a: 1\n b: 2\n", "sites.yaml:3:2: YAML syntax error", id="bad-yaml"),
        pytest.param("sites:\n  a: 300o\n", "sites.yaml:2:6: '300o' is not a port", id="bad-other-site"),
        pytest.param("listen: {htp: 1}\nsites:\n  a: 1\n", "sites.yaml:1:10: unknown key 'htp'", id="bad-listen"),
        pytest.param("- a\n", "sites.yaml:1:1: the top level must be a mapping", id="not-a-mapping"),
        pytest.param("sites: [a]\n", "sites.yaml:1:8: `sites:` must be a mapping", id="sites-a-list"),
    ],
)
def test_add_to_an_already_broken_file_says_fix_it_first(before: str, message: str) -> None:
    with pytest.raises(SitesFileError) as info:
        add_site(before, "sites.yaml", "app1", "3000")
    assert str(info.value).startswith(message)
    assert str(info.value).endswith("sites.yaml already has the problems above; fix them first, then run the command again")


@pytest.mark.parametrize("before", ["sites: {a: 1}\n", "{sites: {a: 1}}\n", "sites: {\n  a: 1,\n}\n"])
def test_flow_style_sites_must_be_converted_first(before: str) -> None:
    with pytest.raises(SitesFileError, match="flow style"):
        add_site(before, "sites.yaml", "app1", "3000")
    with pytest.raises(SitesFileError, match="flow style"):
        remove_site(before, "sites.yaml", "a")


@pytest.mark.parametrize(("name", "target"), [("app1\nb", "3000"), ("app1", "3000\nb: 1"), ("", "3000"), ("app1", "  ")])
def test_name_and_target_must_be_one_line(name: str, target: str) -> None:
    with pytest.raises(SitesFileError, match="one non-empty line"):
        add_site("sites:\n  a: 1\n", "sites.yaml", name, target)


def test_an_edit_never_creates_a_duplicate() -> None:
    before = "sites:\n  app1: 3000\n"
    with pytest.raises(SitesFileError, match="already in"):
        add_site(before, "sites.yaml", "App1.Localhost", "4000")
    assert add_site(before, "sites.yaml", "App1.Localhost", "4000", replace=True) == "sites:\n  app1: 4000\n"


def test_line_breaks_yaml_counts_differently_are_refused() -> None:
    with pytest.raises(SitesFileError, match="line breaks"):
        add_site("# a\u2028# b\nsites:\n  a: 1\n", "sites.yaml", "app1", "3000")


# ---------------------------------------------------------------- write_atomically


def test_write_atomically_keeps_the_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "sites.yaml"
    path.write_text("sites:\n  a: 1\n")
    path.chmod(0o600)
    write_atomically(str(path), "sites:\n  b: 2\n")
    assert path.read_text() == "sites:\n  b: 2\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["sites.yaml"]


def test_write_atomically_writes_bytes_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "sites.yaml"
    write_atomically(str(path), "sites:\r\n  a: 1\r\n")
    assert path.read_bytes() == b"sites:\r\n  a: 1\r\n"
    assert os.listdir(tmp_path) == ["sites.yaml"]


def test_write_atomically_through_a_symlink_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "sites.yaml"
    real.parent.mkdir()
    real.write_text("sites:\n")
    link = tmp_path / "sites.yaml"
    link.symlink_to(real)
    write_atomically(str(link), "sites:\n  a: 1\n")
    assert link.is_symlink()
    assert real.read_text() == "sites:\n  a: 1\n"
    assert os.listdir(real.parent) == ["sites.yaml"]


def test_write_atomically_failure_is_a_sites_file_error_and_leaves_nothing(tmp_path: Path) -> None:
    """os.replace cannot put a file over a folder: the error names the path and the temp file goes."""
    (tmp_path / "sites.yaml").mkdir()
    with pytest.raises(SitesFileError, match=r"cannot write .*sites\.yaml"):
        write_atomically(str(tmp_path / "sites.yaml"), "sites:\n  a: 1\n")
    assert os.listdir(tmp_path) == ["sites.yaml"]
