"""A WebSocket between a client and an app, once the app has answered 101: bytes piped both ways.

The proxy does not terminate WebSockets. Messages, pings, extensions and close frames pass as
the two ends wrote them, so each end gets exactly the other's close code and reason. Each
direction follows frame boundaries (wsframes.py) only so that a shutdown can put its own close
frame (1001) between two frames. When one end closes its connection, the other is closed too,
once everything the first end sent has been passed on.
"""

from __future__ import annotations

import asyncio
import contextlib

from proxy.forwarding.contract import ClientGone, Tunnel
from proxy.forwarding.wsframes import GOING_AWAY, FrameTracker, close_frame
from proxy.upstream.connection import UpstreamError

# How long a shutdown waits for both ends to answer the proxy's close frames before closing anyway.
CLOSE_WAIT = 1.0
_BYE = b"proxy shutting down"
_GONE = (ClientGone, UpstreamError, OSError)


class _Direction:
    """One way through the tunnel: from `source` to `sink`, frame boundaries followed."""

    def __init__(self, source: Tunnel, sink: Tunnel, *, to_app: bool) -> None:
        self.source, self.sink = source, sink
        self.to_app = to_app  # frames the proxy writes toward the app are masked, as a client's must be
        self.frames = FrameTracker()
        self.is_closing = False  # the proxy's own close frame has gone (or will, at the next boundary)
        self.said_goodbye = False

    async def pump(self) -> None:
        """Copy bytes until the source closes; then close the sink (the other end's connection)."""
        try:
            while data := await self.source.read():
                if self.said_goodbye:
                    continue  # after the proxy's close, the end still talking is heard out, not passed on
                if self.is_closing:
                    taken = self.frames.feed_to_boundary(data)
                    if taken:
                        await self.sink.write(data[:taken])
                    if self.frames.at_boundary:
                        await self._goodbye()
                    continue
                self.frames.feed(data)
                await self.sink.write(data)
        except _GONE:
            pass
        finally:
            self.sink.close()

    def going_away(self) -> None:
        """Send a close frame to the sink as soon as no frame is half written."""
        self.is_closing = True
        if self.frames.at_boundary and not self.said_goodbye:
            task = asyncio.get_running_loop().create_task(self._goodbye())
            _pending.add(task)
            task.add_done_callback(_pending.discard)

    async def _goodbye(self) -> None:
        if self.said_goodbye:
            return
        self.said_goodbye = True
        with contextlib.suppress(*_GONE):
            await self.sink.write(close_frame(GOING_AWAY, _BYE, masked=self.to_app))


_pending: set[asyncio.Task[None]] = set()  # close frames on their way; the loop keeps only weak references


class WebSocketTunnel:
    """Both directions of one WebSocket; run() returns once both connections are closed."""

    def __init__(self, client: Tunnel, app: Tunnel) -> None:
        self._to_app = _Direction(client, app, to_app=True)
        self._to_client = _Direction(app, client, to_app=False)
        self._done = asyncio.Event()

    async def run(self) -> None:
        pumps = [asyncio.create_task(self._to_app.pump()), asyncio.create_task(self._to_client.pump())]
        try:
            # One end has closed and its pump has passed on all it sent: the WebSocket is over.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._to_app.sink.close()
            self._to_client.sink.close()
            self._done.set()

    async def going_away(self) -> None:
        """Close both ends with 1001 (the proxy is stopping), then the connections once they answer or CLOSE_WAIT is up."""
        self._to_client.going_away()
        self._to_app.going_away()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT):
                await self._done.wait()
        self._to_app.sink.close()
        self._to_client.sink.close()
