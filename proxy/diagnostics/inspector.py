"""What the proxy remembers of recent requests: the inspector's ring and the per-site counts.

Pure bookkeeping, no sockets and no clock of its own: forward.py and server.py feed an Exchange
as bytes pass (a tap copies at most the first 64 KiB and never makes the stream wait), the
dashboard reads it. Memory is bounded by CAPACITY exchanges of at most two BODY_LIMIT prefixes.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

CAPACITY = 500  # exchanges kept for the inspector
BODY_LIMIT = 64 * 1024  # bytes kept of each request and response body
# Sites with `inspect: false` keep no bodies, except this much of a 400/403 answer: enough to
# recognise a dev server refusing the Host header.
HINT_LIMIT = 4 * 1024
HINT_STATUSES = frozenset({400, 403})
RawHeaders = tuple[tuple[bytes, bytes], ...]


class BodyTap:
    """Counts a body's bytes and keeps its first `limit` of them."""

    __slots__ = ("data", "is_complete", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.size = 0
        self.limit = limit
        self.is_complete = False  # the whole body passed through (not cut off, not left unread)

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def is_truncated(self) -> bool:
        return self.size > len(self.data)


@dataclass(eq=False, slots=True)
class Exchange:
    """One request and its answer, as the access log and the inspector see it.

    Headers are kept as the raw tuples aiohttp already holds, and decoded only when shown.
    """

    method: str = ""
    scheme: str = "http"
    host_header: str = ""
    target: str = ""
    site: str | None = None  # the configured site's host, None for unknown names
    started_at: float = 0.0  # wall clock, for display
    request_headers: RawHeaders = ()
    request_body: BodyTap = field(default_factory=lambda: BodyTap(0))
    status: int = 0
    reason: str = ""
    response_headers: RawHeaders = ()
    response_body: BodyTap = field(default_factory=lambda: BodyTap(0))
    is_stream: bool = False  # SSE or WebSocket: the body may never end
    upstream: str = ""
    note: str = ""
    hint: str = ""  # advice for the developer, e.g. a dev server refusing the Host header
    duration: float | None = None  # seconds; None while in flight
    replay_of: int | None = None
    id: int = 0  # set by RequestLog.add
    is_inspected: bool = False

    @property
    def sent_bytes(self) -> int:
        return self.response_body.size

    def inspect(self) -> None:
        """Keep body prefixes for the inspector from now on."""
        self.is_inspected = True
        self.request_body.limit = self.response_body.limit = BODY_LIMIT

    def response_started(self, status: int, reason: str, headers: RawHeaders) -> None:
        self.status, self.reason, self.response_headers = status, reason, headers
        if not self.is_inspected and status in HINT_STATUSES:
            self.response_body.limit = HINT_LIMIT


class RecentCounts:
    """Requests and errors per site over the last minute, in one-second buckets."""

    WINDOW = 60

    def __init__(self) -> None:
        self._buckets: dict[str, deque[list[int]]] = {}  # site -> [second, requests, errors]

    def add(self, site: str, now: float, *, is_error: bool) -> None:
        second = int(now)
        buckets = self._buckets.setdefault(site, deque())
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += 1
            buckets[-1][2] += is_error
        else:
            buckets.append([second, 1, int(is_error)])
        while buckets and buckets[0][0] <= second - self.WINDOW:
            buckets.popleft()

    def last_minute(self, site: str, now: float) -> tuple[int, int]:
        """Return (requests, errors) for a site over the minute before `now`."""
        since = int(now) - self.WINDOW
        requests = errors = 0
        for second, count, failed in self._buckets.get(site, ()):
            if second > since:
                requests += count
                errors += failed
        return requests, errors

    def forget_except(self, sites: set[str]) -> None:
        """Drop the counts of sites no longer configured."""
        for site in set(self._buckets) - sites:
            del self._buckets[site]


def is_error(exchange: Exchange) -> bool:
    """A 5xx, or an answer that never completed."""
    return exchange.status >= 500 or exchange.status == 0 or exchange.note.startswith("upstream broke off")


class RequestLog:
    """The last CAPACITY inspected exchanges by id, oldest first, with listeners for finished ones."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        # OrderedDict drops its oldest entry in O(1); a dict's next(iter()) walks past every deleted slot first.
        self._by_id: OrderedDict[int, Exchange] = OrderedDict()
        self._next_id = 1
        self.counts = RecentCounts()
        self.on_finish: list[Callable[[Exchange], None]] = []

    def add(self, exchange: Exchange) -> None:
        """Keep an exchange as it starts, so long-running ones show while in flight."""
        exchange.id = self._next_id
        self._next_id += 1
        self._by_id[exchange.id] = exchange
        if len(self._by_id) > self.capacity:
            self._by_id.popitem(last=False)

    def finish(self, exchange: Exchange, now: float) -> None:
        if exchange.site is not None:
            self.counts.add(exchange.site, now, is_error=is_error(exchange))
        if exchange.is_inspected:
            for listener in self.on_finish:
                listener(exchange)

    def get(self, exchange_id: int) -> Exchange | None:
        return self._by_id.get(exchange_id)

    def newest_first(self) -> list[Exchange]:
        return list(reversed(self._by_id.values()))
