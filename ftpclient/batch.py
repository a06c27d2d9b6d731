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

Against a server that offers the `eager` extension, a worker takes small files
(up to `EAGER_PUT_MAX` bytes) `PIPELINE_RUN` at a time and moves them pipelined
(ftpclient.pipeline): the remote side of each is looked at first with pipelined
`stat`s, so identical files are still skipped without sending a byte, and the
rest go with eager puts or gets, which the server (uploads) and the client
(downloads) make durable in groups.
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ftpproto import ExistsError, ProtocolError, ProtocolMismatchError, join_path, split_path
from ftpproto.io.pacing import RateLimiter
from ftpproto.messages import EAGER_PUT_MAX
from ftpproto.paths import MAX_PATH_BYTES

from .client import PARTIAL_PREFIX, Client, Entry, Transfer, md5_file, set_attributes
from .connection import BUSY_RETRIES, Connection, backoff, is_busy, is_retryable
from .errors import CLIENT_ERRORS
from .jobs import ATTRIBUTES_SET, DIRECTORY_OPS, Job, Outcome, Summary
from .pipeline import TempFiles, get_pipelined, put_pipelined, stat_pipelined

__all__ = [
    "LINK_POLICIES",
    "Batch",
    "Filters",
    "Job",
    "LocalItem",
    "Outcome",
    "Summary",
    "is_remote_dir",
    "names_directory",
    "plan_get",
    "plan_put",
    "remote_join",
    "walk_local",
    "walk_remote",
]

LINK_POLICIES = ("skip", "follow")  # --links; None (the default): follow links that stay in the tree


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
    folders: dict[Path, str] = {}  # each local folder resolved once, not once per file in it
    for job in jobs:
        key: object = job.remote
        if job.op == "mkdir-local":
            key = job.local.resolve()
        elif job.op == "get":
            folder = folders.get(job.local.parent)
            if folder is None:
                folder = folders[job.local.parent] = os.path.realpath(job.local.parent)
            key = Path(folder, job.local.name)
            if key.is_symlink():  # a download that finds it identical would touch the target
                key = key.resolve()
        if key not in kept:
            kept[key] = job
        elif kept[key] != job:
            other = kept[key].remote if job.op == "get" else kept[key].local
            failed.append(Outcome(job, "failed", error=FileExistsError(17, f"same destination as {other}")))
    return list(kept.values())


# -- planning ------------------------------------------------------------------


def plan_put(
    sources: Iterable[str],
    remote_dir: str,
    recursive: bool,
    filters: Filters = Filters(),
    links: str | None = None,
) -> tuple[list[Job], list[Outcome]]:
    """Jobs for uploading `sources` (files, directories with `recursive`, globs) into `remote_dir`.

    A symbolic link named as a source is followed. One met inside a tree is followed
    when it points into that tree; else (and with `links="skip"`, every one) it becomes
    a job that is only reported as skipped. `links="follow"` follows every link."""
    jobs: list[Job] = []
    failed: list[Outcome] = []
    for source in sources:
        paths = [Path(source)]
        if glob.has_magic(source) and not os.path.lexists(source):
            paths = [Path(p) for p in sorted(glob.glob(source))]
            if not paths:
                failed.append(
                    _failed("put", Path(source), remote_dir, FileNotFoundError(2, "no local file matches"))
                )
        for path in paths:
            if path.is_dir():
                if recursive:
                    remote_root = remote_join(remote_dir, path.resolve().name)
                    jobs += _plan_local_tree(path, remote_root, filters, links)
                else:
                    failed.append(
                        _failed("put", path, remote_dir, IsADirectoryError(21, "is a directory (use -r)"))
                    )
            elif not path.exists():
                error = FileNotFoundError(2, "no such local file or directory")
                failed.append(_failed("put", path, remote_dir, error))
            elif filters.keep(path.name):
                jobs.append(Job("put", path, remote_join(remote_dir, path.name), path.stat().st_size))
    return unique_destinations(jobs, failed), failed


