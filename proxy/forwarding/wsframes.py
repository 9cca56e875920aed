"""WebSocket frame boundaries in a byte stream, and the close frames the proxy itself sends. Pure.

The proxy tunnels WebSocket bytes unchanged (messages, pings, close codes and extensions are the
client's and the app's business). It only needs to know where frames end, so that a close
frame of its own (shutdown: 1001) goes in between two frames, never inside one. Payloads are
skipped, not read (RFC 6455 5.2).
"""

from __future__ import annotations

import os

# "Going away": the proxy is shutting down (RFC 6455 7.4.1).
GOING_AWAY = 1001
_CLOSE = 0x8


class FrameTracker:
    """Follows the frames of one direction of a WebSocket, header by header."""

    __slots__ = ("_header", "_left")

    def __init__(self) -> None:
        self._header = bytearray()  # the start of a frame header not yet complete
        self._left = 0  # payload bytes of the current frame still to come

    @property
    def at_boundary(self) -> bool:
        """Whether every frame seen so far is complete: a frame of the proxy's own may go next."""
        return self._left == 0 and not self._header

    def feed(self, data: bytes) -> None:
        """Follow a chunk of the stream."""
        self.feed_to_boundary(data, stop=False)

    def feed_to_boundary(self, data: bytes, *, stop: bool = True) -> int:
        """Follow data up to the end of the frame in progress; return how many bytes that took.

        With stop (the default) it stops at the first boundary it reaches (0 when already at
        one); a result of len(data) with at_boundary False means the frame goes on past data.
        """
        if stop and self.at_boundary:
            return 0
        at, end = 0, len(data)
        while at < end:
            if self._left:
                step = min(self._left, end - at)
                self._left -= step
                at += step
                if self._left == 0 and stop:
                    return at
                continue
            self._header.append(data[at])
            at += 1
            length = _frame_length(self._header)
            if length is not None:
                self._header.clear()
                self._left = length
                if length == 0 and stop:
                    return at
        return at


def _frame_length(header: bytearray) -> int | None:
    """Return the payload length a frame header announces once the header (mask key included) is complete, else None."""
    if len(header) < 2:
        return None
    masked = header[1] & 0x80
    length = header[1] & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if masked else 0)
    if len(header) < size:
        return None
    if length == 126:
        length = int.from_bytes(header[2:4], "big")
    elif length == 127:
        length = int.from_bytes(header[2:10], "big")
    return length


def close_frame(code: int, reason: bytes, *, masked: bool) -> bytes:
    """Return a close frame; a client's (to the app) is masked, a server's (to the browser) is not (RFC 6455 5.1)."""
    payload = code.to_bytes(2, "big") + reason[:123]  # control frames carry at most 125 bytes
    if not masked:
        return bytes([0x80 | _CLOSE, len(payload)]) + payload
    mask = os.urandom(4)
    return bytes([0x80 | _CLOSE, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
