"""What a batch is made of (`Job`) and what came of it (`Outcome`, `Summary`).

Plain data, shared by `batch` (which plans and runs jobs) and `formatting`
(which reports them); `ftpclient.batch` exports these names too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .client import Transfer

__all__ = ["DIRECTORY_OPS", "Job", "Outcome", "Summary"]

DIRECTORY_OPS = ("mkdir", "mkdir-local")


@dataclass(frozen=True)
class Job:
    """One thing to do: `put` or `get` a file, or make an empty directory of a tree:
    `mkdir` (remote, for an upload) or `mkdir-local` (for a download)."""

    op: str
    local: Path
    remote: str
    size: int | None = None


@dataclass(frozen=True)
class Outcome:
    job: Job
    result: str  # "ok", "skipped", "failed", or "planned" in a dry run
    transfer: Transfer | None = None
    error: BaseException | None = None  # set when result is "failed"
    note: str = ""  # why it was skipped, or what a dry run would do
    attempts: int = 1


@dataclass
class Summary:
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def add(self, outcome: Outcome) -> None:
        """Count a file's outcome; directories count only when they fail."""
        if outcome.result == "failed":
            self.failed += 1
        elif outcome.job.op in DIRECTORY_OPS:
            pass
        elif outcome.result == "skipped":
            self.skipped += 1
        elif outcome.result in ("ok", "planned"):
            self.sent += 1
        if outcome.transfer is not None:
            self.bytes += outcome.transfer.sent

    @property
    def rate(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0
