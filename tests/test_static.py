"""Static roots served through the proxy's own HTTP/1.1 front-end on 127.0.0.1, from a real folder in tmp_path.

Traversal attempts go over a plain socket so no client library can normalize the path first.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.config.model import StaticRoot
from proxy.forwarding.contract import ProxyRequest, ResponseSink
from proxy.forwarding.static import PathRefusal, StaticPath, Unsatisfiable, byte_range, content_type_for, parse_static_path, precondition_status, serve_static
from proxy.frontends.http1.connection import Http1Server

SECRET = "TOP-SECRET-do-not-serve"
BIG = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable
IO_TIMEOUT = 5.0


@dataclass
class Site:
    """A static folder `pub` beside things that must never be served from it."""

    root: Path  # tmp_path / "pub"
    tmp: Path


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """pub/ with typical build output, plus secrets next to it and symlinks pointing at them."""
    pub = tmp_path / "pub"
    files = {
        "index.html": "<h1>home</h1>",
        "app.js": "console.log(1)",
        "mod.mjs": "export {}",
        "style.css": "body{}",
        "data.json": "{}",
        "logo.svg": "<svg/>",
        "app.wasm": "\0asm",
        "site.webmanifest": "{}",
        "app.js.map": "{}",
        "font.woff2": "wOF2",
        "notes.txt": "plain notes",
        "docs/index.html": "<h1>docs</h1>",
        "docs/guide/page.txt": "guide page",
        "evil.com/index.html": "a folder named like a host",
        ".env": SECRET,
        "sub/.git/config": SECRET,
        ".well-known/security.txt": "Contact: mailto:dev@example.test",
    }
    for name, text in files.items():
        (pub / name).parent.mkdir(parents=True, exist_ok=True)
        (pub / name).write_text(text)
    (pub / "big.bin").write_bytes(BIG)
    (tmp_path / "secret.txt").write_text(SECRET)
    # A sibling whose name starts with the root's name: a string prefix check would admit it.
    (tmp_path / "pub2").mkdir()
    (tmp_path / "pub2" / "secret.txt").write_text(SECRET)
    (tmp_path / "pub2" / "index.html").write_text(SECRET)
    (pub / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (pub / "leakdir").symlink_to(tmp_path / "pub2", target_is_directory=True)
    (pub / "alias.txt").symlink_to(pub / "notes.txt")
    (pub / "loop").symlink_to(pub / "loop")
    return Site(pub, tmp_path)


@dataclass
class Served:
    client: aiohttp.ClientSession
    port: int

    async def raw(self, target: str, method: str = "GET", headers: str = "") -> tuple[int, dict[str, str], bytes]:
        """Send one request line exactly as written; return status, headers (lower-case) and body."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), IO_TIMEOUT)
        try:
            writer.write(f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n".encode("latin-1"))
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), IO_TIMEOUT)  # the server closes after one response
        finally:
            writer.close()
            await writer.wait_closed()
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed = dict(line.split(": ", 1) for line in header_lines)
        return int(status_line.split()[1]), {k.lower(): v for k, v in parsed.items()}, body


class _StaticOnly:
    """A core that only serves one static root, so these tests see serve_static through the real front-end."""

    def __init__(self, root: StaticRoot, target_of: Callable[[ProxyRequest], str]) -> None:
        self.root, self.target_of = root, target_of

    async def handle(self, request: ProxyRequest, sink: ResponseSink) -> None:
        await serve_static(request, sink, self.root, self.target_of(request))


@asynccontextmanager
async def serving(root: StaticRoot, target_of: Callable[[ProxyRequest], str] = lambda r: r.target) -> AsyncIterator[Served]:
    """Serve root from the proxy's HTTP/1.1 front-end on 127.0.0.1, port 0."""
    runner = web.ServerRunner(Http1Server(_StaticOnly(root, target_of), max_connections=100), handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}", auto_decompress=False) as client:
            yield Served(client, port)
    finally:
        await runner.cleanup()


@pytest.fixture
async def served(site: Site) -> AsyncIterator[Served]:
    async with serving(StaticRoot(str(site.root))) as served:
        yield served


@pytest.fixture
async def spa(site: Site) -> AsyncIterator[Served]:
    async with serving(StaticRoot(str(site.root), spa=True)) as served:
        yield served


