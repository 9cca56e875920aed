"""Up/down state and the round-robin cursor, keyed by address so they outlive reloads."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.config.model import Upstream, Upstreams


@dataclass(slots=True)
class UpstreamState:
    """What the last attempt on one upstream address showed."""

    is_up: bool | None = None  # None: never tried
    last_error: str = ""
    changed_at: float = 0.0


class UpstreamHealth:
    """Health and turn-taking for every upstream the proxy has dialed."""

    def __init__(self) -> None:
        self._states: dict[Upstream, UpstreamState] = {}
        self._cursors: dict[tuple[Upstream, ...], int] = {}

    def state(self, upstream: Upstream) -> UpstreamState:
        state = self._states.get(upstream)
        if state is None:
            state = self._states[upstream] = UpstreamState()
        return state

    def attempt_order(self, upstreams: Upstreams) -> Sequence[Upstream]:
        """Return every address to try, starting with the next in turn, known-down ones last."""
        addresses = upstreams.addresses
        if len(addresses) == 1:
            return addresses
        start = self._cursors.get(addresses, 0)
        self._cursors[addresses] = (start + 1) % len(addresses)
        rotated = addresses[start:] + addresses[:start]
        return sorted(rotated, key=lambda u: self.state(u).is_up is False)  # stable: keeps turn order

    def mark_up(self, upstream: Upstream) -> None:
        state = self.state(upstream)
        if state.is_up is not True:
            state.is_up, state.last_error, state.changed_at = True, "", time.time()

    def mark_down(self, upstream: Upstream, reason: str) -> None:
        state = self.state(upstream)
        if state.is_up is not False or state.last_error != reason:
            state.is_up, state.last_error, state.changed_at = False, reason, time.time()
