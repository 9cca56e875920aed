"""Live config: a watchdog thread hands file events to the loop, the loop debounces and reloads.

A file that does not load leaves the last good config serving; its FILE:LINE:COL lines are logged
once and kept on the server for the index page and /api/sites. Watching never stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

from watchdog.events import (
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_OPENED,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from proxy.config.changes import describe_changes
from proxy.config.load import parse_config_file_text, read_config_text
from proxy.config.model import Config, ListenAddress
from proxy.config.parse import text_digest
from proxy.errors import ConfigErrors, ListenError, ProxyError

log = logging.getLogger("proxy")

# Editors save in bursts (truncate + write, temp + rename, backup + delete): wait for quiet.
DEBOUNCE_SECONDS = 0.2
_READ_ONLY_EVENTS = frozenset({EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE})
# The events a save can cause. The watch is on the whole folder, and other files there (a log the
# proxy or a dev server appends to) may change thousands of times a second: each write would wake
# the watcher thread, which then competes with the event loop for the GIL. On Linux a save is seen
# by its close-after-write, so inotify is not even asked for plain writes (IN_MODIFY); elsewhere
# (FSEvents, kqueue) a save may arrive as "modified" only.
_SAVE_EVENTS = [FileClosedEvent, FileCreatedEvent, FileDeletedEvent, FileMovedEvent] + ([] if sys.platform.startswith("linux") else [FileModifiedEvent])


class Listening(Protocol):
    @property
    def url(self) -> str: ...

    @property
    def scheme(self) -> str: ...


class ReloadTarget(Protocol):
    """The running proxy as a reload sees it: the config in force, the error shown, the listeners."""

    @property
    def config(self) -> Config: ...

    config_error: str | None

    def apply(self, config: Config) -> None:
        """Swap in a new config; raise ProxyError, changing nothing, when it cannot be served."""
        ...

    @property
    def listeners(self) -> Sequence[Listening]: ...

    def listen_address(self, scheme: str) -> ListenAddress | None: ...

    async def move_listeners(self, scheme: str, address: ListenAddress, *, allow_remote: bool = False) -> Sequence[Listening]: ...


class Reloader:
    """Loads the config file again and swaps it in when it is valid."""

    def __init__(
        self,
        server: ReloadTarget,
        path: str,
        *,
        overridden: frozenset[str],
        allow_remote: bool,
        on_listening: Callable[[Sequence[Listening]], None],
    ) -> None:
        self.server = server
        self.path = path
        self.overridden = overridden  # listen keys given on the command line, which win over the file
        self.allow_remote = allow_remote
        self.on_listening = on_listening
        self._lock = asyncio.Lock()
        self._last_text_digest: str | None = server.config.source_digest  # the text last tried
        self._noted_listen = {"http": server.config.listen_http, "https": server.config.listen_https}  # said once per value

    async def reload(self, reason: str, *, force: bool = False) -> None:
        """Load the file; apply it if valid, else keep the last good config and say why.

        Without `force`, a file whose bytes did not change since the last load is left alone.
        """
        async with self._lock:  # one reload at a time, in the order asked
            await self._reload(reason, force)

    async def _reload(self, reason: str, force: bool) -> None:
        try:
            text = read_config_text(self.path)
        except FileNotFoundError:
            self._report_error(f"{self.path}: the file is missing (deleted or being replaced); still serving the last good config until it is back")
            self._last_text_digest = None
            return
        except ConfigErrors as exc:
            self._report_error(str(exc))
            return
        digest = text_digest(text)
        if not force and digest == self._last_text_digest and self.server.config_error is None:
            return  # an event without a change (editors touch, close, chmod)
        try:
            new = parse_config_file_text(text, self.path)
        except ConfigErrors as exc:
            self._last_text_digest = digest
            self._report_error(str(exc))
            return
        old = self.server.config
        self._last_text_digest = digest
        was_broken = self.server.config_error is not None
        try:
            self.server.apply(new)
        except ProxyError as exc:  # a site's own certificate cannot be loaded
            self._report_error(str(exc))
            return
        changes = describe_changes(old, new)
        if was_broken:
            log.info("%s loads again (%s)", self.path, reason)
        if changes:
            log.info("reloaded %s (%s):\n%s", self.path, reason, "\n".join(f"  {line}" for line in changes))
        elif not was_broken:
            log.info("reloaded %s (%s): no routing changes", self.path, reason)
        for scheme, address in (("http", new.listen_http), ("https", new.listen_https)):
            bound = self.server.listen_address(scheme)
            if bound is not None and address != bound:
                await self._move_listeners(scheme, address)

    async def _move_listeners(self, scheme: str, address: ListenAddress) -> None:
        if scheme in self.overridden:
            if address != self._noted_listen[scheme]:  # say it once per value, not on every reload
                self._noted_listen[scheme] = address
                log.info(
                    "note: listen.%s in %s is now %s, but --%s on the command line takes precedence; restart without it to use the file's",
                    scheme,
                    self.path,
                    address,
                    scheme,
                )
            return
        try:
            listeners = await self.server.move_listeners(scheme, address, allow_remote=self.allow_remote)
        except ListenError as exc:
            still = ", ".join(listener.url for listener in self.server.listeners if listener.scheme == scheme)
            log.warning("cannot move the listener: %s; still listening on %s (fix listen.%s or restart)", exc, still, scheme)
            return
        self.on_listening(listeners)

    def _report_error(self, text: str) -> None:
        if text != self.server.config_error:  # say it once, not on every save of the same mistake
            log.warning("%s not loaded; still serving the last good config:\n%s", self.path, text)
        self.server.config_error = text


class ConfigWatcher(FileSystemEventHandler):
    """Watches the config file's folder and asks for a reload once events go quiet."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop, reload: Callable[[], None]) -> None:
        super().__init__()
        # A symlinked config is watched at both ends: editing either path must reload.
        self._paths = {os.path.abspath(path), os.path.realpath(path)}
        self._loop = loop
        self._reload = reload
        self._timer: asyncio.TimerHandle | None = None
        self._observer = Observer()
        for folder in {os.path.dirname(p) for p in self._paths}:
            self._observer.schedule(self, folder, recursive=False, event_filter=_SAVE_EVENTS)

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
        if self._timer is not None:
            self._timer.cancel()

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Observer thread. Reading the file (ours included) raises open/close events: those are
        # not edits, and reacting to them would re-read the file forever.
        if event.event_type in _READ_ONLY_EVENTS:
            return
        # Editors save by renaming a temp file over ours: check both ends.
        touched = {os.path.abspath(os.fsdecode(event.src_path)), os.path.abspath(os.fsdecode(getattr(event, "dest_path", "") or ""))}
        if touched & self._paths:
            self._loop.call_soon_threadsafe(self._poke)

    def _poke(self) -> None:
        """Loop thread: (re)start the quiet timer; the reload runs once the burst is over."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(DEBOUNCE_SECONDS, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._reload()
