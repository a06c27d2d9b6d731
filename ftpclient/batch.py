"""Batches: many files over N connections, with filters, retries and a summary.

    jobs, failed = plan_put(["photos"], "/backup", recursive=True, filters=Filters())
    batch = Batch(lambda: Client(host, port), workers=4, retries=3)
    summary = batch.run(jobs)
    summary.failed += len(failed)  # the paths that could not even be planned
    print(summary_line(summary, dry_run=False))  # from ftpclient.formatting

Planning turns what the user named (paths, globs, trees, on either side) into
`Job`s, and what cannot be planned (a missing file, a directory without -r)
into failed `Outcome`s. `Batch.run()` hands the jobs to worker threads, each
with its own connection; a job whose connection drops is retried on a new one
and resumes where it broke off (the server reports the offset for uploads,
the partial file does it for downloads). One failed file does not stop the
others unless `fail_fast` is set. `Job`, `Outcome` and `Summary` live in
`ftpclient.jobs` and are exported here too.
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import os
import posixpath
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ftpproto import ExistsError, ProtocolError, ProtocolMismatchError
from ftpproto.io.pacing import RateLimiter
from ftpproto.paths import MAX_PATH_BYTES

from .client import PARTIAL_PREFIX, Client, md5_file
from .connection import Connection, backoff, is_retryable
from .errors import CLIENT_ERRORS
from .jobs import DIRECTORY_OPS, Job, Outcome, Summary

__all__ = ["Batch", "Filters", "Job", "Outcome", "Summary", "plan_get", "plan_put"]


@dataclass(frozen=True)
class Filters:
    """`--include`/`--exclude` globs, matched against a file's path within the tree and
    against each name along it, so `.git` excludes a whole directory and `*.pdf` any
    PDF. A file is kept if it matches an include (when any are given) and no exclude."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def keep(self, relative: str) -> bool:
        names = relative.split("/")

        def matches(patterns: tuple[str, ...]) -> bool:
            return any(
                fnmatch.fnmatchcase(relative, p) or any(fnmatch.fnmatchcase(n, p) for n in names)
                for p in patterns
            )

        return (not self.include or matches(self.include)) and not matches(self.exclude)


def remote_join(directory: str, *names: str) -> str:
    return posixpath.join("/", directory.strip("/"), *names).rstrip("/") or "/"


def _failed(op: str, local: Path, remote: str, error: BaseException) -> Outcome:
    return Outcome(Job(op, local, remote), "failed", error=error)


def unique_destinations(jobs: list[Job], failed: list[Outcome]) -> list[Job]:
    """Drop exact repeats; a second job for a destination already taken fails, since
    two transfers into one name at once would race for it."""
    kept: dict[object, Job] = {}
    for job in jobs:
        key = job.local.resolve() if job.op in ("get", "mkdir-local") else job.remote
        if key not in kept:
            kept[key] = job
        elif kept[key] != job:
            other = kept[key].remote if job.op == "get" else kept[key].local
            failed.append(Outcome(job, "failed", error=FileExistsError(17, f"same destination as {other}")))
    return list(kept.values())


# -- planning ------------------------------------------------------------------


def plan_put(
    sources: Iterable[str], remote_dir: str, recursive: bool, filters: Filters = Filters()
) -> tuple[list[Job], list[Outcome]]:
    """Jobs for uploading `sources` (files, directories with `recursive`, globs) into `remote_dir`."""
    jobs: list[Job] = []
    failed: list[Outcome] = []
    for source in sources:
        paths = [Path(source)]
        if glob.has_magic(source) and not os.path.lexists(source):
            paths = [Path(p) for p in sorted(glob.glob(source))]
            if not paths:
                failed.append(
                    _failed("put", Path(source), remote_dir, FileNotFoundError(2, "no file matches"))
                )
        for path in paths:
            if path.is_dir():
                if recursive:
                    jobs += _plan_local_tree(path, remote_join(remote_dir, path.resolve().name), filters)
                else:
                    failed.append(
                        _failed("put", path, remote_dir, IsADirectoryError(21, "is a directory (use -r)"))
                    )
            elif not path.exists():
                failed.append(
                    _failed("put", path, remote_dir, FileNotFoundError(2, "No such file or directory"))
                )
            elif filters.keep(path.name):
                jobs.append(Job("put", path, remote_join(remote_dir, path.name), path.stat().st_size))
    return unique_destinations(jobs, failed), failed