def _plan_local_tree(root: Path, remote_root: str, filters: Filters, links: str | None = None) -> list[Job]:
    jobs = []
    for item in walk_local(root, links):
        remote = remote_join(remote_root, item.relative)
        if item.type == "dir" and not item.skip:
            if item.empty:
                jobs.append(Job("mkdir", item.path, remote))
        elif filters.keep(item.relative):
            jobs.append(Job("put", item.path, remote, None if item.skip else _size(item.path), item.skip))
    return jobs


@dataclass(frozen=True)
class LocalItem:
    """A file or directory met by `walk_local()`."""

    relative: str  # its path below the root, with `/`; "" for the root itself
    path: Path
    type: str  # "file" (anything but a directory) or "dir"
    skip: str = ""  # why a symlink is not followed (then nothing below it is walked)
    empty: bool = False  # a directory with nothing in it to walk


def walk_local(root: Path, links: str | None = None) -> Iterator[LocalItem]:
    """Everything below the local directory `root` (itself first), parents before children,
    names sorted; our own partial downloads left out. Symbolic links are followed, or not,
    as `links` says (see `plan_put()`); a link back into a directory above it never is."""
    root_real = os.path.realpath(root)
    # The real directories each walked directory lies in, itself included: a link back into
    # one of them would walk for ever.
    ancestors: dict[str, frozenset[str]] = {str(root): frozenset([root_real])}
    for directory, dirs, files in os.walk(root, followlinks=links != "skip"):
        dirs.sort()
        relative = os.path.relpath(directory, root).replace(os.sep, "/")
        relative = "" if relative == "." else relative
        for name in list(dirs):
            path = Path(directory, name)
            real = os.path.realpath(path)
            reason = _unfollowed_link(path, root_real, links) if path.is_symlink() else None
            if reason is None and real in ancestors[directory]:
                reason = f"symlink -> {os.readlink(path)} loops back into the tree"
            if reason is None:
                ancestors[str(path)] = ancestors[directory] | {real}
                continue
            dirs.remove(name)
            yield LocalItem(posixpath.join(relative, name), path, "dir", skip=reason)
        yield LocalItem(relative, Path(directory), "dir", empty=not dirs and not files)
        for name in sorted(files):
            if name.startswith(PARTIAL_PREFIX):
                continue  # an interrupted download of ours: not the user's file
            path = Path(directory, name)
            reason = _unfollowed_link(path, root_real, links) if path.is_symlink() else None
            yield LocalItem(posixpath.join(relative, name), path, "file", skip=reason or "")


