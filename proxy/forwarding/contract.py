"""What a front-end and the forwarding core say to each other: a request, its body, a response sink.

A front-end (HTTP/1.1 today) turns bytes into a ProxyRequest and gives the core a ResponseSink;
the core answers only through the sink's calls and never sees framing: status lines, chunked
coding, frames and flow control are the front-end's. Fields are (name, value) bytes as they
crossed the wire, so nothing is re-encoded on the way through. No I/O here.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

# A header field as on the wire: (name, value) bytes, in order, repeats kept.
Field = tuple[bytes, bytes]


class ClientGone(ConnectionResetError):
    """The client went away (or stopped reading for good): nothing more can reach it."""


class RequestBody(abc.ABC):
    """A request body, pulled by whoever forwards it; the front-end reads it off its connection.

    The first pull is the moment to ask for it: a front-end answers `Expect: 100-continue` then,
    once the core has reached an upstream, and not before (RFC 9110 10.1.1).
    """

    def __init__(self, length: int | None) -> None:
        self.length = length  # Content-Length when the client sent one; None: it ends when the client says
        self.is_started = False  # some of it was asked for: the request can no longer go to another upstream

    @abc.abstractmethod
    def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives (never all of it at once); raise ClientGone if it is cut off."""


class ProxyRequest:
    """One request as any front-end hands it to the core."""

    __slots__ = ("authority", "body", "client_ip", "fields", "local_port", "method", "protocol", "scheme", "target", "upgrade")

    def __init__(
        self,
        method: str,
        target: str,
        authority: str,
        fields: Sequence[Field],
        body: RequestBody | None,
        *,
        scheme: str,
        client_ip: str,
        local_port: int | None,
        protocol: str,
        upgrade: str | None = None,
    ) -> None:
        self.method = method
        # path?query exactly as received (origin form; decoded from bytes as UTF-8 with surrogate
        # escapes, so encoding it back gives the bytes), or the raw target when it is not a path.
        self.target = target
        self.authority = authority  # the name the request is routed by: Host, or the absolute form's or :authority
        self.fields = fields  # every field as received (Host included), pseudo-headers never
        self.body = body  # None: the request has no body
        self.scheme = scheme  # "http" or "https": the listener it came in on
        self.client_ip = client_ip
        self.local_port = local_port  # the listener's port, for links back to the dashboard
        self.protocol = protocol  # "HTTP/1.1", "HTTP/1.0", ... as the client spoke it
        # "websocket" when the client asks to turn this exchange into a WebSocket (HTTP/1.1:
        # GET with Upgrade and Connection: upgrade); the front-end judges it in its own protocol.
        self.upgrade = upgrade

    def field(self, lower_name: bytes) -> bytes | None:
        """Return the first value of a field by its lower-case name, or None."""
        for name, value in self.fields:
            if name.lower() == lower_name:
                return value
        return None


class Tunnel(Protocol):
    """Both directions of an upgraded connection as raw bytes (a WebSocket after its 101)."""

    async def read(self) -> bytes:
        """Return the next bytes, b"" once the other end has closed."""
        ...

    async def write(self, data: bytes) -> None:
        """Send bytes, waiting while the other end is not reading; raise ClientGone if it has gone."""
        ...

    def close(self) -> None:
        """Close the connection once what was written has gone out."""
        ...


class ResponseSink(Protocol):
    """Where the core's answer to one request goes; the front-end frames it for its protocol.

    Either send_whole() once, or start() then write() any number of times then end(); abort()
    at any point cuts the answer off so the client sees it broken, never complete. Every call
    raises ClientGone when the client has left. `fields` never hold framing fields
    (Transfer-Encoding, Connection); a Content-Length among them is given as `length` too.
    """

    @property
    def is_started(self) -> bool:
        """Whether the head has gone out: from then on no other answer can replace this one."""
        ...

    def send_whole(self, status: int, reason: str, fields: list[Field], body: bytes, *, length: int | None = None, last: bool = False) -> None:
        """Send a whole answer at once; `last` asks the front-end to take no further request on this connection."""
        ...

    async def start(self, status: int, reason: str, fields: list[Field], *, length: int | None = None) -> None:
        """Send the head of an answer whose body follows through write()."""
        ...

    async def write(self, data: bytes) -> None:
        """Send part of the body, waiting while the client is not reading."""
        ...

    async def end(self) -> None:
        """Finish the body."""
        ...

    def abort(self) -> None:
        """Cut the answer off: the client must see it incomplete."""
        ...

    async def upgrade(self, reason: str, fields: list[Field]) -> Tunnel:
        """Accept the client's upgrade (HTTP/1.1: a 101 with these fields) and return the connection as a tunnel."""
        ...
