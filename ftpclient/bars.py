"""The progress bars themselves, drawn with tqdm: the only module that imports it.

`progress.py` loads this module only when a bar is to be drawn (a terminal, and the
user did not ask for quiet), so a scripted run never pays for tqdm's import.
"""

from __future__ import annotations

import posixpath
import threading
from typing import TextIO

from tqdm import tqdm

from .formatting import human_size

__all__ = ["BatchBar", "TransferBar", "write_line"]


def write_line(text: str, stream: TextIO) -> None:
    """Print a result line on `stream`, clearing and redrawing any bar around it."""
    tqdm.write(text, file=stream)
    stream.flush()


class _BinaryBar(tqdm):
    """A tqdm bar that writes its byte counts and rate in binary units (KiB, MiB/s), as it
    counts them: tqdm's own scaling divides counts by 1024 but labels them kB and MB."""

    @property
    def format_dict(self) -> dict:
        values = dict(super().format_dict)
        rate = values["rate"]
        elapsed = values["elapsed"]
        if rate is None and elapsed:
            rate = (values["n"] - values["initial"]) / elapsed
        values["n_binary"] = human_size(int(values["n"]))
        values["total_binary"] = "?" if values["total"] is None else human_size(int(values["total"]))
        values["rate_binary"] = "?" if rate is None else f"{human_size(int(rate))}/s"
        return values


BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_binary}/{total_binary} [{elapsed}<{remaining}, {rate_binary}]{postfix}"


def _bytes_bar(total: int, label: str, stream: TextIO, initial: int = 0) -> tqdm:
    """A bar counting bytes (size, rate, ETA) on `stream`, cleared when closed."""
    return _BinaryBar(
        total=total,
        initial=initial,
        desc=label,
        unit="B",
        file=stream,
        leave=False,
        dynamic_ncols=True,
        bar_format=BAR_FORMAT,
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


class BatchBar:
    """One bar for a whole batch: bytes moved of all files, files done (and failed), the current file."""

    def __init__(self, files: int, total_bytes: int, stream: TextIO) -> None:
        self.files, self.done_files, self.failed_files = files, 0, 0
        self._lock = threading.Lock()
        self._seen: dict[object, int] = {}
        self._bar = _bytes_bar(total_bytes, self._description(), stream)

    def _description(self) -> str:
        failed = f" ({self.failed_files} failed)" if self.failed_files else ""
        return f"{self.done_files}/{self.files} files{failed}"

    def progress(self, job: object, done: int, total: int) -> None:
        with self._lock:
            delta = done - self._seen.get(job, 0)
            self._seen[job] = done
            self._bar.update(delta)
            self._bar.set_postfix_str(posixpath.basename(str(getattr(job, "remote", ""))), refresh=False)

    def finished(self, job: object, size: int | None, failed: bool = False) -> None:
        """A file is done. A skipped one's bytes count as dealt with; a failed one's do not,
        and it is counted apart: the bar never shows 100% over failures."""
        with self._lock:
            moved = self._seen.pop(job, 0)
            if failed:
                self.failed_files += 1
            else:
                self.done_files += 1
                if (size or 0) > moved:
                    self._bar.update((size or 0) - moved)
            self._bar.set_description(self._description(), refresh=True)

    def write(self, text: str) -> None:
        """A line on the bar's stream (an error), above the bar rather than inside it."""
        with self._lock:
            self._bar.write(text, file=self._bar.fp)

    def close(self) -> None:
        self._bar.close()
