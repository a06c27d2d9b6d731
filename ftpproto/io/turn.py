"""Turns: among the threads that share a `Turn`, one runs at a time.

CPython runs one thread's Python code at a time anyway, but it hands its lock
(the GIL) over at every system call whenever another thread waits for it. A
server session makes about twenty short system calls per small file, so with
four busy sessions nearly every one of them became a switch between threads:
four connections moved fewer files per second than one, for twice the CPU.

A session that holds the turn keeps the GIL through its short system calls,
since the other sessions wait for the turn and not for the GIL. It gives the
turn up where it would wait anyway (for a sync, a sleep, the network: see
`paused()`), or when it passes it on (`pass_on()`), and the turn goes to the
thread that has waited longest. A session takes it only for a run of requests
it has read already (a pipelining peer's): one request at a time, waiting for
the turn would only delay each answer.

The turn is a courtesy, never a lock anyone depends on: a thread that waits
`patience` seconds without getting it goes on without it, and asks again at its
next run; and while the holder has shown no progress (`pass_on()`) for that long,
a thread that asks goes on at once. A holder stuck somewhere unforeseen slows the
others once; it cannot stop them. `timeouts` counts those give-ups.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator

__all__ = ["LONG_DATA", "PATIENCE", "Turn", "paused"]

PATIENCE = 0.5  # seconds a thread waits for the turn before it goes on without it
LONG_DATA = 1024 * 1024  # work on this many bytes (a data phase, a hash) runs outside the turn

_local = threading.local()  # .turn: the Turn this thread joined


class Turn:
    """One thread at a time among those that `join()` it, handed over in order."""

    def __init__(self, patience: float = PATIENCE) -> None:
        self.patience = patience
        self.timeouts = 0  # waits that ended without the turn
        self._mutex = threading.Lock()
        self._queue: collections.deque[tuple[int, threading.Lock]] = collections.deque()
        self._owner: int | None = None
        self._since = 0.0  # when the owner got it
        self._seen = 0.0  # when the owner last showed progress (got it, or `pass_on()`)

    @property
    def waiting(self) -> int:
        """How many threads wait for the turn."""
        return len(self._queue)

    def holding(self) -> bool:
        """Whether the calling thread has the turn."""
        return self._owner == threading.get_ident()

    def join(self) -> None:
        """Make the turn the calling thread's own: the one `paused()` gives up."""
        _local.turn = self

    def leave(self) -> None:
        """Give the turn up for good (the thread's work is over)."""
        self.give()
        _local.turn = None

    def take(self) -> bool:
        """Wait for the turn, at most `patience` seconds; whether the thread got it."""
        me = threading.get_ident()
        with self._mutex:
            now = time.monotonic()
            if self._owner is None or self._owner == me:
                self._owner, self._since = me, now
                self._seen = now
                return True
            if now - self._seen > self.patience:  # the holder is stuck: no point queueing
                self.timeouts += 1
                return False
            entry = (me, threading.Lock())
            entry[1].acquire()
            self._queue.append(entry)
        if entry[1].acquire(timeout=self.patience):
            return True
        with self._mutex:
            if self._owner == me:  # handed over just as the wait ended
                return True
            self._queue.remove(entry)
            self.timeouts += 1
        return False

    def give(self) -> None:
        """Hand the turn to the thread that has waited longest (if the caller has it)."""
        with self._mutex:
            if self._owner != threading.get_ident():
                return
            if self._queue:
                self._owner, waiter = self._queue.popleft()
                self._since = self._seen = time.monotonic()
                waiter.release()
            else:
                self._owner = None

    def pass_on(self, after: float = 0.0) -> None:
        """Let the others run, if any wait and the caller has had the turn `after`
        seconds. Called between two pieces of work: it is the holder's sign of progress."""
        if not self.holding():
            return
        self._seen = now = time.monotonic()
        if self._queue and now - self._since >= after:
            self.give()
            self.take()


@contextlib.contextmanager
def paused(resume: bool = True) -> Iterator[None]:
    """Give up the calling thread's turn while the block waits (for a disk sync, a
    sleep, the network), and take it back after, unless `resume` is False: after a
    wait for the peer, what comes next may be a single request, not worth a wait
    for the turn. Without the turn (the client, a thread that never joined one or
    does not hold it) and so inside another pause, it does nothing.

    Never pause while holding another lock: the thread would then wait for the
    turn while others wait for that lock."""
    turn: Turn | None = getattr(_local, "turn", None)
    if turn is None or not turn.holding():
        yield
        return
    turn.give()
    try:
        yield
    finally:
        if resume:
            turn.take()
