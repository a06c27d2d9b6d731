"""Early writeback for files being received, shared by both sides.

A received file is fsynced before it gets its name. Left alone, the kernel
keeps the bytes in memory until that fsync, which then waits for all of
them; asking for the writing to start as chunks arrive overlaps the disk
with the network, so the final fsync has little left to do.
"""

from __future__ import annotations

import os
from typing import BinaryIO

__all__ = ["Writeback"]

STEP = 32 * 1024 * 1024


class Writeback:
    """Tell it how many bytes were written; every `STEP` bytes it starts their writeback."""

    def __init__(self, file: BinaryIO, start: int = 0) -> None:
        self._fd = file.fileno()
        self._written = self._started = start

    def wrote(self, count: int) -> None:
        self._written += count
        if self._written - self._started >= STEP and hasattr(os, "posix_fadvise"):
            # DONTNEED starts writing dirty pages out now; they are dropped once clean.
            os.posix_fadvise(self._fd, self._started, self._written - self._started, os.POSIX_FADV_DONTNEED)
            self._started = self._written
