"""What a batch is made of (`Job`) and what came of it (`Outcome`, `Summary`).

Plain data, shared by `batch` (which plans and runs jobs) and `formatting`
(which reports them); `ftpclient.batch` exports these names too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .client import Transfer

__all__ = ["ATTRIBUTES_SET", "DIRECTORY_OPS", "Job", "Outcome", "Summary"]

DIRECTORY_OPS = ("mkdir", "mkdir-local")
ATTRIBUTES_SET = "; time and mode set"  # ends a skipped file's note when -p gave it the source's


@dataclass(frozen=True)
class Job:
    """One thing to do: `put` or `get` a file, or make an empty directory of a tree:
    `mkdir` (remote, for an upload) or `mkdir-local` (for a download). A job with a
    `skip` reason was planned only to be reported as skipped (a symlink not followed)."""

    op: str
    local: Path
    remote: str
    size: int | None = None
    skip: str = ""


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
    """What a batch did: files `sent` (moved, either way), `linked` (an instant upload:
    the server linked identical content it held, nothing sent), `skipped` (already there),
    `failed`, and for `sync --delete` the names `deleted`."""

    sent: int = 0
    skipped: int = 0
    failed: int = 0
    bytes: int = 0
    seconds: float = 0.0
    linked: int = 0
    deleted: int = 0

    def add(self, outcome: Outcome) -> None:
        """Count a file's outcome; directories count only when they fail."""
        if outcome.result == "failed":
            self.failed += 1
        elif outcome.job.op in DIRECTORY_OPS:
            pass
        elif outcome.result == "skipped":
            self.skipped += 1
        elif outcome.transfer is not None and outcome.transfer.linked:
            self.linked += 1
        elif outcome.result in ("ok", "planned"):
            self.sent += 1
        if outcome.transfer is not None:
            self.bytes += outcome.transfer.sent

    @property
    def rate(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0
