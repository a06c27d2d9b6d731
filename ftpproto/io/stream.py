"""The one socket adapter: frames in and out, and exact-length data phases.

`FrameStream` wraps a connected socket (plain or TLS). Control messages go
through `FrameDecoder`; data phases move raw bytes through one reused buffer
on the receiving side and `socket.sendfile` (zero copy on plain TCP) on the
sending side. Time-outs are set through it too. Both sides of the protocol use
this module and nothing else to touch the wire; `refuse()` is for a socket the
server turns away before any session starts on it.

On a plain socket with a time-out (its descriptor is non-blocking then) reads and
writes go straight to the descriptor, and only a call that would block waits, in
`poll`: the socket's own methods poll before every call. Every wait happens
outside the caller's turn (see turn.py), and so does a long data phase.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from ..errors import ProtocolError
from ..framing import FrameDecoder, encode_frame
from .turn import LONG_DATA, paused

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
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._control = bytearray(CONTROL_BUFFER_SIZE)
        self._buffer_size = buffer_size
        self._data: memoryview | None = None  # made on the first data phase received, then reused
        self._idle: tuple[float, Callable[[], object]] | None = None  # see when_idle()

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

    def when_idle(self, after: float, callback: Callable[[], object]) -> None:
        """Call `callback` whenever a read has waited `after` seconds for the peer and
        nothing came; the read then goes on waiting. A server owing answers gives them
        there (a group commit), not only once the next request is complete."""
        self._idle = (after, callback)

    def _idle_wait(self, deadline: float | None) -> bool:
        """Before a read waits: wait up to the idle delay, and call back if nothing came.
        True if something came (no further wait is needed)."""
        if self._idle is None:
            return False
        after, callback = self._idle
        if self._tls and self.sock.pending():  # type: ignore[attr-defined]  # an ssl.SSLSocket
            return True
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if self._poll(False, after if left is None else min(after, left)):
            return True
        callback()
        return False

    @property
    def buffered(self) -> bool:
        """Whether bytes of the next frame were read already (no system call to tell)."""
        return bool(self._decoder.buffered)

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
        if self._tls:
            return self.sock.pending() > 0  # type: ignore[attr-defined]  # bytes already decrypted
        try:
            return self._poll(False, 0) and bool(self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except (OSError, ValueError):
            return False

    def _poll(self, writing: bool, seconds: float | None) -> bool:
        """Whether the socket can be written (or read) within `seconds` (None: for ever).
        poll, not select(): select cannot watch a descriptor above 1023."""
        poller = select.poll()
        poller.register(self.sock, select.POLLOUT if writing else select.POLLIN)
        return bool(poller.poll(None if seconds is None else seconds * 1000))

    def send(self, message: dict, data: bytes = b"") -> None:
        """Send one frame, and `data` right after it in the same write (an eager put's bytes)."""
        self._send_all(encode_frame(message) + data if data else encode_frame(message))

    def send_many(self, messages: list[dict]) -> None:
        """Send frames in one write (the answers of a group)."""
        self._send_all(b"".join(encode_frame(message) for message in messages))

    def _direct(self) -> bool:
        """Whether calls may go straight to the descriptor: a plain socket, non-blocking."""
        return self._applied is not None and not self._tls

    def _wait(self, writing: bool, deadline: float | None) -> None:
        """Wait, outside the turn, until the socket can be written (or read); else `TimeoutError`."""
        with paused(resume=False):
            ready = not writing and self._idle_wait(deadline)
            if not ready:
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                ready = self._poll(writing, remaining)
        if not ready:
            raise TimeoutError("timed out")

    def _deadline(self) -> float | None:
        return None if self._applied is None else time.monotonic() + self._applied

    def _send_all(self, payload: bytes | memoryview) -> None:
        self._apply()
        if not self._direct():
            with paused(resume=False):
                self.sock.sendall(payload)
            return
        view, deadline = memoryview(payload), None
        while view:
            try:
                view = view[os.write(self.sock.fileno(), view) :]
            except BlockingIOError:
                deadline = deadline or self._deadline()  # like sendall: for the whole payload
                self._wait(True, deadline)

    def _recv_into(self, target: memoryview) -> int:
        """Read what is there, up to `len(target)` bytes, waiting for some if need be."""
        self._apply()
        if not self._direct():
            with paused(resume=False):
                self._idle_wait(self._deadline())
                return self.sock.recv_into(target)
        while True:
            try:
                return os.readv(self.sock.fileno(), (target,))
            except BlockingIOError:
                self._wait(False, self._deadline())

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
            received = self._recv_into(memoryview(self._control))
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
        with paused(resume=False) if remaining >= LONG_DATA else contextlib.nullcontext():
            while remaining:
                target = (space and space()) or self._data
                received = self._recv_into(target[: min(remaining, chunk_size, len(target))])
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
        self._apply()
        fd = _descriptor(file)
        short = count < LONG_DATA and count <= chunk_size and self._direct()
        if short and fd is not None and self._send_file_directly(fd, offset, count):
            if progress is not None and count:
                progress(count)
            return
        with paused(resume=False):
            self._send_file_in_chunks(file, offset, count, progress, chunk_size)

    def _send_file_directly(self, fd: int, offset: int, count: int) -> bool:
        """A short `send_file` in `os.sendfile` calls; False if the file cannot be
        sent that way (then nothing was sent)."""
        start, end = offset, offset + count
        while offset < end:
            try:
                sent = os.sendfile(self.sock.fileno(), fd, offset, end - offset)
            except BlockingIOError:
                self._wait(True, self._deadline())  # like socket.sendfile: the time-out is per wait
                continue
            except OSError:  # a file that sendfile cannot read: socket.sendfile copies it
                if offset == start:
                    return False
                raise
            if not sent:
                raise ShortReadError(f"file ended {end - offset} bytes early")
            offset += sent
        return True

    def _send_file_in_chunks(
        self,
        file: BinaryIO,
        offset: int,
        count: int,
        progress: Callable[[int], object] | None,
        chunk_size: int,
    ) -> None:
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


def _descriptor(file: BinaryIO) -> int | None:
    """The descriptor of a file that `os.sendfile` can read (a real file), else None."""
    try:
        return file.fileno()
    except (AttributeError, OSError):  # io.UnsupportedOperation is an OSError
        return None


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
