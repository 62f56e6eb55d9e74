"""WebSocket rules without sockets: which requests are handshakes, the frame tracker that enforces
`websocket.max_message_bytes`, and the Close frames the gateway writes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frontgate.errors import BadRequest
from frontgate.protocol.http1 import inspect_request_head
from frontgate.protocol.websocket import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_PROTOCOL_ERROR,
    FrameTracker,
    close_frame,
    is_websocket_handshake,
)

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(opcode: int, payload_length: int, fin: bool = True, masked: bool = True) -> bytes:
    """A frame with a zero payload (the tracker never looks at payloads; masked or not only moves the header)."""
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if payload_length < 126:
        header = struct.pack("!BB", first, mask_bit | payload_length)
    elif payload_length < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, payload_length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, payload_length)
    return header + (b"\x01\x02\x03\x04" if masked else b"") + b"\x00" * payload_length


def feed_all(tracker: FrameTracker, data: bytes, cuts: list[int]) -> bytes:
    """Feed `data` cut at `cuts`; return everything the tracker let through."""
    out = []
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out.append(tracker.feed(data[start:cut]))
        start = cut
        if tracker.violation:
            break
    return b"".join(out)


# --- handshakes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "version", "fields", "expected"),
    [
        ("GET", "1.1", [(b"connection", b"Upgrade"), (b"upgrade", b"websocket")], True),
        ("GET", "1.1", [(b"connection", b"keep-alive, Upgrade"), (b"upgrade", b"WebSocket")], True),
        ("GET", "1.1", [(b"connection", b"upgrade"), (b"upgrade", b"h2c")], False),
        ("GET", "1.1", [(b"upgrade", b"websocket")], False),  # no Connection: upgrade
        ("GET", "1.1", [(b"connection", b"upgrade")], False),  # no Upgrade
        ("POST", "1.1", [(b"connection", b"upgrade"), (b"upgrade", b"websocket")], False),
        ("GET", "1.0", [(b"connection", b"upgrade"), (b"upgrade", b"websocket")], False),
    ],
)
def test_only_a_get_over_http_1_1_that_asks_for_websocket_is_a_handshake(
    method: str, version: str, fields: list[tuple[bytes, bytes]], expected: bool
) -> None:
    framing = inspect_request_head([(b"host", b"a"), *fields], version)
    assert is_websocket_handshake(method, version, framing) is expected


@pytest.mark.parametrize("body_field", [(b"content-length", b"3"), (b"transfer-encoding", b"chunked")])
def test_a_request_that_asks_to_upgrade_cannot_carry_a_body(body_field: tuple[bytes, bytes]) -> None:
    with pytest.raises(BadRequest):
        inspect_request_head([(b"host", b"a"), (b"connection", b"upgrade"), (b"upgrade", b"h2c"), body_field], "1.1")


def test_an_upgrade_with_an_empty_body_or_without_connection_upgrade_is_accepted() -> None:
    inspect_request_head([(b"host", b"a"), (b"connection", b"upgrade"), (b"upgrade", b"websocket"),
                          (b"content-length", b"0")], "1.1")
    # Without `Connection: upgrade` the parser does not switch: the body is read as a body.
    inspect_request_head([(b"host", b"a"), (b"upgrade", b"h2c"), (b"content-length", b"3")], "1.1")


# --- the frame tracker ----------------------------------------------------------------------------------


def test_frames_under_the_limit_pass_whole_and_end_at_a_boundary() -> None:
    tracker = FrameTracker(1000)
    data = frame(TEXT, 10) + frame(BINARY, 1000) + frame(PING, 4) + frame(CLOSE, 2)
    assert tracker.feed(data) == data
    assert tracker.violation == 0
    assert tracker.at_frame_boundary


def test_a_payload_split_across_chunks_is_followed() -> None:
    tracker = FrameTracker(1 << 20)
    data = frame(BINARY, 70000) + frame(TEXT, 3)
    first, second = data[:30000], data[30000:]
    assert tracker.feed(first) == first
    assert not tracker.at_frame_boundary
    assert tracker.feed(second) == second
    assert tracker.at_frame_boundary


def test_a_header_cut_short_is_held_until_it_is_whole() -> None:
    tracker = FrameTracker(1 << 20)
    data = frame(TEXT, 5) + frame(BINARY, 300)
    cut = len(frame(TEXT, 5)) + 3  # inside the second frame's 8-byte (masked, 16-bit length) header
    assert tracker.feed(data[:cut]) == data[: cut - 3]
    assert tracker.at_frame_boundary  # what was relayed is whole frames
    assert tracker.feed(data[cut:]) == data[cut - 3 :]


def test_a_single_frame_over_the_limit_is_stopped_before_its_header() -> None:
    tracker = FrameTracker(100)
    ok = frame(TEXT, 100)
    assert tracker.feed(ok + frame(BINARY, 101)) == ok
    assert tracker.violation == CLOSE_MESSAGE_TOO_BIG


def test_continuation_frames_add_up_to_one_message() -> None:
    tracker = FrameTracker(100)
    start = frame(TEXT, 60, fin=False)
    ping = frame(PING, 50)  # control frames interleave and do not count
    assert tracker.feed(start + ping) == start + ping
    assert tracker.feed(frame(CONTINUATION, 40, fin=False)) == frame(CONTINUATION, 40, fin=False)
    assert tracker.feed(frame(CONTINUATION, 1)) == b""
    assert tracker.violation == CLOSE_MESSAGE_TOO_BIG


def test_a_finished_message_starts_the_count_again() -> None:
    tracker = FrameTracker(100)
    data = frame(TEXT, 60, fin=False) + frame(CONTINUATION, 40) + frame(BINARY, 100)
    assert tracker.feed(data) == data
    assert tracker.violation == 0


def test_a_64_bit_length_over_the_limit_is_caught_from_the_header_alone() -> None:
    tracker = FrameTracker(1 << 20)
    header = struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 40) + b"\x00" * 4
    assert tracker.feed(header) == b""
    assert tracker.violation == CLOSE_MESSAGE_TOO_BIG


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("reserved data opcode", frame(0x3, 1)),
        ("reserved control opcode", frame(0xB, 1)),
        ("control frame over 125 bytes", frame(PING, 126)),
        ("fragmented control frame", frame(PONG, 1, fin=False)),
        ("continuation without a message", frame(CONTINUATION, 1)),
        ("new message inside a fragmented one", frame(TEXT, 1, fin=False) + frame(BINARY, 1)),
        ("64-bit length with the top bit set", struct.pack("!BBQ", 0x82, 127, 1 << 63)),
    ],
)
def test_frames_that_cannot_be_followed_are_a_protocol_error(name: str, data: bytes) -> None:
    tracker = FrameTracker(1 << 62)
    relayed = tracker.feed(data)
    assert tracker.violation == CLOSE_PROTOCOL_ERROR, name
    assert data.startswith(relayed) and len(relayed) < len(data)


valid_frames = st.lists(
    st.one_of(
        st.tuples(st.sampled_from([TEXT, BINARY]), st.integers(0, 70000)),
        st.tuples(st.sampled_from([PING, PONG]), st.integers(0, 125)),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(valid_frames, st.lists(st.integers(0, 300000), max_size=12), st.booleans())
def test_valid_frames_cut_anywhere_come_out_unchanged(
    frames: list[tuple[int, int]], cuts: list[int], masked: bool
) -> None:
    data = b"".join(frame(opcode, length, masked=masked) for opcode, length in frames)
    tracker = FrameTracker(70000)
    assert feed_all(tracker, data, [c for c in cuts if c < len(data)]) == data
    assert tracker.violation == 0
    assert tracker.at_frame_boundary


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 400), min_size=1, max_size=6), st.integers(1, 1000),
       st.lists(st.integers(0, 3000), max_size=8))
def test_a_fragmented_message_is_stopped_exactly_when_it_outgrows_the_limit(
    fragments: list[int], limit: int, cuts: list[int]
) -> None:
    parts = [frame(TEXT if i == 0 else CONTINUATION, n, fin=i == len(fragments) - 1) for i, n in enumerate(fragments)]
    data = b"".join(parts)
    tracker = FrameTracker(limit)
    relayed = feed_all(tracker, data, [c for c in cuts if c < len(data)])
    totals = [sum(fragments[: i + 1]) for i in range(len(fragments))]
    allowed = next((i for i, total in enumerate(totals) if total > limit), len(parts))
    assert relayed == b"".join(parts[:allowed])  # every frame before the offending one, whole
    assert tracker.violation == (CLOSE_MESSAGE_TOO_BIG if allowed < len(parts) else 0)


def test_close_frames_carry_the_code_and_are_masked_only_toward_the_upstream() -> None:
    to_client = close_frame(CLOSE_MESSAGE_TOO_BIG, masked=False)
    assert to_client[0] == 0x88 and to_client[1] == len(to_client) - 2
    assert struct.unpack("!H", to_client[2:4])[0] == 1009
    to_upstream = close_frame(CLOSE_MESSAGE_TOO_BIG, masked=True)
    assert to_upstream[1] & 0x80
    key, payload = to_upstream[2:6], to_upstream[6:]
    assert bytes(b ^ key[i % 4] for i, b in enumerate(payload)) == to_client[2:]