# ---------------------------------------------------------------- parsing (pure)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/", StaticPath((), True, "")),
        ("", StaticPath((), False, "")),
        ("/a/b.js?v=1&x", StaticPath(("a", "b.js"), False, "v=1&x")),
        ("//a//b/", StaticPath(("a", "b"), True, "")),
        ("/caf%C3%A9/a%20b", StaticPath(("café", "a b"), False, "")),
        ("/.well-known/x", StaticPath((".well-known", "x"), False, "")),
    ],
    ids=["root", "empty", "query", "double-slashes", "utf8-escapes", "well-known"],
)
def test_parse_static_path_decodes_each_segment(target: str, expected: StaticPath) -> None:
    assert parse_static_path(target) == expected


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/a/../b", 404),
        ("/./a", 404),
        ("/%2e%2e/secret.txt", 404),
        ("/%2E./secret.txt", 404),
        ("/.env", 404),
        ("/.well-known/.hidden", 404),
        ("/..%2fsecret.txt", 400),
        ("/a%5c..%5csecret.txt", 400),
        ("/a\\b", 400),
        ("/a%00.txt", 400),
        ("/a%0a", 400),
        ("/%zz", 400),
        ("/%ff", 400),
        ("http://x/y", 400),
    ],
    ids=[
        "dotdot",
        "dot",
        "encoded-dotdot",
        "mixed-case-dotdot",
        "dotfile",
        "dotfile-in-well-known",
        "encoded-slash",
        "encoded-backslash",
        "backslash",
        "nul",
        "newline",
        "bad-escape",
        "not-utf8",
        "absolute-form",
    ],
)
def test_parse_static_path_refuses(target: str, status: int) -> None:
    refusal = parse_static_path(target)
    assert isinstance(refusal, PathRefusal)
    assert refusal.status == status


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("a.js", "text/javascript; charset=utf-8"),
        ("a.MJS", "text/javascript; charset=utf-8"),
        ("a.css", "text/css; charset=utf-8"),
        ("a.html", "text/html; charset=utf-8"),
        ("a.json", "application/json"),
        ("a.svg", "image/svg+xml"),
        ("a.wasm", "application/wasm"),
        ("a.webmanifest", "application/manifest+json"),
        ("a.js.map", "application/json"),
        ("a.woff2", "font/woff2"),
        ("a.txt", "text/plain; charset=utf-8"),
        ("a.tar.bz2", "application/octet-stream"),
        ("LICENSE", "application/octet-stream"),
    ],
)
def test_content_type_for(name: str, content_type: str) -> None:
    assert content_type_for(name) == content_type


# ---------------------------------------------------------------- serving files


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/mod.mjs", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/data.json", "application/json"),
        ("/logo.svg", "image/svg+xml"),
        ("/app.wasm", "application/wasm"),
        ("/site.webmanifest", "application/manifest+json"),
        ("/app.js.map", "application/json"),
        ("/font.woff2", "font/woff2"),
        ("/notes.txt", "text/plain; charset=utf-8"),
    ],
)
async def test_files_are_served_with_their_content_type(served: Served, site: Site, path: str, content_type: str) -> None:
    async with served.client.get(path) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == content_type
        assert await resp.read() == (site.root / path.lstrip("/")).read_bytes()


async def test_folder_with_slash_serves_its_index_html(served: Served) -> None:
    for path, text in (("/", "<h1>home</h1>"), ("/docs/", "<h1>docs</h1>")):
        async with served.client.get(path) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
            assert await resp.text() == text


async def test_folder_without_slash_redirects_keeping_the_query(served: Served) -> None:
    async with served.client.get("/docs?x=1&y", allow_redirects=False) as resp:
        assert resp.status == 308
        assert resp.headers["Location"] == "./docs/?x=1&y"
    async with served.client.get("/docs?x=1") as resp:  # the client resolves the relative Location
        assert resp.status == 200
        assert str(resp.url.relative()) == "/docs/?x=1"
        assert await resp.text() == "<h1>docs</h1>"


async def test_redirect_is_relative_so_it_survives_a_stripped_prefix(site: Site) -> None:
    """A route /manual serving pub/docs: /manual must go to /manual/, not to /."""
    async with serving(StaticRoot(str(site.root / "docs")), lambda r: r.target.removeprefix("/manual")) as served:
        async with served.client.get("/manual", allow_redirects=False) as resp:
            assert resp.status == 308
            assert resp.headers["Location"] == "./manual/"
        async with served.client.get("/manual") as resp:
            assert str(resp.url.relative()) == "/manual/"
            assert await resp.text() == "<h1>docs</h1>"


async def test_redirect_cannot_point_at_another_host(served: Served) -> None:
    """A folder named evil.com requested as //evil.com must not redirect to //evil.com/."""
    status, headers, _ = await served.raw("//evil.com")
    assert status == 308
    assert headers["location"] == "./evil.com/"


async def test_folder_without_index_is_not_listed(served: Served) -> None:
    status, _, body = await served.raw("/docs/guide/")
    assert status == 404
    assert b"page.txt" not in body


async def test_missing_file_is_404(served: Served) -> None:
    for path in ("/nope.js", "/nope", "/notes.txt/", "/notes.txt/x", "/loop"):
        status, _, _ = await served.raw(path)
        assert status == 404, path


