"""WebSocket rules that do no I/O: which requests are handshakes, frame headers as they stream past, and the
Close frames the gateway writes itself (RFC 6455).

The relay never unmasks or buffers payloads. `FrameTracker` reads only the 2 to 14 header bytes of each
frame, so it knows where frames start, how large each message is, and whether a stream is at a frame
boundary (where a Close frame of the gateway's own can be put without breaking the stream).
"""

from __future__ import annotations

import os

from frontgate.protocol.http1 import RequestFraming

# Close status codes (RFC 6455 §7.4.1).
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_MESSAGE_TOO_BIG = 1009

_CLOSE_REASONS = {CLOSE_PROTOCOL_ERROR: b"Protocol Error", CLOSE_MESSAGE_TOO_BIG: b"Message Too Big"}
_OP_CONTINUATION, _OP_BINARY, _OP_CLOSE, _OP_PONG = 0x0, 0x2, 0x8, 0xA  # 0x1: text
_FIN = 0x80
_MASKED = 0x80
_MAX_CONTROL_PAYLOAD = 125  # RFC 6455 §5.5: control frames are never longer, nor fragmented


def is_websocket_handshake(method: str, version: str, framing: RequestFraming) -> bool:
    """A request the gateway relays as a WebSocket opening handshake (RFC 6455 §4.1): GET over HTTP/1.1 with
    `Connection: upgrade` and `websocket` among the Upgrade protocols. The Sec-WebSocket-* fields are the
    upstream's to check; other requests that ask to upgrade are served as plain HTTP (RFC 9110 §7.8 lets a
    server ignore Upgrade)."""
    upgrade = framing.upgrade
    return (
        upgrade is not None
        and b"websocket" in upgrade
        and method == "GET"
        and version == "1.1"
        and b"upgrade" in framing.connection_tokens
    )


def close_frame(code: int, masked: bool) -> bytes:
    """A Close frame with `code` and its standard reason. Frames toward a server must be masked (§5.3)."""
    payload = code.to_bytes(2, "big") + _CLOSE_REASONS.get(code, b"")
    if not masked:
        return bytes((_FIN | _OP_CLOSE, len(payload))) + payload
    key = os.urandom(4)
    masked_payload = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    return bytes((_FIN | _OP_CLOSE, _MASKED | len(payload))) + key + masked_payload


class FrameTracker:
    """Follows the frames of one direction of a WebSocket connection and enforces a message size limit.

    `feed` returns the part of each chunk that may be relayed: all of it, except a frame header cut short
    by the end of the chunk (held back until it is whole, so what was relayed always ends inside a payload
    or at a boundary), or, once a frame breaks the rules, everything before that frame's header. Then
    `violation` holds the close code to send: 1009 when the message the frame belongs to outgrows the
    limit (continuation frames add up; interleaved control frames do not count), 1002 when the header
    cannot be followed (reserved opcodes, oversized or fragmented control frames, a continuation with no
    message to continue, a new message inside a fragmented one, a 64-bit length with the top bit set).
    """

    __slots__ = ("_held", "_in_message", "_limit", "_message_bytes", "_remaining", "violation")

    def __init__(self, max_message_bytes: int) -> None:
        self._limit = max_message_bytes
        self._remaining = 0  # payload bytes of the current frame still to come
        self._held = b""  # the start of a frame header that has not fully arrived
        self._in_message = False  # a fragmented message is open: only continuations may follow
        self._message_bytes = 0
        self.violation = 0

    @property
    def at_frame_boundary(self) -> bool:
        """Everything relayed so far is whole frames: a frame of the gateway's own may follow."""
        return self._remaining == 0

    def feed(self, data: bytes) -> bytes:
        if self._held:
            data = self._held + data
            self._held = b""
        size = len(data)
        remaining = self._remaining
        if remaining >= size:  # the common case for large messages: all of it is payload
            self._remaining = remaining - size
            return data
        position = remaining
        while position < size:
            if size - position < 2:
                return self._hold(data, position)
            first, second = data[position], data[position + 1]
            length = second & 0x7F
            header = 6 if second & _MASKED else 2
            if length == 126:
                header += 2
            elif length == 127:
                header += 8
            if size - position < header:
                return self._hold(data, position)
            if length == 126:
                length = int.from_bytes(data[position + 2 : position + 4], "big")
            elif length == 127:
                length = int.from_bytes(data[position + 2 : position + 10], "big")
            code = self._check(first, length)
            if code:
                self.violation = code
                self._remaining = 0
                return data[:position]
            position += header + length
        self._remaining = position - size
        return data

    def _check(self, first: int, length: int) -> int:
        """The close code a frame with this first byte and payload length calls for, or 0 when it is fine."""
        opcode = first & 0x0F
        if opcode >= _OP_CLOSE:
            if opcode > _OP_PONG or not first & _FIN or length > _MAX_CONTROL_PAYLOAD:
                return CLOSE_PROTOCOL_ERROR
            return 0
        if opcode == _OP_CONTINUATION:
            if not self._in_message:
                return CLOSE_PROTOCOL_ERROR
            self._message_bytes += length
        elif opcode <= _OP_BINARY:  # text or binary: a new message
            if self._in_message:
                return CLOSE_PROTOCOL_ERROR
            self._message_bytes = length
        else:
            return CLOSE_PROTOCOL_ERROR  # 0x3-0x7: reserved data opcodes
        if self._message_bytes > self._limit:  # also catches a 64-bit length with its top bit set
            return CLOSE_MESSAGE_TOO_BIG if length < 1 << 63 else CLOSE_PROTOCOL_ERROR
        self._in_message = not first & _FIN
        return 0

    def _hold(self, data: bytes, position: int) -> bytes:
        self._held = data[position:]
        self._remaining = 0
        return data[:position]
