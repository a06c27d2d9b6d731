"""Every line and JSON record the client shows: errors, listings, transfers, summaries.

Pure functions from results to text (`*_line`) or to JSON-ready dicts
(`*_record`); the command line and the shell print what these return, so the
same result reads the same in both.
"""

from __future__ import annotations

import time

from ftpproto import ProtocolError

from .client import Entry, Transfer, Usage
from .jobs import ATTRIBUTES_SET, Outcome, Summary

__all__ = [
    "LINKED",
    "entry_record",
    "error_record",
    "human_size",
    "long_line",
    "outcome_line",
    "outcome_record",
    "reason",
    "short_line",
    "stat_line",
    "summary_line",
    "summary_record",
    "transfer_line",
    "usage_lines",
    "usage_record",
]

Record = dict[str, object]
LINKED = "linked from identical content"  # an instant upload


def _linked(transfer: Transfer) -> str:
    """An instant upload; a pipelined one sent its bytes before the server could tell."""
    return f"{LINKED}, nothing sent" if transfer.sent == 0 else LINKED


# -- errors ----------------------------------------------------------------------


def reason(exc: BaseException, with_filename: bool = False) -> str:
    """An error as one line: `code: message` for the server's, the system's words for
    a local one (after the file's name, `with_filename`), else its message."""
    if isinstance(exc, ProtocolError):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if with_filename and exc.filename else exc.strerror
    return str(exc) or exc.__class__.__name__


def error_record(record: Record, exc: BaseException) -> Record:
    """`record` (what was being done) marked failed, with the error code and its reason."""
    code = exc.code if isinstance(exc, ProtocolError) else None
    return {**record, "result": "failed", "error": code, "message": reason(exc)}


# -- entries ---------------------------------------------------------------------


def human_size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def entry_record(path: str, entry: Entry) -> Record:
    record: Record = {
        "path": path,
        "name": entry.name,
        "type": entry.type,
        "size": entry.size,
        "mtime": entry.mtime,
    }
    if entry.md5 is not None:
        record["md5"] = entry.md5
    if entry.mode is not None:
        record["mode"] = entry.mode
    return record


def long_line(entry: Entry, human: bool = False, name: str | None = None) -> str:
    """`ls -l`: type, size (`human`: in KiB, MiB, ...), time, and the name (or `name`)."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.mtime))
    size = "-" if entry.type == "dir" else human_size(entry.size) if human else str(entry.size)
    return f"{entry.type[0]} {size:>12}  {when}  {short_line(entry, name)}"


def short_line(entry: Entry, name: str | None = None) -> str:
    """`ls`: the name (or `name`, a path below the listed directory), `/` after a directory's."""
    return (entry.name if name is None else name) + ("/" if entry.type == "dir" else "")


def usage_lines(usage: Usage, human: bool) -> list[str]:
    """`df`: a header and one row: used, quota, free of it, and the storage's free space."""

    def size(count: int | None) -> str:
        return "-" if count is None else human_size(count) if human else str(count)

    columns = [size(usage.used), size(usage.quota), size(usage.free), size(usage.disk_free)]
    header = ["used", "quota", "free", "disk free"]
    return ["  ".join(f"{cell:>12}" for cell in row) for row in (header, columns)]


def usage_record(usage: Usage) -> Record:
    return {
        "op": "df",
        "used": usage.used,
        "quota": usage.quota,
        "free": usage.free,
        "disk_free": usage.disk_free,
    }


def stat_line(path: str, entry: Entry) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(entry.mtime))
    line = f"{path}: {entry.type}, {entry.size} bytes, modified {when}"
    return line + (f", md5 {entry.md5}" if entry.md5 else "")


# -- transfers and batches -------------------------------------------------------


def transfer_line(op: str, source: str, target: str, transfer: Transfer) -> str:
    """The shell's line for one `get` or `put`."""
    if transfer.linked:
        note = f" ({_linked(transfer)})"
    elif not transfer.skipped:
        note = _resumed(transfer)
    elif op == "get":
        note = " (identical, skipped)"
    else:
        note = " (already on the server, nothing sent)"
    return f"{source} -> {target}: {transfer.size} bytes{note}"


def outcome_record(outcome: Outcome) -> Record:
    job, transfer = outcome.job, outcome.transfer
    record: Record = {"op": job.op, "remote": job.remote, "local": str(job.local), "result": outcome.result}
    if transfer is not None:
        record.update(
            size=transfer.size, md5=transfer.md5, sent=transfer.sent, seconds=round(transfer.seconds, 6)
        )
    elif job.size is not None:
        record["size"] = job.size
    if outcome.note:
        record["note"] = outcome.note
    if outcome.attempts > 1:
        record["attempts"] = outcome.attempts
    return record


def outcome_line(outcome: Outcome) -> str:
    job, transfer = outcome.job, outcome.transfer
    if job.op.startswith("mkdir"):
        return f"{job.op}: {job.remote if job.op == 'mkdir' else job.local}: {outcome.note}"
    arrow = f"{job.remote} -> {job.local}" if job.op == "get" else f"{job.local} -> {job.remote}"
    if job.skip:
        return f"{job.op}: {job.local}: skipped: {job.skip}"
    if outcome.result == "planned" or transfer is None:
        return f"{job.op}: {arrow}: {outcome.note or outcome.result}"
    if outcome.result == "skipped":
        attributes = ATTRIBUTES_SET if outcome.note.endswith(ATTRIBUTES_SET) else ""
        return f"{job.op}: {arrow}: identical file already there, nothing sent{attributes}"
    if transfer.linked:
        return f"{job.op}: {arrow}: {human_size(transfer.size)}, md5 {transfer.md5}, {_linked(transfer)}"
    return f"{job.op}: {arrow}: {human_size(transfer.size)}, md5 {transfer.md5}{_resumed(transfer)}"


def _resumed(transfer: Transfer) -> str:
    held = transfer.size - transfer.sent
    return f", resumed after {human_size(held)}" if held > 0 else ""


def summary_record(summary: Summary, dry_run: bool, deletes: bool = False) -> Record:
    record: Record = {
        "op": "summary",
        "sent": summary.sent,
        "linked": summary.linked,
        "skipped": summary.skipped,
        "failed": summary.failed,
        "bytes": summary.bytes,
        "seconds": round(summary.seconds, 6),
        "rate": round(summary.rate),
    }
    if deletes:
        record["deleted"] = summary.deleted
    if dry_run:
        record["dry_run"] = True
    return record


def summary_line(summary: Summary, dry_run: bool, op: str = "put", deletes: bool = False) -> str:
    """The last line of a batch: `sent` for uploads, `fetched` for downloads (`get`)."""
    verb = "fetched" if op == "get" else "sent"
    deleted = f", delete {summary.deleted}" if deletes else ""
    if dry_run:
        return (
            f"dry run: would transfer {summary.sent} files, skip {summary.skipped}{deleted}, "
            f"{summary.failed} failed; nothing changed"
        )
    linked = f", linked {summary.linked}" if summary.linked else ""
    deleted = f", deleted {summary.deleted}" if deletes else ""
    rate = f"{human_size(int(summary.rate))}/s"
    return (
        f"{verb} {summary.sent} files{linked}, skipped {summary.skipped}{deleted}, failed {summary.failed}: "
        f"{human_size(summary.bytes)} in {summary.seconds:.1f}s ({rate})"
    )
