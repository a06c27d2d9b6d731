"""MD5 of files and of transfers, as the protocol announces it: one place for both sides."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import threading
from typing import BinaryIO, cast

from .turn import LONG_DATA, paused

__all__ = ["HASH_CHUNK", "BackgroundMD5", "md5_of", "new_md5"]

HASH_CHUNK = 1024 * 1024
BACKGROUND_THRESHOLD = 4 * HASH_CHUNK  # below this a thread costs more than it saves


def md5_of(file: BinaryIO, limit: int | None = None) -> hashlib._Hash:
    """Hash the open binary `file` from its start, up to `limit` bytes; return the hash object.

    Reads into one reused buffer, so memory stays flat whatever the size. A long
    one runs outside the caller's turn (turn.py): call it holding no lock.
    """
    digest = hashlib.md5()
    size = os.fstat(file.fileno()).st_size if limit is None else limit
    if size <= 0:
        return digest
    buffer = bytearray(min(HASH_CHUNK, size))  # small files do not pay for a 1 MiB buffer
    view = memoryview(buffer)
    remaining = limit
    file.seek(0)
    with paused(resume=False) if size >= LONG_DATA else contextlib.nullcontext():  # without the GIL
        while remaining is None or remaining > 0:
            want = len(buffer) if remaining is None else min(len(buffer), remaining)
            count = cast(io.BufferedIOBase, file).readinto(view[:want])  # every binary file has readinto
            if not count:
                break
            digest.update(view[:count])
            if remaining is not None:
                remaining -= count
    return digest


class BackgroundMD5:
    """An MD5 computed on a thread of its own while the caller goes on receiving.

    `update()` copies the bytes into one of a few pooled buffers (a memory copy
    is an order of magnitude cheaper than hashing) and hands full buffers to
    the hashing thread; hashlib releases the GIL on large buffers, so receiving,
    writing and hashing use two cores. Memory stays at `buffers * size`.
    `hexdigest()` waits for the thread; `close()` stops it early.
    """

    def __init__(
        self,
        digest: hashlib._Hash | None = None,
        threaded: bool = True,
        buffers: int = 4,
        size: int = HASH_CHUNK,
    ) -> None:
        self._digest = digest or hashlib.md5()
        self._thread = None
        if not threaded:  # small transfers: hash in line, no thread
            return
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(buffers):
            self._free.put(bytearray(size))
        self._full: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self._current, self._filled = self._free.get(), 0
        self._thread = threading.Thread(target=self._hash, name="md5", daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        while (item := self._full.get()) is not None:
            buffer, length = item
            self._digest.update(memoryview(buffer)[:length])
            self._free.put(buffer)

    def space(self) -> memoryview | None:
        """Where the next bytes may be received so that hashing them copies nothing:
        the free part of the buffer being filled (None when hashing in line). Pass
        what was received there, from its start, to `update()` before asking again."""
        if self._thread is None:
            return None
        return memoryview(self._current)[self._filled :]

    def update(self, data: memoryview | bytes) -> None:
        if self._thread is None:
            self._digest.update(data)
            return
        view = memoryview(data)
        if view.obj is self._current:  # received into space(): already in place
            self._advance(len(view))
            return
        while view:
            taken = min(len(self._current) - self._filled, len(view))
            self._current[self._filled : self._filled + taken] = view[:taken]
            view = view[taken:]
            self._advance(taken)

    def _advance(self, count: int) -> None:
        self._filled += count
        if self._filled == len(self._current):
            self._full.put((self._current, self._filled))
            self._current, self._filled = self._free.get(), 0

    def hexdigest(self) -> str:
        if self._thread is not None and self._thread.is_alive():
            if self._filled:
                self._full.put((self._current, self._filled))
                self._filled = 0
            self.close()
        return self._digest.hexdigest()

    def close(self) -> None:
        """Stop the thread (at once if nothing is queued); the digest is then final."""
        if self._thread is not None and self._thread.is_alive():
            self._full.put(None)
            self._thread.join()


def new_md5(expected_bytes: int, start: hashlib._Hash | None = None) -> BackgroundMD5:
    """The MD5 of a transfer: hashed alongside the receiving when it is big enough
    for a thread to pay off, else in line. Close it if the transfer fails."""
    return BackgroundMD5(start, threaded=expected_bytes >= BACKGROUND_THRESHOLD)
