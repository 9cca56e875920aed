"""Serves a StaticRoot: request target -> a file under the root, streamed from the disk.

Owns path decoding, containment (checked on resolved paths), index.html, the SPA fallback,
Content-Type, conditional requests (ETag, Last-Modified) and single byte ranges. It never
lists folders, never serves dotfiles (except .well-known) and never reads a whole large file
into memory.
"""

from __future__ import annotations

import asyncio
import enum
import mimetypes
import os
import re
import stat
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import BinaryIO, NamedTuple
from urllib.parse import unquote_to_bytes

from proxy.config.model import StaticRoot
from proxy.forwarding.answer import Answer, date_field, text_answer
from proxy.forwarding.contract import Field, ProxyRequest, ResponseSink

ALLOWED_METHODS = ("GET", "HEAD")
INDEX_FILE = "index.html"
ALLOWED_DOTFILES = frozenset({".well-known"})  # RFC 8615: ACME challenges, security.txt

# Fixed here because mimetypes reads the host's /etc/mime.types, which on older systems says
# application/javascript (or nothing) for .mjs, .wasm, .webmanifest and fonts.
CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # RFC 9239 made text/javascript the one name
    ".mjs": "text/javascript; charset=utf-8",
    ".cjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".xml": "application/xml",
    ".json": "application/json",
    ".map": "application/json",  # source maps
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",  # required by WebAssembly.instantiateStreaming
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mp3": "audio/mpeg",
    ".pdf": "application/pdf",
    ".gz": "application/gzip",
    ".zip": "application/zip",
}
FALLBACK_CONTENT_TYPE = "application/octet-stream"

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# After decoding, none of these may remain in a segment: "/" and "\" would split it into
# more segments than the client showed, NUL truncates paths in C, and no real file name
# needs control characters.
_FORBIDDEN_IN_SEGMENT = re.compile(r"[/\\\x00-\x1f\x7f]")


# ---------------------------------------------------------------- the request path (pure)


@dataclass(frozen=True, slots=True)
class StaticPath:
    """A request target split into decoded path segments and the raw query."""

    segments: tuple[str, ...]  # decoded, never "", ".", ".." or a dotfile other than .well-known
    is_folder: bool  # the path ended with "/"
    query: str  # raw, without "?"; "" when absent

    @property
    def has_extension(self) -> bool:
        # A folder path ("/v1.2/") is a route on an SPA, whatever dots its name has.
        return bool(self.segments) and not self.is_folder and os.path.splitext(self.segments[-1])[1] != ""


@dataclass(frozen=True, slots=True)
class PathRefusal:
    """Why a target is refused before the disk is asked; detail never depends on the disk."""

    status: int  # 400 for broken encodings, 404 for paths we will not serve
    detail: str


def parse_static_path(target: str) -> StaticPath | PathRefusal:
    """Return the decoded segments of a raw request target, or why it is refused.

    Each segment is percent-decoded on its own, so "%2f" cannot smuggle in a separator and
    "%2e%2e" is seen as "..". Empty segments ("//") are skipped, as the file system would.
    """
    path, _, query = target.partition("?")
    if path and not path.startswith("/"):
        return PathRefusal(400, "the request path must start with /")
    raw_segments = path.split("/")[1:] if path else []
    segments: list[str] = []
    for raw in raw_segments:
        if _BAD_ESCAPE.search(raw):
            return PathRefusal(400, "the path has a % that is not followed by two hex digits")
        try:
            segment = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return PathRefusal(400, "the path is not valid UTF-8 once percent-decoded")
        if _FORBIDDEN_IN_SEGMENT.search(segment):
            return PathRefusal(400, "the path has an encoded slash, a backslash or a control character")
        if segment in (".", ".."):
            return PathRefusal(404, "paths with . or .. segments are not served")
        if segment.startswith(".") and segment not in ALLOWED_DOTFILES:
            return PathRefusal(404, "files and folders whose name starts with a dot are not served (except .well-known)")
        if segment:
            segments.append(segment)
    # An empty path is a route prefix requested without its slash ("/docs"): redirect it too.
    is_folder = path.endswith("/")
    return StaticPath(tuple(segments), is_folder, query)


def content_type_for(name: str) -> str:
    """Return the Content-Type for a file name: our table first, then mimetypes."""
    ext = os.path.splitext(name)[1].lower()
    if ext in CONTENT_TYPES:
        return CONTENT_TYPES[ext]
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if guessed is None or encoding is not None:  # "x.tar.bz2" is not a plain tar
        return FALLBACK_CONTENT_TYPE
    if guessed.startswith("text/"):
        return f"{guessed}; charset=utf-8"
    return guessed


# ---------------------------------------------------------------- the disk (blocking, run in an executor)


class Found(enum.Enum):
    """What the disk said about a parsed path."""

    FILE = "file"
    FOLDER_WITHOUT_SLASH = "folder without slash"  # redirect to the slash form
    MISSING = "missing"  # may fall back to index.html on an SPA
    REFUSED = "refused"  # outside the root: never a fallback, same 404 as missing


