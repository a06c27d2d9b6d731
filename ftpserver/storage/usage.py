"""Bytes held per home, counted once and then kept by deltas, for quotas.

A home's usage is every regular file below it: the user's files and the
server's hidden partial and temp files alike. It is counted by a walk the
first time the home is tracked (at server start for every account with a
quota), then each change the server makes is added under one lock, so no
`put` walks the home. Homes may nest (an anonymous home at the root holds the
users' homes): a change counts for every tracked home that contains it.
Changes made behind the server's back are seen at the next start.

Bytes of an upload in flight are not usage but a reservation: `reserve()`
checks usage plus every reservation plus the growth against the quota and
holds the growth until released, so uploads running at once cannot pass
the quota together.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ftpproto import QuotaExceededError

__all__ = ["Reservation", "Usage"]

Home = tuple[str, ...]


class Usage:
    def __init__(self, count: Callable[[Home], int]) -> None:
        self._count = count  # walks a home and returns the bytes held below it
        self.lock = threading.RLock()  # also held by callers around a change and its delta
        self._used: dict[Home, int] = {}
        self._reserved: dict[Home, int] = {}

    def track(self, home: Home) -> None:
        """Start counting `home` (a walk, once)."""
        self.used(home)

    def used(self, home: Home) -> int:
        with self.lock:
            if home not in self._used:
                self._used[home] = self._count(home)
            return self._used[home]

    def add(self, where: Home, delta: int) -> None:
        """`delta` bytes appeared (or, negative, went) in the directory `where`."""
        if not delta:
            return
        with self.lock:
            for home in self._used:
                if where[: len(home)] == home:
                    self._used[home] += delta

    def moved(self, old: Home, new: Home, size: Callable[[], int]) -> None:
        """The file or tree at `old` is now at `new`: homes holding one but not the other
        gain or lose its bytes. `size()` (a walk, for a tree) runs only if any does."""
        with self.lock:
            changed = [
                home for home in self._used if (old[: len(home)] == home) != (new[: len(home)] == home)
            ]
            if not changed:
                return
            amount = size()
            for home in changed:
                self._used[home] += amount if new[: len(home)] == home else -amount

    def fits(self, home: Home, quota: int | None, extra: int) -> bool:
        """Whether `extra` more bytes held in `home` keep usage and every reservation
        within `quota` (call with the lock held to act on the answer)."""
        if quota is None or extra <= 0:
            return True
        with self.lock:
            return self.used(home) + self._reserved.get(home, 0) + extra <= quota

    def reserve(self, home: Home, quota: int | None, growth: int, path: str) -> Reservation:
        """Hold `growth` bytes of `quota` for an upload until the reservation is released."""
        if quota is None or growth <= 0:
            return Reservation(None, home, 0)
        with self.lock:
            if not self.fits(home, quota, growth):
                held = self.used(home) + self._reserved.get(home, 0)
                raise QuotaExceededError(
                    f"{path}: needs {growth} more bytes; {held} of {quota} bytes are in use"
                )
            self._reserved[home] = self._reserved.get(home, 0) + growth
        return Reservation(self, home, growth)

    def _give_back(self, home: Home, amount: int) -> None:
        with self.lock:
            self._reserved[home] -= amount


@dataclass
class Reservation:
    """`amount` bytes of a home's quota held for one upload."""

    usage: Usage | None
    home: Home
    amount: int

    def release(self) -> None:
        usage, self.usage = self.usage, None
        if usage is not None:
            usage._give_back(self.home, self.amount)