def _unfollowed_link(path: Path, root_real: str, links: str | None) -> str | None:
    """Why the symlink `path`, met in the tree at `root_real`, is not uploaded; None to follow it."""
    target = os.readlink(path)
    if links == "skip":
        return f"symlink -> {target} not followed (--links skip)"
    real = os.path.realpath(path)
    if not os.path.exists(real):
        return f"broken symlink -> {target}"
    if links != "follow" and os.path.commonpath([real, root_real]) != root_real:
        return f"symlink -> {target} points outside the tree (--links follow uploads it)"
    return None


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
    name). `output` names the local file for one remote file, else the directory; one
    that ends with `/` or is a directory always names the directory."""
    remotes = list(remotes)
    into_dir = output is not None and names_directory(output)
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
                    local = output if one_file and output is not None and not into_dir else base / name
                    if filters.keep(name):
                        jobs.append(Job("get", local, path, size))
                elif recursive:
                    jobs += _plan_remote_tree(client, path, base / name, filters)
                else:
                    raise IsADirectoryError(21, "is a directory (use -r)")
        except CLIENT_ERRORS as exc:
            failed.append(_failed("get", base, remote, exc))
    return unique_destinations(jobs, failed), failed


def is_remote_dir(client: Client, path: str) -> bool:
    """Whether `path` is a directory on the server (False if there is nothing there)."""
    try:
        return client.stat(path).type == "dir"
    except ProtocolError as exc:
        if exc.code != "not_found":
            raise
        return False


def names_directory(local: str | os.PathLike) -> bool:
    """Whether a local destination is a directory: it is one, or it ends with a slash."""
    text = os.fspath(local)
    return text.endswith(("/", os.sep)) or os.path.isdir(text)


def _expand_remote(client: Client, remote: str) -> list[tuple[str, str, int]]:
    """(path, type, size) for `remote`, or for each name its glob matches."""
    parent, pattern = posixpath.split(remote)
    if not glob.has_magic(pattern):
        remote = join_path(split_path(remote))  # `/.` is the home, `a/../b` is `/b`
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
    for remote_dir, relative, entries in walk_remote(client, remote_root):
        local_dir = local_root.joinpath(*relative.split("/")) if relative else local_root
        if not entries:
            jobs.append(Job("mkdir-local", local_dir, remote_dir))
        for entry in entries:
            rel = posixpath.join(relative, entry.name)
            if entry.type == "file" and filters.keep(rel):
                jobs.append(
                    Job("get", local_dir / entry.name, remote_join(remote_dir, entry.name), entry.size)
                )
    return jobs


def walk_remote(client: Client, root: str, md5: bool = False) -> Iterator[tuple[str, str, list[Entry]]]:
    """(remote directory, its path below `root`, its entries) for the remote directory
    `root` (first, as "") and every directory below it, parents before children. With
    `md5`, files carry the MD5s the server knows without reading them (`Client.ls`)."""
    pending = [(root, "")]
    while pending:
        remote_dir, relative = pending.pop()
        if len(remote_dir.encode()) > MAX_PATH_BYTES:
            raise ProtocolMismatchError(f"{remote_dir[:80]}...: remote tree deeper than any valid path")
        entries = client.ls(remote_dir, md5=md5)
        yield remote_dir, relative, entries
        for entry in reversed(entries):
            if entry.type == "dir":
                pending.append((remote_join(remote_dir, entry.name), posixpath.join(relative, entry.name)))


# -- running -------------------------------------------------------------------

PIPELINE_RUN = 64  # small files a worker takes at once when its server offers `eager`
LIST_AT_LEAST = 16  # a remote folder's small files in a batch from which one listing beats a stat each
LISTING_FRESH = 2.0  # seconds a listing decides skips for; then the folder is listed again
CLEAN_UP_WAIT = 0.5  # seconds an interrupted batch gives its workers, in all, before it goes


def _identical(job: Job, entry: Entry, note: str) -> Outcome:
    """A file both sides hold already, seen by a pipelined stat: skipped, nothing sent."""
    transfer = Transfer(job.remote, str(job.local), entry.size, entry.md5 or "", 0, 0.0, skipped=True)
    return Outcome(job, "skipped", transfer, note=note)


class _Crew:
    """The workers of one run: which of them got a connection, and the queue they share.

    A worker that the server turns away as `busy` while others are connected hands its
    job back and stops, so the batch settles at as many connections as the server lets
    it have; taking the last job and leaving happen under one lock, so a handed-back job
    always finds a worker still there to take it."""

    def __init__(self, jobs: list[Job]) -> None:
        self.todo: queue.SimpleQueue[Job] = queue.SimpleQueue()
        for job in jobs:
            self.todo.put(job)
        self.connected = 0
        self.lock = threading.Lock()

    def take(self, joined: bool) -> Job | None:
        """The next job; None when there is none, and then a `joined` worker has left."""
        with self.lock:
            try:
                return self.todo.get_nowait()
            except queue.Empty:
                if joined:
                    self.connected -= 1
                return None

    def join(self) -> None:
        with self.lock:
            self.connected += 1

    def take_more(self, count: int) -> list[Job]:
        """Up to `count` more jobs, without waiting."""
        taken: list[Job] = []
        with self.lock:
            while len(taken) < count:
                try:
                    taken.append(self.todo.get_nowait())
                except queue.Empty:
                    break
        return taken

    def hand_back(self, job: Job) -> bool:
        """Give `job` back to the connected workers, if there are any; True if taken."""
        with self.lock:
            if self.connected == 0:
                return False
            self.todo.put(job)
            return True


class _Worker:
    """One worker thread's connection, and whether it ever got one."""

    def __init__(self, connection: Connection, joined: bool = False) -> None:
        self.connection, self.joined = connection, joined