async def test_root_given_through_a_symlink_serves_its_files(site: Site) -> None:
    """StaticRoot.path is not resolved; files must still count as inside it."""
    link = site.tmp / "site-link"
    link.symlink_to(site.root, target_is_directory=True)
    async with serving(StaticRoot(str(link))) as served:
        async with served.client.get("/notes.txt") as resp:
            assert resp.status == 200
            assert await resp.text() == "plain notes"
        status, _, body = await served.raw("/leak.txt")
        assert status == 404
        assert SECRET.encode() not in body


async def test_symlink_inside_the_root_is_served(served: Served) -> None:
    async with served.client.get("/alias.txt") as resp:
        assert resp.status == 200
        assert await resp.text() == "plain notes"


# ---------------------------------------------------------------- containment, over a raw socket


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/%2e%2e/secret.txt", 404),
        ("/%2e%2e/pub2/secret.txt", 404),
        ("/..%2fsecret.txt", 400),
        ("/..%2Fpub2%2Fsecret.txt", 400),
        ("/a/../../secret.txt", 404),
        ("/../pub2/secret.txt", 404),
        ("/..\\secret.txt", 400),
        ("/..%5csecret.txt", 400),
        ("/secret.txt%00.html", 400),
        ("/leak.txt", 404),
        ("/leakdir/secret.txt", 404),
        ("/leakdir/", 404),
        ("/.env", 404),
        ("/sub/.git/config", 404),
    ],
    ids=[
        "encoded-dotdot",
        "encoded-dotdot-sibling",
        "encoded-slash",
        "encoded-slash-sibling",
        "dotdot",
        "dotdot-sibling",
        "backslash",
        "encoded-backslash",
        "nul",
        "symlinked-file-outside",
        "symlinked-folder-outside",
        "symlinked-folder-index-outside",
        "dotfile",
        "dot-folder",
    ],
)
async def test_nothing_outside_the_root_or_hidden_is_served(served: Served, target: str, status: int) -> None:
    got, _, body = await served.raw(target)
    assert got == status
    assert SECRET.encode() not in body


async def test_sibling_folder_sharing_the_roots_name_prefix_is_outside(served: Served) -> None:
    """Root pub must not admit pub2 (via the symlink leakdir): a string prefix check would."""
    for target in ("/leakdir/secret.txt", "/leakdir/index.html", "/leakdir/"):
        status, _, body = await served.raw(target)
        assert status == 404, target
        assert SECRET.encode() not in body


async def test_refusal_looks_the_same_whether_the_outside_file_exists(served: Served) -> None:
    """A symlink to an existing outside file and one to nothing give identical answers."""
    first = await served.raw("/leak.txt")
    second = await served.raw("/nope.txt")
    assert (first[0], first[2]) == (second[0], second[2])


async def test_well_known_is_served(served: Served) -> None:
    async with served.client.get("/.well-known/security.txt") as resp:
        assert resp.status == 200
        assert await resp.text() == "Contact: mailto:dev@example.test"


# ---------------------------------------------------------------- single-page apps


async def test_spa_serves_index_html_for_client_side_routes(spa: Served) -> None:
    for path in ("/users/42", "/settings", "/settings/", "/users/42?tab=1"):
        async with spa.client.get(path) as resp:
            assert resp.status == 200, path
            assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
            assert await resp.text() == "<h1>home</h1>"


async def test_spa_still_serves_real_files(spa: Served) -> None:
    async with spa.client.get("/app.js") as resp:
        assert await resp.text() == "console.log(1)"
    async with spa.client.get("/docs/") as resp:
        assert await resp.text() == "<h1>docs</h1>"


async def test_spa_missing_path_with_extension_is_404(spa: Served) -> None:
    async with spa.client.get("/missing.js") as resp:
        assert resp.status == 404


async def test_spa_never_falls_back_for_refused_paths(spa: Served) -> None:
    """Refused paths stay 404 rather than looking like a page of the app."""
    for target in ("/.env", "/leakdir", "/leakdir/secret", "/a/../../secret"):
        status, _, body = await spa.raw(target)
        assert status == 404, target
        assert b"home" not in body and SECRET.encode() not in body


async def test_non_spa_extensionless_missing_path_is_404(served: Served) -> None:
    async with served.client.get("/users/42") as resp:
        assert resp.status == 404


# ---------------------------------------------------------------- HTTP semantics (FileResponse)


