"""Progress display: the only module that imports tqdm.

`progress_bar(label, enabled)` returns a `progress(done, total)` callable for
`Client.get()`/`put()`: a tqdm bar on stderr, or its do-nothing twin when
stderr is not a terminal or the user asked for quiet.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["NullBar", "TransferBar", "progress_bar"]


class TransferBar:
    """A bytes bar (size, rate, ETA) drawn once the transfer knows its total."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = tqdm(
                total=total,
                initial=done,
                desc=self.label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
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


def progress_bar(label: str, enabled: bool) -> TransferBar | NullBar:
    return TransferBar(label) if enabled and sys.stderr.isatty() else NullBar()
