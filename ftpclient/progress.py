"""Progress display: the only module that imports tqdm.

`progress_bar(label, stream, enabled)` returns a `progress(done, total)`
callable for `Client.get()`/`put()`: a tqdm bar on `stream` (the run's
stderr), or its do-nothing twin when not `enabled`; the caller decides that
(a terminal, and the user did not ask for quiet). Nothing here reads `sys`:
the streams come from the caller's `Environment`.
"""

from __future__ import annotations

import posixpath
import threading
from typing import TextIO

from tqdm import tqdm

__all__ = ["BatchBar", "NullBar", "TransferBar", "batch_bar", "progress_bar", "write_line"]


def write_line(text: str, stream: TextIO) -> None:
    """Print a result line on `stream`, clearing and redrawing any bar around it."""
    tqdm.write(text, file=stream)
    stream.flush()


def _bytes_bar(total: int, label: str, stream: TextIO, initial: int = 0) -> tqdm:
    """A bar counting bytes (size, rate, ETA) on `stream`, cleared when closed."""
    return tqdm(
        total=total,
        initial=initial,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=stream,
        leave=False,
        dynamic_ncols=True,
    )


class TransferBar:
    """A bytes bar (size, rate, ETA) drawn once the transfer knows its total."""

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label, self.stream = label, stream
        self._bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = _bytes_bar(total, self.label, self.stream, initial=done)
        else:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class NullBar:
    """Draws nothing."""

    def __call__(self, done: int, total: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(label: str, stream: TextIO, enabled: bool) -> TransferBar | NullBar:
    return TransferBar(label, stream) if enabled else NullBar()


class BatchBar:
    """One bar for a whole batch: bytes moved of all files, files done, the current file."""

    def __init__(self, files: int, total_bytes: int, stream: TextIO) -> None:
        self.files, self.done_files = files, 0
        self._lock = threading.Lock()
        self._seen: dict[object, int] = {}
        self._bar = _bytes_bar(total_bytes, self._description(), stream)

    def _description(self) -> str:
        return f"{self.done_files}/{self.files} files"

    def progress(self, job: object, done: int, total: int) -> None:
        with self._lock:
            delta = done - self._seen.get(job, 0)
            self._seen[job] = done
            self._bar.update(delta)
            self._bar.set_postfix_str(posixpath.basename(str(getattr(job, "remote", ""))), refresh=False)

    def finished(self, job: object, size: int | None) -> None:
        with self._lock:
            self.done_files += 1
            missing = (size or 0) - self._seen.pop(job, 0)
            if missing > 0:  # skipped or failed: its bytes count as dealt with
                self._bar.update(missing)
            self._bar.set_description(self._description(), refresh=True)

    def close(self) -> None:
        self._bar.close()


class NullBatchBar:
    def progress(self, job: object, done: int, total: int) -> None:
        pass

    def finished(self, job: object, size: int | None) -> None:
        pass

    def close(self) -> None:
        pass


def batch_bar(files: int, total_bytes: int, stream: TextIO, enabled: bool) -> BatchBar | NullBatchBar:
    return BatchBar(files, total_bytes, stream) if enabled else NullBatchBar()