def _plan_local_tree(root: Path, remote_root: str, filters: Filters) -> list[Job]:
    jobs = []
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        relative_dir = os.path.relpath(directory, root)
        parts = () if relative_dir == "." else Path(relative_dir).parts
        remote_dir = remote_join(remote_root, *parts)
        if not dirs and not files:
            jobs.append(Job("mkdir", Path(directory), remote_dir))
        for name in sorted(files):
            path = Path(directory, name)
            if name.startswith(PARTIAL_PREFIX):
                continue  # an interrupted download of ours: not the user's file
            if filters.keep(posixpath.join(*parts, name)):
                jobs.append(Job("put", path, remote_join(remote_dir, name), _size(path)))
    return jobs


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def plan_get(
    client: Client,
    remotes: Iterable[str],
    output: str | os.PathLike | None,
    recursive: bool,
    filters: Filters = Filters(),
) -> tuple[list[Job], list[Outcome]]:
    """Jobs for downloading `remotes` (files, trees with `recursive`, globs in the last
    name). `output` names the local file for one remote file, else the directory."""
    remotes = list(remotes)
    output = Path(output) if output is not None else None
    base = output or Path()
    jobs: list[Job] = []
    failed: list[Outcome] = []
    for remote in remotes:
        try:
            matches = _expand_remote(client, remote)
            if not matches:
                raise FileNotFoundError(2, "no remote file matches")
            for path, entry_type, size in matches:
                name = posixpath.basename(path.rstrip("/"))
                if entry_type == "file":
                    one_file = len(remotes) == 1 and len(matches) == 1
                    local = output if one_file and output is not None and not output.is_dir() else base / name
                    if filters.keep(name):
                        jobs.append(Job("get", local, path, size))
                elif recursive:
                    jobs += _plan_remote_tree(client, path, base / name, filters)
                else:
                    raise IsADirectoryError(21, "is a directory (use -r)")
        except CLIENT_ERRORS as exc:
            failed.append(_failed("get", base, remote, exc))
    return unique_destinations(jobs, failed), failed


def _expand_remote(client: Client, remote: str) -> list[tuple[str, str, int]]:
    """(path, type, size) for `remote`, or for each name its glob matches."""
    parent, pattern = posixpath.split(remote)
    if glob.has_magic(pattern):
        entries = client.ls(parent or "/")
        return [
            (remote_join(parent, e.name), e.type, e.size)
            for e in entries
            if fnmatch.fnmatchcase(e.name, pattern)
        ]
    entry = client.stat(remote)
    return [(remote, entry.type, entry.size)]


def _plan_remote_tree(client: Client, remote_root: str, local_root: Path, filters: Filters) -> list[Job]:
    jobs = []
    pending = [(remote_root, local_root, "")]
    while pending:
        remote_dir, local_dir, relative = pending.pop()
        if len(remote_dir.encode()) > MAX_PATH_BYTES:
            raise ProtocolMismatchError(f"{remote_dir[:80]}...: remote tree deeper than any valid path")
        entries = client.ls(remote_dir)
        if not entries:
            jobs.append(Job("mkdir-local", local_dir, remote_dir))
        for entry in entries:
            path, local = remote_join(remote_dir, entry.name), local_dir / entry.name
            rel = posixpath.join(relative, entry.name)
            if entry.type == "dir":
                pending.append((path, local, rel))
            elif filters.keep(rel):
                jobs.append(Job("get", local, path, entry.size))
    return jobs


# -- running -------------------------------------------------------------------


