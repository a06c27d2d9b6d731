"""The one socket adapter: frames in and out, and exact-length data phases.

`FrameStream` wraps a connected socket (plain or TLS). Control messages go
through `FrameDecoder`; data phases move raw bytes through one reused buffer
on the receiving side and `socket.sendfile` (zero copy on plain TCP) on the
sending side. Time-outs are set through it too. Both sides of the protocol use
this module and nothing else to touch the wire; `refuse()` is for a socket the
server turns away before any session starts on it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from ..errors import ProtocolError
from ..framing import FrameDecoder, encode_frame

__all__ = ["BUFFER_SIZE", "SENDFILE_CHUNK", "FrameStream", "PeerClosedError", "ShortReadError", "refuse"]

BUFFER_SIZE = 256 * 1024  # data phases
CONTROL_BUFFER_SIZE = 16 * 1024  # frames: small, so an idle or downloading session costs little
PIPELINE_BUFFER_SIZE = 256 * 1024  # ... until a read fills it: a pipelining peer's frames and data
SENDFILE_CHUNK = 8 * 1024 * 1024  # how often a long sendfile reports progress


class PeerClosedError(ConnectionError):
    """The peer closed the connection between two frames."""


class ShortReadError(ConnectionError):
    """The connection ended inside a frame or a data phase."""


class FrameStream:
    """Frames and data phases over one connected socket; small frames go out at
    once (Nagle's algorithm off), since every exchange waits for its answer."""

    def __init__(self, sock: socket.socket, buffer_size: int = BUFFER_SIZE) -> None:
        self.sock = sock
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._decoder = FrameDecoder()
        # Time-outs are set lazily: `_wanted` is what the next wait must use, `_applied`
        # what the socket has. Each change is a system call (and a hand-over of the
        # interpreter lock), and a pipelining peer's requests are mostly read from the
        # buffer: only a call that may wait brings the socket up to date.
        self._applied = self._wanted = sock.gettimeout()
        self._control = bytearray(CONTROL_BUFFER_SIZE)
        self._buffer_size = buffer_size
        self._data: memoryview | None = None  # made on the first data phase received, then reused

    @property
    def timeout(self) -> float | None:
        """How long one read or write may wait, in seconds (None: for ever)."""
        return self._wanted

    def set_timeout(self, seconds: float | None) -> None:
        """Set the time-out now (the socket itself has it, for a caller that uses it directly)."""
        self._wanted = seconds
        self._apply()

    def _apply(self) -> None:
        """Give the socket the time-out wanted, before a call that may wait."""
        if self._applied != self._wanted:
            self.sock.settimeout(self._wanted)
            self._applied = self._wanted

    @contextlib.contextmanager
    def timed(self, seconds: float | None) -> Iterator[None]:
        """Use another time-out for the stream's calls inside the block; the one before
        is back after it."""
        before, self._wanted = self._wanted, seconds
        try:
            yield
        finally:
            self._wanted = before

    def handshake(self) -> None:
        """Complete the TLS handshake of a socket wrapped without it, within the time-out."""
        self._apply()
        self.sock.do_handshake()  # type: ignore[attr-defined]  # an ssl.SSLSocket: the caller checked

    @property
    def closed(self) -> bool:
        return self.sock.fileno() == -1

    def ready(self) -> bool:
        """Whether bytes of the next frame are here already (buffered, or waiting in the
        socket): a reader may then go on before answering what it has. The end of the
        stream is not a frame: a peer that sent its last request and shut its side waits
        for the answer."""
        if self._decoder.buffered:
            return True
        if isinstance(self.sock, ssl.SSLSocket):
            return self.sock.pending() > 0  # bytes already decrypted; a raw peek cannot tell
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            return bool(readable) and bool(self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except (OSError, ValueError):
            return False

    def send(self, message: dict, data: bytes = b"") -> None:
        """Send one frame, and `data` right after it in the same write (an eager put's bytes)."""
        self._apply()
        self.sock.sendall(encode_frame(message) + data if data else encode_frame(message))

    def recv(self, deadline: float | None = None) -> dict:
        """Return the next message; `PeerClosedError` on a clean end of stream.

        With a `deadline` (a `time.monotonic()` value) the whole frame must have
        arrived by then, however slowly its bytes trickle in: else `TimeoutError`.
        """
        timeout = self._wanted
        try:
            return self._recv(deadline)
        finally:
            self._wanted = timeout

    def _recv(self, deadline: float | None) -> dict:
        while True:
            message = self._decoder.next_message()
            if message is not None:
                return message
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("frame not complete by its deadline")
                self._wanted = remaining
            self._apply()
            received = self.sock.recv_into(self._control)
            if not received:
                if self._decoder.buffered:
                    raise ShortReadError("connection closed inside a frame")
                raise PeerClosedError("connection closed by peer")
            self._decoder.feed(memoryview(self._control)[:received])
            if received == len(self._control) < PIPELINE_BUFFER_SIZE:
                # More was waiting: many small requests (or answers) with their data follow
                # each other. Take them in bigger reads: each read is a system call and a
                # hand-over of the interpreter lock between sessions.
                self._control = bytearray(PIPELINE_BUFFER_SIZE)
            elif received < CONTROL_BUFFER_SIZE < len(self._control):
                self._control = bytearray(CONTROL_BUFFER_SIZE)  # the burst is over: small again

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
        if remaining:
            self._apply()
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
        self._apply()
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


def refuse(sock: socket.socket, error: ProtocolError, wait: float = 0.0) -> None:
    """Send `error` as the only frame on a connection turned away before its session.

    With `wait` 0 the frame goes in one non-blocking send or not at all, so a peer
    that does not read cannot hold the caller; else it may take `wait` seconds."""
    with contextlib.suppress(OSError):
        if wait:
            sock.settimeout(wait)
            sock.sendall(encode_frame(error.to_response()))
        else:
            sock.setblocking(False)
            sock.send(encode_frame(error.to_response()))
