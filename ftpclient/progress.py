"""Progress display for the command line and the shell.

`progress_bar(label, stream, enabled)` returns a `progress(done, total)`
callable for `Client.get()`/`put()`: a tqdm bar on `stream` (the run's
stderr), or its do-nothing twin when not `enabled`; the caller decides that
(a terminal, and the user did not ask for quiet). Nothing here reads `sys`:
the streams come from the caller's `Environment`. The bars themselves are in
`bars.py`, imported only when one is drawn: tqdm's import is a sixth of a quiet
run's start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .bars import BatchBar, TransferBar

__all__ = ["NullBar", "NullBatchBar", "batch_bar", "progress_bar", "write_line"]


def write_line(text: str, stream: TextIO) -> None:
    """Print a line on `stream` while bars may be drawn: cleared and redrawn around it."""
    from .bars import write_line as write_between_bars

    write_between_bars(text, stream)


class NullBar:
    """Draws nothing."""

    def __call__(self, done: int, total: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(label: str, stream: TextIO, enabled: bool) -> TransferBar | NullBar:
    if not enabled:
        return NullBar()
    from .bars import TransferBar

    return TransferBar(label, stream)


class NullBatchBar:
    def progress(self, job: object, done: int, total: int) -> None:
        pass

    def finished(self, job: object, size: int | None, failed: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


def batch_bar(files: int, total_bytes: int, stream: TextIO, enabled: bool) -> BatchBar | NullBatchBar:
    if not enabled:
        return NullBatchBar()
    from .bars import BatchBar

    return BatchBar(files, total_bytes, stream)