@dataclass
class Batch:
    """Runs jobs over `workers` connections made by `connect()`.

    `on_progress(job, done, total)` and `on_outcome(outcome)` are called from
    worker threads (`on_outcome` one at a time); an exception either raises stops
    the batch and is raised again by `run()`. `limit_rate` caps the whole batch in
    bytes per second; `dry_run` only says what each job would do; `preserve` keeps
    modification times and execute bits (the attributes extension). A server that
    answers `busy` to more connections leaves the batch with fewer; with none at all,
    each worker tries again `BUSY_RETRIES` times, backing off.
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
    preserve: bool = False
    on_progress: Callable[[Job, int, int], object] | None = None
    on_outcome: Callable[[Outcome], object] | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _report_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _aborted: threading.Event = field(default_factory=threading.Event, repr=False)
    _error: BaseException | None = field(default=None, repr=False)
    _temps: TempFiles = field(default_factory=TempFiles, repr=False)  # pipelined downloads' hidden files
    # Remote folders: their type (None: missing), the small files the batch puts in
    # each, and their listings with MD5s (ls-md5) with when they were taken.
    _folders: dict[str, str | None] = field(default_factory=dict, repr=False)
    _names: dict[str, set[str]] = field(default_factory=dict, repr=False)
    _listings: dict[str, tuple[float, dict[str, Entry]]] = field(default_factory=dict, repr=False)

    def run(self, jobs: list[Job], first_client: Client | None = None) -> Summary:
        """Run every job; `first_client`, if given, is used by the first worker."""
        summary = Summary()
        started = time.monotonic()
        self._folders.clear()  # what another run saw is no hint for this one
        self._listings.clear()
        self._names.clear()
        for job in jobs:
            if job.op == "put" and self._pipelinable(job):
                folder, name = posixpath.split(job.remote)
                self._names.setdefault(folder, set()).add(name)
        pace = RateLimiter(self.limit_rate) if self.limit_rate else None
        crew = _Crew(jobs)
        count = max(1, min(self.workers, len(jobs)))
        if first_client is not None and "eager" in first_client.features:
            # Pipelining keeps one connection full; small files spread over more only
            # contend for the server's filesystem and interpreter (2,000 x 8 KiB put:
            # about 1,200 files/s over one connection, 700 over four): the other
            # workers are for the files that go the v1 way.
            count = min(count, 1 + sum(1 for job in jobs if not self._pipelinable(job)))
        workers = [
            _Worker(
                Connection(self.connect, pace=pace, client=first_client if i == 0 else None, busy_retries=0),
                joined=i == 0 and first_client is not None,
            )
            for i in range(count)
        ]
        for worker in workers:
            if worker.joined:
                crew.join()
        threads = [
            threading.Thread(target=self._work, args=(crew, summary, worker), daemon=True)
            for worker in workers
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)  # in slices, so Ctrl-C is seen at once
                    if self._error is not None:
                        raise self._error
        except BaseException:
            self._aborted.set()  # what fails from here on is the cut's doing: not reported
            self._stop.set()
            for worker in workers:
                worker.connection.drop()  # unblocks a worker in the middle of a transfer
            settle_by = time.monotonic() + CLEAN_UP_WAIT  # a moment for them to clean up, not more:
            for thread in threads:  # a worker blocked in a transfer dies with the process
                thread.join(max(0.0, settle_by - time.monotonic()))
            self._temps.remove_all()  # pipelined downloads not yet committed are not kept
            raise
        if self._error is not None:
            raise self._error
        summary.seconds = time.monotonic() - started
        return summary

    def _work(self, crew: _Crew, summary: Summary, worker: _Worker) -> None:
        try:
            while not self._stop.is_set():
                job = crew.take(worker.joined)
                if job is None:
                    return
                if self._pipelinable(job) and self._eager(worker):
                    run = [job, *crew.take_more(PIPELINE_RUN - 1)]
                    one_by_one = [j for j in run if not self._pipelinable(j)]
                    small = [j for j in run if self._pipelinable(j)]
                    for piped in self._pipelined(small, worker):
                        if not self._report(piped, summary):
                            return
                else:
                    one_by_one = [job]
                for each in one_by_one:
                    outcome = self._attempts(each, worker, crew)
                    if outcome is None or self._aborted.is_set():
                        return  # handed its job to the connected workers (a busy server), or cut off
                    if not self._report(outcome, summary):
                        return
        except BaseException as exc:  # a callback's (a closed stdout): the caller's to handle
            if self._error is None:
                self._error = exc
            self._stop.set()
        finally:
            worker.connection.close()

    def _report(self, outcome: Outcome, summary: Summary) -> bool:
        """Count and report one outcome; False once the batch must stop."""
        if self._aborted.is_set():
            return False
        with self._report_lock:
            summary.add(outcome)
            if self.on_outcome is not None:
                self.on_outcome(outcome)
        if outcome.result == "failed" and self.fail_fast:
            self._stop.set()
        return not self._stop.is_set()

    def _pipelinable(self, job: Job) -> bool:
        return (
            not self.dry_run
            and not self.limit_rate  # a paced batch wants its bandwidth kept low, not round trips saved
            and not job.skip
            and job.op in ("put", "get")
            and job.size is not None
            and job.size <= EAGER_PUT_MAX
        )

    @staticmethod
    def _eager(worker: _Worker) -> bool:
        """Whether the worker is connected to a server that offers `eager` (the first job
        of a worker goes the v1 way and connects it)."""
        return not worker.connection.closed and "eager" in worker.connection.client.features

    def _pipelined(self, jobs: list[Job], worker: _Worker) -> list[Outcome]:
        """Small files over the worker's connection, pipelined. A job left without an
        outcome by a dropped connection goes the v1 way, with its retries."""
        outcomes: dict[int, Outcome] = {}
        client = worker.connection.client
        try:
            puts = [(i, job) for i, job in enumerate(jobs) if job.op == "put"]
            gets = [(i, job) for i, job in enumerate(jobs) if job.op == "get"]
            self._pipelined_puts(client, puts, outcomes)
            self._pipelined_gets(client, gets, outcomes)
        except CLIENT_ERRORS:
            if self._stop.is_set():
                raise
            worker.connection.drop()
        result = []
        for index, job in enumerate(jobs):
            outcome = outcomes.get(index) or self._attempts(job, worker, _Crew([]))
            result.append(outcome or Outcome(job, "failed", error=ConnectionError("no connection left")))
        return result

    def _finished(self, job: Job, result: Transfer | BaseException) -> Outcome:
        if isinstance(result, Transfer):
            if self.on_progress is not None:
                self.on_progress(job, result.size, result.size)
            return Outcome(job, "ok", result, note="linked" if result.linked else "")
        if isinstance(result, ExistsError):
            return Outcome(job, "skipped", note="exists")
        return Outcome(job, "failed", error=result)

    def _pipelined_puts(
        self, client: Client, puts: list[tuple[int, Job]], outcomes: dict[int, Outcome]
    ) -> None:
        """Skip what the server holds already (pipelined stats, the local MD5), send the rest.
        A file whose remote folder is missing needs no stat: only the folder is asked about,
        once per batch (a fresh tree costs a stat per folder, not per file). A folder that
        gets many of the batch's files is listed once, with MD5s (`ls-md5`): only a file
        listed with its size but without its MD5 is still asked about."""
        send: list[tuple[int, Job]] = []
        folders = self._folder_types(client, [job.remote for _, job in puts])
        missing = {folder for folder, kind in folders.items() if kind is None}
        listed = self._listed_folders(client, {folder for folder, kind in folders.items() if kind == "dir"})
        found: dict[int, Entry | ProtocolError | None] = {}
        asked: list[tuple[int, Job]] = []
        for index, job in puts:
            folder, name = posixpath.split(job.remote)
            if folder in missing:
                continue
            entry = listed[folder].get(name) if folder in listed else None
            if folder in listed and (entry is None or entry.size != job.size or entry.md5 is not None):
                found[index] = entry  # the listing says all there is to know
            else:
                asked.append((index, job))
        answers = stat_pipelined(client, [job.remote for _, job in asked])
        found.update((index, there) for (index, _), there in zip(asked, answers, strict=True))
        for index, job in puts:
            there = found.get(index)
            if isinstance(there, Entry) and there.type == "file":
                if there.size == job.size and there.md5 == md5_file(job.local):
                    if self.preserve and abs(there.mtime - job.local.stat().st_mtime_ns / 1e9) >= 1e-3:
                        continue  # only its time to set: the v1 way does that without sending a byte
                    outcomes[index] = _identical(job, there, "identical")
                    continue
                if self.no_clobber:
                    outcomes[index] = Outcome(job, "skipped", note="exists")
                    continue
            send.append((index, job))

        def done(position: int, result: Transfer | BaseException) -> None:
            index, job = send[position]
            outcomes[index] = self._finished(job, result)

        put_pipelined(
            client,
            [(job.local, job.remote) for _, job in send],
            done,
            overwrite=not self.no_clobber,
            parents=self.parents,
            preserve=self.preserve,
        )

    def _listed_folders(self, client: Client, folders: set[str]) -> dict[str, dict[str, Entry]]:
        """The listings (with MD5s, from a server that offers `ls-md5`) of the directories
        that get at least `LIST_AT_LEAST` of the batch's small files; only the entries of the
        batch's own names are kept. A listing decides skips for `LISTING_FRESH` seconds, as a
        `stat` decides them for one run: then the folder is listed again."""
        if "ls-md5" not in client.features:
            return {}
        wanted = {folder for folder in folders if len(self._names.get(folder, ())) >= LIST_AT_LEAST}
        now = time.monotonic()
        listed = {}
        for folder in sorted(wanted):
            taken, entries = self._listings.get(folder, (-LISTING_FRESH, {}))
            if now - taken >= LISTING_FRESH:
                try:
                    found = client.ls(folder, md5=True)
                except ProtocolError as exc:
                    if exc.closes:
                        raise
                    continue  # gone meanwhile: each file is asked about
                names = self._names[folder]
                entries = {entry.name: entry for entry in found if entry.name in names}
                self._listings[folder] = (now, entries)
            listed[folder] = entries
        return listed

    def _folder_types(self, client: Client, remotes: list[str]) -> dict[str, str | None]:
        """The type (`dir`, `file`; None: not there) of each remote folder of `remotes`, as
        first asked in this batch. Only a hint: the server still checks every put against
        what is there (a file that appears meanwhile is replaced, or kept with `no_clobber`)."""
        folders = sorted({posixpath.dirname(remote) for remote in remotes})
        unknown = [folder for folder in folders if folder not in self._folders]
        for folder, there in zip(unknown, stat_pipelined(client, unknown), strict=True):
            if isinstance(there, Entry):
                self._folders[folder] = there.type
            elif there.code == "not_found":
                self._folders[folder] = None
            else:  # not a directory above it, no access...: each file is asked about
                self._folders[folder] = "unknown"
        return {folder: self._folders[folder] for folder in folders}

    def _pipelined_gets(
        self, client: Client, gets: list[tuple[int, Job]], outcomes: dict[int, Outcome]
    ) -> None:
        """Skip the local files that are identical already, fetch the rest."""
        there: list[tuple[int, Job]] = []
        fetch: list[tuple[int, Job]] = []
        for index, job in gets:
            (there if os.path.lexists(job.local) else fetch).append((index, job))
        if there and self.no_clobber:
            for index, job in there:
                outcomes[index] = Outcome(job, "skipped", note="exists")
        elif there:
            entries = stat_pipelined(client, [job.remote for _, job in there])
            for (index, job), entry in zip(there, entries, strict=True):
                if (
                    isinstance(entry, Entry)
                    and entry.size == _size(job.local)
                    and entry.md5 == md5_file(job.local)
                ):
                    if self.preserve and entry.mode is not None:  # as a v1 get with -p does
                        set_attributes(job.local, {"mtime": entry.mtime, "mode": entry.mode})
                    note = f"identical{ATTRIBUTES_SET if self.preserve else ''}"
                    outcomes[index] = _identical(job, entry, note)
                else:
                    fetch.append((index, job))

        def done(position: int, result: Transfer | BaseException) -> None:
            index, job = fetch[position]
            outcomes[index] = self._finished(job, result)

        get_pipelined(
            client,
            [(job.remote, job.local) for _, job in fetch],
            done,
            preserve=self.preserve,
            replace=True,
            temps=self._temps,
        )

    def _attempts(self, job: Job, worker: _Worker, crew: _Crew) -> Outcome | None:
        attempt, busy = 1, 0
        while True:
            try:
                client = worker.connection.client
            except CLIENT_ERRORS as exc:
                if self._stop.is_set():
                    return Outcome(job, "failed", error=exc, attempts=attempt)
                if is_busy(exc):
                    if not worker.joined and crew.hand_back(job):
                        return None
                    if busy >= BUSY_RETRIES:
                        return Outcome(job, "failed", error=exc, attempts=attempt)
                    time.sleep(backoff(busy, self.backoff))
                    busy += 1
                    continue
                if not is_retryable(exc) or attempt > self.retries:
                    return Outcome(job, "failed", error=exc, attempts=attempt)
                time.sleep(backoff(attempt - 1, self.backoff))
                attempt += 1
                continue
            if not worker.joined:
                worker.joined = True
                crew.join()
            try:
                return self._do(job, client, attempt)
            except ExistsError:
                return Outcome(job, "skipped", note="exists", attempts=attempt)
            except CLIENT_ERRORS as exc:
                if not is_retryable(exc) or attempt > self.retries or self._stop.is_set():
                    return Outcome(job, "failed", error=exc, attempts=attempt)
                worker.connection.drop()
                time.sleep(backoff(attempt - 1, self.backoff))
                attempt += 1

    def _do(self, job: Job, client: Client, attempt: int) -> Outcome:
        if job.skip:
            return Outcome(job, "skipped", note=job.skip, attempts=attempt)
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
                job.local,
                job.remote,
                overwrite=not self.no_clobber,
                parents=self.parents,
                progress=progress,
                preserve=self.preserve,
                tell_linked=True,
            )
        else:
            if self.no_clobber and job.local.exists():
                return Outcome(job, "skipped", note="exists", attempts=attempt)
            job.local.parent.mkdir(parents=True, exist_ok=True)
            transfer = client.get(job.remote, job.local, progress=progress, preserve=self.preserve)
        if transfer.skipped:
            note = f"identical{ATTRIBUTES_SET if self.preserve else ''}"
            return Outcome(job, "skipped", transfer, note=note, attempts=attempt)
        if transfer.linked:
            return Outcome(job, "ok", transfer, note="linked", attempts=attempt)
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
