"""UpstreamHealth: round robin over a list, known-down addresses tried last, state keyed by address."""

from __future__ import annotations

import pytest

from proxy.config.model import Upstream, Upstreams
from proxy.forwarding.health import UpstreamHealth

A, B, C = (Upstream("http", "127.0.0.1", port) for port in (3001, 3002, 3003))


def firsts(health: UpstreamHealth, upstreams: Upstreams, turns: int) -> list[int]:
    return [health.attempt_order(upstreams)[0].port for _ in range(turns)]


def test_single_upstream_is_always_tried_alone() -> None:
    health = UpstreamHealth()
    health.mark_down(A, "refused")
    assert [list(health.attempt_order(Upstreams((A,)))) for _ in range(3)] == [[A]] * 3


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        ((A, B), [3001, 3002, 3001, 3002]),
        ((A, B, C), [3001, 3002, 3003, 3001, 3002]),
    ],
    ids=["two", "three"],
)
def test_round_robin_takes_turns(addresses: tuple[Upstream, ...], expected: list[int]) -> None:
    assert firsts(UpstreamHealth(), Upstreams(addresses), len(expected)) == expected


def test_each_attempt_order_lists_every_address_once_in_turn_order() -> None:
    health = UpstreamHealth()
    upstreams = Upstreams((A, B, C))
    assert [list(health.attempt_order(upstreams)) for _ in range(3)] == [[A, B, C], [B, C, A], [C, A, B]]


@pytest.mark.parametrize(
    ("down", "expected_orders"),
    [
        ([B], [[A, C, B], [C, A, B], [C, A, B]]),
        ([A, C], [[B, A, C], [B, C, A], [B, C, A]]),
        ([A, B, C], [[A, B, C], [B, C, A], [C, A, B]]),
    ],
    ids=["one-down-goes-last", "two-down", "all-down-still-rotate"],
)
def test_known_down_addresses_are_tried_last(down: list[Upstream], expected_orders: list[list[Upstream]]) -> None:
    health = UpstreamHealth()
    for upstream in down:
        health.mark_down(upstream, "connection refused")
    upstreams = Upstreams((A, B, C))
    assert [list(health.attempt_order(upstreams)) for _ in range(3)] == expected_orders


def test_marking_up_again_restores_its_turn() -> None:
    health = UpstreamHealth()
    upstreams = Upstreams((A, B))
    health.mark_down(B, "refused")
    assert firsts(health, upstreams, 2) == [3001, 3001]
    health.mark_up(B)
    assert firsts(health, upstreams, 2) == [3001, 3002]


def test_never_tried_counts_as_maybe_up() -> None:
    health = UpstreamHealth()
    health.mark_up(A)
    assert health.state(B).is_up is None
    assert firsts(health, Upstreams((A, B)), 2) == [3001, 3002]


def test_state_and_turn_outlive_a_reload_that_builds_equal_objects() -> None:
    health = UpstreamHealth()
    assert firsts(health, Upstreams((A, B)), 1) == [3001]
    health.mark_down(Upstream("http", "127.0.0.1", 3001), "refused")
    reloaded = Upstreams((Upstream("http", "127.0.0.1", 3001), Upstream("http", "127.0.0.1", 3002)), preserve_host=False)
    assert health.state(A).is_up is False
    assert firsts(health, reloaded, 2) == [3002, 3002]


def test_separate_lists_keep_separate_turns() -> None:
    health = UpstreamHealth()
    assert firsts(health, Upstreams((A, B)), 1) == [3001]
    assert firsts(health, Upstreams((B, C)), 1) == [3002]
    assert firsts(health, Upstreams((A, B)), 1) == [3002]


@pytest.mark.parametrize(
    ("steps", "is_up", "last_error"),
    [
        ([], None, ""),
        ([("down", "refused")], False, "refused"),
        ([("down", "refused"), ("down", "timed out")], False, "timed out"),
        ([("down", "refused"), ("up", "")], True, ""),
    ],
    ids=["never-tried", "down", "new-reason", "back-up-clears-error"],
)
def test_state_records_the_last_attempt(steps: list[tuple[str, str]], is_up: bool | None, last_error: str) -> None:
    health = UpstreamHealth()
    for kind, reason in steps:
        if kind == "down":
            health.mark_down(A, reason)
        else:
            health.mark_up(A)
    state = health.state(A)
    assert (state.is_up, state.last_error) == (is_up, last_error)


@pytest.mark.parametrize("kind", ["up", "down"])
def test_repeating_the_same_state_keeps_changed_at(kind: str) -> None:
    health = UpstreamHealth()

    def mark() -> None:
        if kind == "up":
            health.mark_up(A)
        else:
            health.mark_down(A, "refused")

    mark()
    health.state(A).changed_at = 1.0  # a sentinel the health must not overwrite
    mark()
    assert health.state(A).changed_at == 1.0