@dataclass(frozen=True, slots=True)
class Location:
    """The outcome of a lookup; file is set only when something can be served."""

    found: Found
    file: str | None = None  # resolved path when found is FILE


def _resolve_inside(root: Path, candidate: str) -> Path | None:
    """Return candidate with every symlink resolved, or None if that leaves root."""
    # realpath (not a string prefix check): /srv/pub must not admit /srv/public2, and a
    # symlink inside the root that points elsewhere is judged by where it lands.
    resolved = Path(os.path.realpath(candidate))
    return resolved if resolved.is_relative_to(root) else None


def locate_file(root_path: str, path: StaticPath, private: frozenset[str] = frozenset()) -> Location:
    """Return where a parsed path leads under root_path. Blocking: stats and resolves.

    `private` holds resolved paths never served whatever the root: the config file, the CA's
    folder, sites' own keys and certificates (a root may be a parent of them).
    """
    root = Path(os.path.realpath(root_path))
    resolved = _resolve_inside(root, os.path.join(root, *path.segments))
    if resolved is None or _is_private(resolved, private):
        return Location(Found.REFUSED)
    try:
        st = os.stat(resolved)
    except (OSError, ValueError):  # missing, not a folder, symlink loop, unreadable
        return Location(Found.MISSING)
    if stat.S_ISDIR(st.st_mode):
        if not path.is_folder:
            return Location(Found.FOLDER_WITHOUT_SLASH)
        index = _resolve_inside(root, os.path.join(resolved, INDEX_FILE))
        if index is None or _is_private(index, private):
            return Location(Found.REFUSED)
        return Location(Found.FILE, str(index)) if index.is_file() else Location(Found.MISSING)
    if stat.S_ISREG(st.st_mode) and not path.is_folder:
        return Location(Found.FILE, str(resolved))
    return Location(Found.MISSING)  # "file.txt/", sockets, FIFOs, devices


def _is_private(resolved: Path, private: frozenset[str]) -> bool:
    return any(resolved.is_relative_to(p) for p in private)


def locate_spa_index(root_path: str, private: frozenset[str] = frozenset()) -> Location:
    """Return the root's index.html, which an SPA serves for its client-side routes."""
    return locate_file(root_path, StaticPath((), True, ""), private)


# ---------------------------------------------------------------- conditional and range requests (pure)


def file_validators(size: int, mtime_ns: int) -> tuple[bytes, bytes]:
    """Return a file's ETag and Last-Modified values; both change when the file is saved."""
    etag = b'"%x-%x"' % (mtime_ns, size)
    return etag, formatdate(mtime_ns / 1e9, usegmt=True).encode("ascii")


def _http_date(value: bytes) -> float | None:
    try:
        parsed = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    return None if parsed.tzinfo is None else parsed.timestamp()


def _etag_list(value: bytes) -> list[bytes]:
    return [tag.strip() for tag in value.split(b",") if tag.strip()]


def _weak_match(tags: list[bytes], etag: bytes) -> bool:
    return b"*" in tags or etag in (tag.removeprefix(b"W/") for tag in tags)


def precondition_status(request: ProxyRequest, etag: bytes, mtime: float) -> int | None:
    """Return 304 or 412 when the request's conditions answer it (RFC 9110 13.2.2), else None to serve the file."""
    if_match = request.field(b"if-match")
    if if_match is not None:
        if not (b"*" in _etag_list(if_match) or etag in _etag_list(if_match)):
            return 412
    elif (since := request.field(b"if-unmodified-since")) is not None:
        limit = _http_date(since)
        if limit is not None and int(mtime) > limit:
            return 412
    if_none_match = request.field(b"if-none-match")
    if if_none_match is not None:
        return 304 if _weak_match(_etag_list(if_none_match), etag) else None
    if (since := request.field(b"if-modified-since")) is not None and request.method in ALLOWED_METHODS:
        limit = _http_date(since)
        if limit is not None and int(mtime) <= limit:  # HTTP dates have whole seconds
            return 304
    return None


class Unsatisfiable(NamedTuple):
    """A Range no byte of the file is in: 416."""


def byte_range(value: bytes | None, size: int) -> tuple[int, int] | Unsatisfiable | None:
    """Return the (first, last) bytes of a single `bytes=` range, Unsatisfiable, or None to send the whole file.

    Several ranges, other units and malformed values are answered with the whole file, as RFC
    9110 14.2 allows a server to ignore Range.
    """
    if value is None:
        return None
    unit, _, spec = value.partition(b"=")
    if unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition(b"-")
    if not dash or not (first_text.isdigit() or first_text == b"") or not (last_text.isdigit() or last_text == b""):
        return None
    if first_text == b"":  # the last N bytes
        if last_text == b"":
            return None
        suffix = int(last_text)
        return (max(0, size - suffix), size - 1) if suffix and size else Unsatisfiable()
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return None  # malformed: RFC 9110 14.1.1 says ignore it
    if first >= size:
        return Unsatisfiable()
    return first, min(last, size - 1)


# ---------------------------------------------------------------- the handler


