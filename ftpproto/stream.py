"""The one socket adapter: frames in and out, and exact-length data phases.

`FrameStream` wraps a connected socket (plain or TLS). Control messages go
through `FrameDecoder`; data phases move raw bytes through one reused buffer
on the receiving side and `socket.sendfile` (zero copy on plain TCP) on the
sending side. Both sides of the protocol use this class and nothing else to
touch the wire.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import BinaryIO

from .framing import FrameDecoder, encode_frame

__all__ = ["BUFFER_SIZE", "FrameStream", "PeerClosedError", "ShortReadError"]

BUFFER_SIZE = 256 * 1024  # data phases
CONTROL_BUFFER_SIZE = 16 * 1024  # frames: small, so an idle or downloading session costs little
SENDFILE_CHUNK = 8 * 1024 * 1024  # how often a long sendfile reports progress


class PeerClosedError(ConnectionError):
    """The peer closed the connection between two frames."""


class ShortReadError(ConnectionError):
    """The connection ended inside a frame or a data phase."""


class FrameStream:
    def __init__(self, sock: socket.socket, buffer_size: int = BUFFER_SIZE) -> None:
        self.sock = sock
        self._decoder = FrameDecoder()
        self._control = bytearray(CONTROL_BUFFER_SIZE)
        self._buffer_size = buffer_size
        self._data: memoryview | None = None  # made on the first data phase received, then reused

    def send(self, message: dict) -> None:
        self.sock.sendall(encode_frame(message))

    def recv(self, deadline: float | None = None) -> dict:
        """Return the next message; `PeerClosedError` on a clean end of stream.

        With a `deadline` (a `time.monotonic()` value) the whole frame must have
        arrived by then, however slowly its bytes trickle in: else `TimeoutError`.
        """
        timeout = self.sock.gettimeout()
        try:
            return self._recv(deadline)
        finally:
            if deadline is not None and self.sock.fileno() != -1:
                self.sock.settimeout(timeout)

    def _recv(self, deadline: float | None) -> dict:
        while True:
            message = self._decoder.next_message()
            if message is not None:
                return message
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("frame not complete by its deadline")
                self.sock.settimeout(remaining)
            received = self.sock.recv_into(self._control)
            if not received:
                if self._decoder.buffered:
                    raise ShortReadError("connection closed inside a frame")
                raise PeerClosedError("connection closed by peer")
            self._decoder.feed(memoryview(self._control)[:received])

    def recv_data(
        self,
        count: int,
        consume: Callable[[memoryview], object],
        chunk_size: int = BUFFER_SIZE,
        space: Callable[[], memoryview | None] | None = None,
    ) -> None:
        """Read exactly `count` raw bytes, handing each chunk (at most `chunk_size`) to `consume`.

        Chunks are received into a reused buffer of the stream's own, or into
        what `space()` offers when it offers something (so that a consumer can
        take them without a copy). `consume` must use each chunk before
        returning. Raises `ShortReadError` if the stream ends early.
        """
        if self._data is None:
            self._data = memoryview(bytearray(self._buffer_size))
        remaining = count
        if self._decoder.buffered and remaining:
            early = self._decoder.take_buffered(remaining)
            consume(memoryview(early))
            remaining -= len(early)
        while remaining:
            target = (space and space()) or self._data
            received = self.sock.recv_into(target, min(remaining, chunk_size, len(target)))
            if not received:
                raise ShortReadError(f"connection closed with {remaining} of {count} bytes unread")
            consume(target[:received])
            remaining -= received

    def send_file(
        self,
        file: BinaryIO,
        offset: int,
        count: int,
        progress: Callable[[int], object] | None = None,
        chunk_size: int = SENDFILE_CHUNK,
    ) -> None:
        """Send `count` bytes of `file` from `offset`; zero copy where the OS allows.

        `progress(n)` is called after each chunk of at most `chunk_size` bytes."""
        end = offset + count
        while offset < end:
            chunk = min(chunk_size, end - offset)
            # socket.sendfile's fallback for TLS sockets skips the seek when offset
            # is 0 and reads from the current position: put it where we mean.
            file.seek(offset)
            sent = self.sock.sendfile(file, offset, chunk)
            if sent != chunk:
                raise ShortReadError(f"file ended {end - offset - sent} bytes early")
            offset += sent
            if progress is not None:
                progress(sent)

    def close(self) -> None:
        self.sock.close()
