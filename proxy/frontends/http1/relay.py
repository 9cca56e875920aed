"""The client side of a relayed response: the upstream's header bytes as they came, framed for this client.

aiohttp's response writer serializes headers from str (re-encoding any non-UTF-8 byte) and adds
Server, Content-Type and Date of its own. A proxy passes the app's header section on unchanged:
only hop-by-hop fields go, and the framing for this client connection (chunked for HTTP/1.1 when
the length is not known, else close-delimited) and Date (RFC 9110 6.6.1, when the app sent none)
are added. aiohttp's writer still does the body: chunk encoding, length cut-off, backpressure.
"""

from __future__ import annotations

import time
from email.utils import formatdate

from aiohttp import HttpVersion11, web
from aiohttp.helpers import must_be_empty_body

from proxy.frontends.http1.heads import ClientRequest, FastRequest

_date_cache: tuple[int, bytes] = (0, b"")


def _date_field() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, f"Date: {formatdate(now, usegmt=True)}\r\n".encode("ascii"))
    return _date_cache[1]


class RelayedResponse(web.StreamResponse):
    """A response whose header section is given as bytes; aiohttp only frames and writes it.

    A streamed body goes through aiohttp's writer (chunk encoding, length cut-off, backpressure),
    its head sent at once so the client sees the response start. A body that is all here already
    goes out with the head in one write by send_whole().
    """

    def __init__(self, status: int, reason: str, fields: bytes, *, content_length: int | None, has_date: bool) -> None:
        super().__init__(status=status, reason=reason)
        self._fields = fields
        self._relayed_length = content_length
        self._has_date = has_date
        self._framing = b""

    def _frame(self, request: ClientRequest, *, has_body: bool, length: int | None) -> bytes:
        """Decide keep-alive and return the framing fields for this client; has_body=False for HEAD, 1xx, 204, 304."""
        keep_alive = request.keep_alive if self._keep_alive is None else self._keep_alive
        framing = b""
        if not has_body:
            pass  # the app's Content-Length (if any) describes the resource, and stays
        elif length is not None:
            if self._relayed_length is None:
                framing = b"Content-Length: %d\r\n" % length
        elif request.version >= HttpVersion11:
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            keep_alive = False  # an HTTP/1.0 client reads to the close
        if request.version >= HttpVersion11:
            if not keep_alive:
                framing += b"Connection: close\r\n"
        elif keep_alive:
            framing += b"Connection: keep-alive\r\n"
        self._keep_alive = keep_alive
        return framing

    def _head(self, request: ClientRequest, framing: bytes) -> bytes:
        version = request.version
        status_line = f"HTTP/{version.major}.{version.minor} {self.status} {self.reason}\r\n".encode("latin-1", "replace")
        return status_line + self._fields + framing + (b"" if self._has_date else _date_field()) + b"\r\n"

    def send_whole(self, request: ClientRequest, body: bytes) -> None:
        """Write head and whole body in one write; raise ConnectionResetError if the client has gone.

        aiohttp then sees a response that is complete (prepare and write_eof do nothing more).
        A chunked answer that is all here is passed on with its length instead.
        """
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client has gone")
        has_body = not must_be_empty_body(request.method, self.status)
        framing = self._frame(request, has_body=has_body, length=len(body) if self._relayed_length is None else self._relayed_length)
        data = self._head(request, framing) + (body if has_body else b"")
        if isinstance(request, FastRequest):
            request.write_soon(data)
        else:  # aiohttp may close the connection, or write a next answer, as soon as this returns
            transport.write(data)
        self._eof_sent = True

    async def _prepare_headers(self) -> None:
        request, writer = self._req, self._payload_writer
        assert request is not None and writer is not None
        self._framing = self._frame(request, has_body=not self._must_be_empty_body, length=self._relayed_length)
        if self._must_be_empty_body:
            return
        if self._relayed_length is not None:
            writer.length = self._relayed_length
        elif request.version >= HttpVersion11:
            writer.enable_chunking()

    async def _write_headers(self) -> None:
        request, writer = self._req, self._payload_writer
        assert request is not None and writer is not None
        # The writer's own serializer only takes str; hand it the finished bytes instead.
        writer._headers_buf = self._head(request, self._framing)  # type: ignore[attr-defined]
        writer._headers_written = False  # type: ignore[attr-defined]
        writer.send_headers()