def static_error(status: int, detail: str, *fields: Field) -> Answer:
    """Return the answer for a refused or missing static file. One place, to be restyled."""
    reason = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(status, "Error")
    return text_answer(status, f"{status} {reason}: {detail}\n", *fields)


async def serve_static(request: ProxyRequest, sink: ResponseSink, root: StaticRoot, target: str, private: frozenset[str] = frozenset()) -> None:
    """Answer `target` (the raw request target, path?query as received, already stripped of any route prefix) from root.

    Nothing under a path in `private` is served (see locate_file)."""
    if request.method not in ALLOWED_METHODS:
        static_error(405, f"{request.method} is not allowed on static files; use GET or HEAD", (b"Allow", ", ".join(ALLOWED_METHODS).encode("ascii"))).send(
            sink
        )
        return
    parsed = parse_static_path(target)
    if isinstance(parsed, PathRefusal):
        static_error(parsed.status, parsed.detail).send(sink)
        return
    location = await asyncio.to_thread(locate_file, root.path, parsed, private)
    if location.found is Found.FOLDER_WITHOUT_SLASH:
        _folder_redirect(request, parsed).send(sink)
        return
    # Client-side routes like /users/42 have no extension; /missing.js is a real miss.
    if location.found is Found.MISSING and root.spa and not parsed.has_extension:
        location = await asyncio.to_thread(locate_spa_index, root.path, private)
    if location.found is not Found.FILE or location.file is None:
        static_error(404, "no such file").send(sink)
        return
    await send_file(request, sink, location.file)


async def send_file(request: ProxyRequest, sink: ResponseSink, path: str) -> None:
    """Send a file, streamed from the disk: conditional requests, a single Range, HEAD."""
    try:
        file = await asyncio.to_thread(open, path, "rb")
    except OSError:  # gone or unreadable since it was found
        static_error(404, "no such file").send(sink)
        return
    try:
        st = os.fstat(file.fileno())
        size = st.st_size
        etag, last_modified = file_validators(size, st.st_mtime_ns)
        # no-cache: keep the validators but revalidate, so an edit shows on the next load.
        fields: list[Field] = [
            (b"Content-Type", content_type_for(path).encode("ascii")),
            (b"Cache-Control", b"no-cache"),
            (b"ETag", etag),
            (b"Last-Modified", last_modified),
            (b"Accept-Ranges", b"bytes"),
        ]
        status = precondition_status(request, etag, st.st_mtime)
        if status is not None:
            Answer(status, fields[1:4] if status == 304 else []).send(sink)
            return
        first, last = 0, size - 1
        wanted = byte_range(request.field(b"range"), size) if request.method == "GET" and _range_applies(request, etag, last_modified) else None
        if isinstance(wanted, Unsatisfiable):
            Answer(416, [(b"Content-Range", b"bytes */%d" % size)]).send(sink)
            return
        status = 200
        if wanted is not None:
            status, (first, last) = 206, wanted
            fields.append((b"Content-Range", b"bytes %d-%d/%d" % (first, last, size)))
        length = last - first + 1
        fields += [(b"Content-Length", b"%d" % length), date_field()]
        if request.method == "HEAD" or length <= _WHOLE:
            data = b"" if request.method == "HEAD" else await asyncio.to_thread(_read_at, file, first, length)
            sink.send_whole(status, "", fields, data, length=length)
            return
        await sink.start(status, "", fields, length=length)
        await asyncio.to_thread(file.seek, first)
        left = length
        while left > 0:
            chunk = await asyncio.to_thread(file.read, min(_CHUNK, left))
            if not chunk:  # the file shrank while it was sent: the client must see the answer cut off
                sink.abort()
                return
            await sink.write(chunk)
            left -= len(chunk)
        await sink.end()
    finally:
        file.close()


# Files up to this size go out in one piece; larger ones are read and sent a chunk at a time.
_WHOLE = 64 * 1024
_CHUNK = 256 * 1024


def _read_at(file: BinaryIO, first: int, length: int) -> bytes:
    file.seek(first)
    return file.read(length)


def _range_applies(request: ProxyRequest, etag: bytes, last_modified: bytes) -> bool:
    """Return whether a Range is honoured: If-Range must name the file as it is now (RFC 9110 13.1.5)."""
    if_range = request.field(b"if-range")
    return if_range is None or if_range.strip() in (etag, last_modified)


def _folder_redirect(request: ProxyRequest, parsed: StaticPath) -> Answer:
    """Return a 308 from /docs/guide to /docs/guide/, keeping the query.

    The Location is relative ("./guide/"), so it is right under any route prefix the caller
    stripped, and a folder named "evil.com" cannot become "//evil.com/" (another site).
    """
    # The target is a suffix of the request path, so their last segments match; the request
    # path also covers an empty target (a route prefix requested without its slash).
    last = request.target.partition("?")[0].rpartition("/")[2]
    location = f"./{last}/" + (f"?{parsed.query}" if parsed.query else "")
    return Answer(308, [(b"Location", location.encode("utf-8", "surrogateescape"))])
