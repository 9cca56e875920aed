"""What the dashboard may see of the running proxy: a narrow view, so it depends on no server class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from proxy.config.model import Config
from proxy.diagnostics.inspector import Exchange, RequestLog
from proxy.forwarding.contract import ProxyRequest, ResponseSink
from proxy.forwarding.health import UpstreamHealth


class ListenerView(Protocol):
    @property
    def scheme(self) -> str: ...

    @property
    def port(self) -> int: ...


class ProxyView(Protocol):
    """The running proxy as the dashboard reads it, and the one thing it asks of it: a replay."""

    @property
    def config(self) -> Config:
        """The config in force (the last good one when a save did not load)."""
        ...

    @property
    def config_error(self) -> str | None:
        """The FILE:LINE:COL lines of the latest save that did not load, or None."""
        ...

    @property
    def health(self) -> UpstreamHealth: ...

    @property
    def requests(self) -> RequestLog: ...

    @property
    def ca_cert_path(self) -> str | None:
        """The local CA's certificate, when the proxy serves HTTPS."""
        ...

    @property
    def listeners(self) -> Sequence[ListenerView]: ...

    def port_of(self, scheme: str) -> int | None: ...

    def new_exchange(self, request: ProxyRequest) -> Exchange:
        """Return the record a request will fill as the core answers it."""
        ...

    async def replay(self, request: ProxyRequest, sink: ResponseSink, *, exchange: Exchange, replay_of: int) -> None:
        """Answer a request through the whole forwarding path, recorded as a replay of a captured one."""
        ...