async def test_range_request_gets_206_with_content_range(served: Served) -> None:
    async with served.client.get("/big.bin", headers={"Range": "bytes=10-19"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 10-19/{len(BIG)}"
        assert await resp.read() == BIG[10:20]
    async with served.client.get("/big.bin", headers={"Range": "bytes=-5"}) as resp:
        assert resp.status == 206
        assert await resp.read() == BIG[-5:]


async def test_unsatisfiable_range_gets_416(served: Served) -> None:
    async with served.client.get("/big.bin", headers={"Range": f"bytes={len(BIG)}-"}) as resp:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == f"bytes */{len(BIG)}"


async def test_matching_etag_gets_304(served: Served) -> None:
    async with served.client.get("/app.js") as resp:
        etag = resp.headers["ETag"]
        assert resp.headers["Cache-Control"] == "no-cache"
    async with served.client.get("/app.js", headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304
        assert await resp.read() == b""
    async with served.client.get("/app.js", headers={"If-None-Match": '"other"'}) as resp:
        assert resp.status == 200


async def test_if_modified_since_gets_304_until_the_file_changes(served: Served, site: Site) -> None:
    async with served.client.get("/app.js") as resp:
        last_modified = resp.headers["Last-Modified"]
    async with served.client.get("/app.js", headers={"If-Modified-Since": last_modified}) as resp:
        assert resp.status == 304
    later = (site.root / "app.js").stat().st_mtime + 10
    os.utime(site.root / "app.js", (later, later))
    async with served.client.get("/app.js", headers={"If-Modified-Since": last_modified}) as resp:
        assert resp.status == 200


async def test_head_has_content_length_and_no_body(served: Served) -> None:
    status, headers, body = await served.raw("/big.bin", method="HEAD")
    assert status == 200
    assert headers["content-length"] == str(len(BIG))
    assert body == b""


async def test_post_gets_405_with_allow(served: Served) -> None:
    async with served.client.post("/app.js", data=b"x") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET, HEAD"


async def test_large_file_streams_whole(served: Served, site: Site) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    (site.root / "large.bin").write_bytes(data)
    async with served.client.get("/large.bin") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(data))
        assert await resp.read() == data


# ---------------------------------------------------------------- ranges and conditions (pure)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (b"bytes=10-19", (10, 19)),
        (b"bytes=10-", (10, 99)),
        (b"bytes=-5", (95, 99)),
        (b"bytes=-500", (0, 99)),
        (b"bytes=90-1000", (90, 99)),
        (b"bytes=100-", "416"),
        (b"bytes=-0", "416"),
        (b"bytes=5-1", None),
        (b"bytes=0-1,5-6", None),
        (b"items=0-1", None),
        (b"bytes=a-b", None),
        (b"bytes=-", None),
    ],
    ids=[
        "absent",
        "span",
        "open-end",
        "suffix",
        "suffix-longer-than-file",
        "end-past-file",
        "start-past-file",
        "empty-suffix",
        "reversed",
        "several",
        "other-unit",
        "not-numbers",
        "no-numbers",
    ],
)
def test_byte_range(value: bytes | None, expected: tuple[int, int] | str | None) -> None:
    result = byte_range(value, 100)
    assert ("416" if isinstance(result, Unsatisfiable) else result) == expected


def _conditional(method: str = "GET", **fields: str) -> ProxyRequest:
    raw = [(name.replace("_", "-").encode("ascii"), value.encode("ascii")) for name, value in fields.items()]
    return ProxyRequest(method, "/f", "a.localhost", raw, None, scheme="http", client_ip="127.0.0.1", local_port=None, protocol="HTTP/1.1")


ETAG = b'"5-a"'
MTIME = 1_800_000_000.0  # 2027-01-15T08:00:00Z
BEFORE, AT, AFTER = "Fri, 15 Jan 2027 07:00:00 GMT", "Fri, 15 Jan 2027 08:00:00 GMT", "Fri, 15 Jan 2027 09:00:00 GMT"


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (_conditional(), None),
        (_conditional(If_None_Match='"5-a"'), 304),
        (_conditional(If_None_Match='W/"5-a"'), 304),
        (_conditional(If_None_Match='"x", "5-a"'), 304),
        (_conditional(If_None_Match="*"), 304),
        (_conditional(If_None_Match='"other"', If_Modified_Since=AFTER), None),
        (_conditional(If_Modified_Since=AT), 304),
        (_conditional(If_Modified_Since=BEFORE), None),
        (_conditional(If_Modified_Since="not a date"), None),
        (_conditional(If_Match='"other"'), 412),
        (_conditional(If_Match='"5-a"'), None),
        (_conditional(If_Unmodified_Since=BEFORE), 412),
        (_conditional(If_Unmodified_Since=AFTER), None),
    ],
    ids=[
        "none",
        "etag-matches",
        "weak-etag-matches",
        "one-of-several",
        "star",
        "etag-decides-over-date",
        "not-modified-since",
        "modified-since",
        "bad-date-ignored",
        "if-match-fails",
        "if-match-holds",
        "unmodified-since-fails",
        "unmodified-since-holds",
    ],
)
def test_precondition_status(request_: ProxyRequest, status: int | None) -> None:
    assert precondition_status(request_, ETAG, MTIME) == status
