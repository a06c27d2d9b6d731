"""Control-message framing without I/O: a 4-byte `!I` length, then UTF-8 JSON.

`encode_frame()` turns an object into bytes; `FrameDecoder` is fed bytes as
they arrive and hands back whole messages, or `None` when it needs more. It
never reads a socket, so it can be tested one byte at a time.
"""

from __future__ import annotations

import json
import struct

from .errors import BadRequestError, FrameTooLargeError

__all__ = ["HEADER", "MAX_FRAME", "FrameDecoder", "encode_frame"]

MAX_FRAME = 1_048_576
HEADER = struct.Struct("!I")


def encode_frame(message: dict) -> bytes:
    """Return `message` as one frame; `FrameTooLargeError` if it exceeds the cap."""
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise FrameTooLargeError(f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN and Infinity; JSON does not


def decode_body(body: bytes) -> dict:
    """Parse one frame body; every way it can be wrong is a closing `bad_request`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError("frame is not valid UTF-8", closes=True) from None
    try:
        message = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise BadRequestError("frame is not valid JSON", closes=True) from None
    if not isinstance(message, dict):
        raise BadRequestError("frame is not a JSON object", closes=True)
    return message


class FrameDecoder:
    """Turns a byte stream into messages.

    `feed(data)` appends bytes; `next_message()` returns the next whole
    message or `None`. A bad length raises before its body is awaited, so a
    hostile length never makes the reader allocate or wait for a megabyte.
    `take_buffered()` hands over bytes past the last frame (the start of a
    data phase, if a peer sent it early).
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data

    def next_message(self) -> dict | None:
        if len(self._buffer) < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(self._buffer)
        if length == 0:
            raise BadRequestError("zero-length frame", closes=True)
        if length > self._max_frame:
            raise FrameTooLargeError(f"frame of {length} bytes exceeds {self._max_frame}")
        end = HEADER.size + length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[HEADER.size : end])
        del self._buffer[:end]
        return decode_body(body)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def take_buffered(self, limit: int) -> bytes:
        """Remove and return up to `limit` buffered bytes."""
        data = bytes(self._buffer[:limit])
        del self._buffer[:limit]
        return data
