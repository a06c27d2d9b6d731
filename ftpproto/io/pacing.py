"""Bandwidth pacing shared by both sides: the server's per-user limit and the
client's `--limit-rate` for a whole batch."""

from __future__ import annotations

import threading
import time

from .turn import paused

__all__ = ["RateLimiter"]


class RateLimiter:
    """Bytes per second shared by every caller of `consume()`, across threads.

    A virtual clock: each chunk books the time it takes at the rate, after what
    was booked before it, and its caller sleeps until its slot begins.
    """

    CHUNK = 64 * 1024  # chunk size to move data in while paced, so pacing stays smooth

    def __init__(self, rate: int) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._lock = threading.Lock()
        self._booked_until = time.monotonic()

    def consume(self, count: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(self._booked_until, now)
            self._booked_until = start + count / self.rate
        if start > now:
            with paused():
                time.sleep(start - now)
