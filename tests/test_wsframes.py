"""WebSocket frame boundaries, followed header by header without reading payloads (pure)."""

from __future__ import annotations

import os

import pytest

from proxy.forwarding.wsframes import FrameTracker, close_frame


def frame(opcode: int, payload: bytes, *, masked: bool) -> bytes:
    length = len(payload)
    if length < 126:
        head = bytes([0x80 | opcode, (0x80 if masked else 0) | length])
    elif length < 1 << 16:
        head = bytes([0x80 | opcode, (0x80 if masked else 0) | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, (0x80 if masked else 0) | 127]) + length.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


FRAMES = [
    pytest.param(frame(0x1, b"hello", masked=False), id="short-text"),
    pytest.param(frame(0x2, b"", masked=True), id="empty-masked"),
    pytest.param(frame(0x2, bytes(300), masked=True), id="16-bit-length"),
    pytest.param(frame(0x2, bytes(70_000), masked=False), id="64-bit-length"),
    pytest.param(frame(0x9, b"ping", masked=True), id="ping"),
]


@pytest.mark.parametrize("data", FRAMES)
@pytest.mark.parametrize("piece", [1, 3, 125, 1 << 20], ids=["bytewise", "3-byte-reads", "125-byte-reads", "whole"])
def test_a_frame_fed_in_pieces_ends_exactly_at_its_last_byte(data: bytes, piece: int) -> None:
    tracker = FrameTracker()
    assert tracker.at_boundary
    for at in range(0, len(data), piece):
        tracker.feed(data[at : at + piece])
        assert tracker.at_boundary is (at + piece >= len(data)), at
    assert tracker.at_boundary


def test_several_frames_in_one_chunk_end_at_a_boundary_and_a_split_one_does_not() -> None:
    stream = frame(0x1, b"a", masked=False) + frame(0x1, bytes(200), masked=False) + frame(0x8, b"\x03\xe8", masked=False)
    tracker = FrameTracker()
    tracker.feed(stream)
    assert tracker.at_boundary
    tracker.feed(stream[:-1])
    assert not tracker.at_boundary
    tracker.feed(stream[-1:])
    assert tracker.at_boundary


def test_feed_to_boundary_stops_where_the_frame_in_progress_ends() -> None:
    first, second = frame(0x2, bytes(1000), masked=True), frame(0x1, b"next", masked=True)
    tracker = FrameTracker()
    tracker.feed(first[:10])
    data = first[10:] + second
    taken = tracker.feed_to_boundary(data)
    assert taken == len(first) - 10 and tracker.at_boundary
    assert tracker.feed_to_boundary(data[taken:]) == 0, "at a boundary already: nothing more is taken"


def test_feed_to_boundary_takes_all_of_a_frame_that_goes_on() -> None:
    long = frame(0x2, bytes(5000), masked=False)
    tracker = FrameTracker()
    tracker.feed(long[:3])
    assert tracker.feed_to_boundary(long[3:100]) == 97 and not tracker.at_boundary


@pytest.mark.parametrize("masked", [False, True], ids=["server-to-browser", "client-to-app"])
def test_close_frame_carries_code_and_reason_and_is_one_frame(masked: bool) -> None:
    data = close_frame(1001, b"proxy shutting down", masked=masked)
    assert data[0] == 0x88 and bool(data[1] & 0x80) is masked
    payload = data[6:] if masked else data[2:]
    if masked:
        payload = bytes(b ^ data[2 + i % 4] for i, b in enumerate(payload))
    assert payload == (1001).to_bytes(2, "big") + b"proxy shutting down"
    tracker = FrameTracker()
    tracker.feed(data)
    assert tracker.at_boundary