@dataclass
class Batch:
    """Runs jobs over `workers` connections made by `connect()`.

    `on_progress(job, done, total)` and `on_outcome(outcome)` are called from
    worker threads (`on_outcome` one at a time). `limit_rate` caps the whole
    batch in bytes per second; `dry_run` only says what each job would do.
    """

    connect: Callable[[], Client]
    workers: int = 4
    retries: int = 0
    fail_fast: bool = False
    no_clobber: bool = False
    parents: bool = True
    dry_run: bool = False
    limit_rate: int | None = None
    backoff: float = 0.5
    on_progress: Callable[[Job, int, int], object] | None = None
    on_outcome: Callable[[Outcome], object] | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _report_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def run(self, jobs: list[Job], first_client: Client | None = None) -> Summary:
        """Run every job; `first_client`, if given, is used by the first worker."""
        summary = Summary()
        started = time.monotonic()
        pace = RateLimiter(self.limit_rate) if self.limit_rate else None
        todo: queue.SimpleQueue[Job] = queue.SimpleQueue()
        for job in jobs:
            todo.put(job)
        count = max(1, min(self.workers, len(jobs)))
        connections = [
            Connection(self.connect, pace=pace, client=first_client if i == 0 else None) for i in range(count)
        ]
        threads = [
            threading.Thread(target=self._work, args=(todo, summary, connection), daemon=True)
            for connection in connections
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)  # in slices, so Ctrl-C is seen at once
        except KeyboardInterrupt:
            self._stop.set()
            for connection in connections:
                connection.drop()  # unblocks a worker in the middle of a transfer
            raise
        summary.seconds = time.monotonic() - started
        return summary

    def _work(self, todo: queue.SimpleQueue[Job], summary: Summary, connection: Connection) -> None:
        try:
            while not self._stop.is_set():
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                outcome = self._attempts(job, connection)
                with self._report_lock:
                    summary.add(outcome)
                    if self.on_outcome is not None:
                        self.on_outcome(outcome)
                if outcome.result == "failed" and self.fail_fast:
                    self._stop.set()
        finally:
            connection.close()

    def _attempts(self, job: Job, connection: Connection) -> Outcome:
        attempt = 1
        while True:
            try:
                return self._do(job, connection.client, attempt)
            except ExistsError:
                return Outcome(job, "skipped", note="exists", attempts=attempt)
            except CLIENT_ERRORS as exc:
                if not is_retryable(exc) or attempt > self.retries or self._stop.is_set():
                    return Outcome(job, "failed", error=exc, attempts=attempt)
                connection.drop()
                time.sleep(backoff(attempt - 1, self.backoff))
                attempt += 1

    def _do(self, job: Job, client: Client, attempt: int) -> Outcome:
        if job.op in DIRECTORY_OPS:
            if self.dry_run:
                return Outcome(job, "planned", note="would create directory", attempts=attempt)
            if job.op == "mkdir":
                client.mkdir(job.remote, parents=True)
            else:
                job.local.mkdir(parents=True, exist_ok=True)
            return Outcome(job, "ok", note="directory", attempts=attempt)
        if self.dry_run:
            note = self._preview(client, job)
            return Outcome(job, "skipped" if "skip" in note else "planned", note=note, attempts=attempt)
        progress = None if self.on_progress is None else functools.partial(self.on_progress, job)

        if job.op == "put":
            transfer = client.put(
                job.local, job.remote, overwrite=not self.no_clobber, parents=self.parents, progress=progress
            )
        else:
            if self.no_clobber and job.local.exists():
                return Outcome(job, "skipped", note="exists", attempts=attempt)
            job.local.parent.mkdir(parents=True, exist_ok=True)
            transfer = client.get(job.remote, job.local, progress=progress)
        if transfer.skipped:
            note = "identical" if job.op == "get" else "already on the server"
            return Outcome(job, "skipped", transfer, note=note, attempts=attempt)
        return Outcome(job, "ok", transfer, attempts=attempt)

    def _preview(self, client: Client, job: Job) -> str:
        """What `job` would do: send, or skip because the other side has it."""
        local_size = _size(job.local)
        try:
            remote = client.stat(job.remote)
        except ProtocolError as exc:
            if exc.code == "not_found":
                return "would send" if job.op == "put" else "would fetch"
            raise
        if job.op == "put":
            if remote.size == local_size and remote.md5 == md5_file(job.local):
                return "would skip (identical)"
            return "would skip (exists)" if self.no_clobber else "would replace"
        if local_size is None:
            return "would fetch"
        if local_size == remote.size and md5_file(job.local) == remote.md5:
            return "would skip (identical)"
        return "would skip (exists)" if self.no_clobber else "would replace"
