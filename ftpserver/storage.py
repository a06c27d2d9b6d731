"""The only module that touches the storage root.

`Storage` maps a client's virtual path to a real path inside the user's home
(refusing anything that leaves it, symlinks included), lists and stats, opens
consistent snapshots for `get`, and runs uploads atomically: bytes go to a
hidden partial file in the destination directory, are hashed as they arrive,
fsynced, checked against the announced MD5 and only then renamed over the
target. A partial file is named after (name, size, md5), so the same `put`
after a dropped connection finds it and resumes; names starting with
`.sockftp` are never listed, served or accepted from a client.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat as stat_mod
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ftpproto import (
    ChecksumMismatchError,
    ExistsError,
    ForbiddenError,
    InternalError,
    IsDirectoryError,
    NotDirectoryError,
    NotEmptyError,
    NotFoundError,
    ProtocolError,
    QuotaExceededError,
    TooLargeError,
    join_path,
    split_path,
)
from ftpproto.checksum import BackgroundMD5, md5_of, new_md5
from ftpproto.paths import RESERVED_PREFIX
from ftpproto.writeback import Writeback

from .checksums import ChecksumCache
from .config import Account

__all__ = [
    "Snapshot",
    "Storage",
    "Upload",
]

PARTIAL_PREFIX = RESERVED_PREFIX + ".part."  # resumable: named after (name, size, md5)
TEMP_PREFIX = RESERVED_PREFIX + ".tmp."  # private to one upload, never resumed
CLAIM_WAIT = 5.0  # seconds a put waits for another session to release its partial file
METADATA_DIR = RESERVED_PREFIX  # the server's own folder at the top of the storage root

_ERRNO_ERRORS: dict[int, tuple[type[ProtocolError], str]] = {
    errno.ENOENT: (NotFoundError, "no such file or directory"),
    errno.ENOTDIR: (NotDirectoryError, "a component of the path is not a directory"),
    errno.EISDIR: (IsDirectoryError, "is a directory"),
    errno.EEXIST: (ExistsError, "already exists"),
    errno.ENOTEMPTY: (NotEmptyError, "directory is not empty"),
    errno.EACCES: (ForbiddenError, "permission denied by the server's filesystem"),
    errno.EPERM: (ForbiddenError, "permission denied by the server's filesystem"),
    errno.ENOSPC: (QuotaExceededError, "the server's disk is full"),
    errno.EDQUOT: (QuotaExceededError, "the server's disk quota is exhausted"),
    errno.EFBIG: (TooLargeError, "the file is larger than the server can store"),
    errno.ENAMETOOLONG: (ForbiddenError, "name too long for the server's filesystem"),
}


@contextlib.contextmanager
def os_errors(path: str) -> Iterator[None]:
    """Turn an `OSError` into the protocol error it means, naming only the virtual path."""
    try:
        yield
    except OSError as exc:
        cls, text = _ERRNO_ERRORS.get(exc.errno, (InternalError, "storage error"))
        raise cls(f"{path}: {text}") from exc


def _valid_utf8(name: str) -> bool:
    """False for a name made outside sockftp that is not UTF-8: no client could name it."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _entry(name: str, st: os.stat_result) -> dict:
    is_dir = stat_mod.S_ISDIR(st.st_mode)
    return {
        "name": name,
        "type": "dir" if is_dir else "file",
        "size": 0 if is_dir else st.st_size,
        "mtime": st.st_mtime,
    }


@dataclass
class Snapshot:
    """A file opened for `get`: the bytes of this open file never change under us,
    because uploads replace files by rename and never write in place."""

    file: BinaryIO
    size: int
    md5: str

    def close(self) -> None:
        self.file.close()

    def close_md5(self) -> str:
        """Close the file and return its md5 (when only the checksum was wanted)."""
        self.close()
        return self.md5


@dataclass
class Upload:
    """One `put` in progress. `offset` bytes are already held; feed the rest to
    `write()`, then `finish()` (verify, fsync, rename) or `abort()` (keep for resume).

    `partial` is where the bytes are: a partial file, an instant-upload link, or
    `dest` itself when the destination already holds exactly this file.
    `release` gives back the partial file's claim and the quota reservation.
    """

    path: str
    dest: Path
    partial: Path
    size: int
    md5: str
    offset: int
    overwrite: bool
    checksums: ChecksumCache = field(repr=False)
    release: Callable[[], None] = field(repr=False)
    file: BinaryIO | None = field(default=None, repr=False)  # open while bytes are to come
    digest: BackgroundMD5 = field(default_factory=lambda: BackgroundMD5(threaded=False), repr=False)
    error: ProtocolError | None = field(default=None, repr=False)
    writeback: Writeback | None = field(default=None, repr=False)

    def write(self, chunk: memoryview) -> None:
        """Store one chunk. After a write error the rest of the data phase is
        only drained, so the connection stays in step; `finish()` reports it."""
        if self.error is not None:
            return
        try:
            with os_errors(self.path):
                self.file.write(chunk)
                self.writeback.wrote(len(chunk))
        except ProtocolError as exc:
            self.error = exc
            return
        self.digest.update(chunk)

    def finish(self) -> None:
        """Verify and make the file visible under its name (PROTOCOL.md 5.4)."""
        try:
            if self.file is not None:
                self._verify_received()
            if self.partial != self.dest:
                self._move_into_place()
        finally:
            self.digest.close()
            self._release()

    def _verify_received(self) -> None:
        if self.error is not None:
            self.partial.unlink(missing_ok=True)
            raise self.error
        with os_errors(self.path):
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        if self.digest.hexdigest() != self.md5:
            self.partial.unlink(missing_ok=True)
            raise ChecksumMismatchError(f"{self.path}: received data does not match the announced md5")

    def _move_into_place(self) -> None:
        with os_errors(self.path):
            # A rename keeps inode, size and mtime: this stat is what lands under `dest`,
            # even if another upload replaces `dest` a moment later.
            st = self.partial.stat()
            if self.overwrite:
                os.replace(self.partial, self.dest)
            else:  # link, unlike rename, fails if a file appeared there since the checks
                os.link(self.partial, self.dest)
                self.partial.unlink()
            _fsync_dir(self.dest.parent)
        self.checksums.record(self.dest, st, self.md5)

    def abort(self) -> None:
        """Stop without renaming: the partial file stays for a later resume."""
        self.digest.close()
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
        self._release()

    def _release(self) -> None:
        release, self.release = self.release, _nothing
        release()


def _nothing() -> None:
    pass


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def release() -> None:
        first()
        second()

    return release


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Storage:
    """File operations for accounts whose homes lie under `root`."""

    def __init__(self, root: Path, max_file_size: int | None = None) -> None:
        self.root = root.resolve()
        self.max_file_size = max_file_size
        self.checksums = ChecksumCache(self.root / METADATA_DIR / "checksums.sqlite")
        self._uploads_lock = threading.Lock()
        self._upload_released = threading.Condition(self._uploads_lock)
        self._reserved: dict[Path, int] = {}  # quota bytes held by uploads in progress, per home
        self.claim_wait = CLAIM_WAIT
        self._uploads_running: set[Path] = set()

    @property
    def uploads_running(self) -> int:
        """How many uploads hold a partial file open right now."""
        with self._uploads_lock:
            return len(self._uploads_running)

    # -- paths -----------------------------------------------------------------

    def ensure_home(self, account: Account) -> None:
        account.home.mkdir(parents=True, exist_ok=True)

    def resolve(self, account: Account, path: str, follow: bool = True) -> tuple[str, Path]:
        """Return (canonical virtual path, real path) for `path` in `account`'s home.

        With `follow=False` the last component is not resolved, so a symlink
        names itself (for `rm`). Raises `ForbiddenError` if the path leaves the home.
        """
        parts = split_path(path)
        home = account.home
        if not parts:
            return "/", home
        parent = Path(os.path.realpath(home.joinpath(*parts[:-1])))
        real = parent / parts[-1]
        if follow:
            real = Path(os.path.realpath(real))
        if not self._inside(home, real if follow else parent):
            raise ForbiddenError(f"{join_path(parts)}: path leads outside the home directory")
        return join_path(parts), real

    @staticmethod
    def _inside(home: Path, real: Path) -> bool:
        return real == home or home in real.parents

    # -- reading ---------------------------------------------------------------

    def list(self, account: Account, path: str) -> tuple[str, list[dict]]:
        vpath, real = self.resolve(account, path)
        with os_errors(vpath):
            if not real.is_dir():
                st = real.stat()
                if not stat_mod.S_ISREG(st.st_mode):
                    raise ForbiddenError(f"{vpath}: not a regular file")
                return vpath, [_entry(vpath.rsplit("/", 1)[-1], st)]
            names = sorted(os.listdir(real))
        entries = []
        for name in names:
            if name.startswith(RESERVED_PREFIX) or not _valid_utf8(name):
                continue
            target = Path(os.path.realpath(real / name))
            if not self._inside(account.home, target):
                continue  # a symlink out of the home is not the user's to see
            try:
                st = target.stat()
            except OSError:
                continue  # vanished meanwhile, or a dangling link
            if stat_mod.S_ISDIR(st.st_mode) or stat_mod.S_ISREG(st.st_mode):
                entries.append(_entry(name, st))
        return vpath, entries

    def stat(self, account: Account, path: str) -> dict:
        vpath, real = self.resolve(account, path)
        name = vpath.rsplit("/", 1)[-1]  # the name asked for, also when it is a symlink
        with os_errors(vpath):
            if real.is_dir():
                return _entry(name, real.stat())
        snapshot = self._open_regular(vpath, real)
        with snapshot.file:
            return {**_entry(name, os.fstat(snapshot.file.fileno())), "md5": snapshot.md5}

    def open_snapshot(self, account: Account, path: str) -> Snapshot:
        vpath, real = self.resolve(account, path)
        return self._open_regular(vpath, real)

    def _open_regular(self, vpath: str, real: Path) -> Snapshot:
        """Open a regular file and find its MD5, remembered or hashed now.

        The open is non-blocking, so a FIFO or device planted in the storage
        root cannot hang the session."""
        with os_errors(vpath):
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK)
            file = os.fdopen(fd, "rb")
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                raise IsDirectoryError(f"{vpath}: is a directory")
            if not stat_mod.S_ISREG(st.st_mode):
                raise ForbiddenError(f"{vpath}: not a regular file")
            md5 = self.checksums.lookup(real, st)
            if md5 is None:
                with os_errors(vpath):
                    md5 = md5_of(file).hexdigest()
                self.checksums.record(real, st, md5)
            return Snapshot(file, st.st_size, md5)
        except BaseException:
            file.close()
            raise

    # -- writing ---------------------------------------------------------------

    def begin_upload(
        self, account: Account, path: str, size: int, md5: str, overwrite: bool, parents: bool
    ) -> Upload:
        """Check everything a `put` needs before any data flows, then set up where the
        bytes go. Nothing is created on disk until every check has passed."""
        vpath, dest = self.resolve(account, path)
        if vpath == "/":
            raise IsDirectoryError("/: is a directory")
        if self.max_file_size is not None and size > self.max_file_size:
            raise TooLargeError(f"{vpath}: {size} bytes exceeds the limit of {self.max_file_size}")
        create_parent = self._check_parent(vpath, dest.parent, parents)
        existing, identical = (
            (None, False) if create_parent else self._existing(vpath, dest, size, md5, overwrite)
        )
        if identical:
            return Upload(vpath, dest, dest, size, md5, size, overwrite, self.checksums, _nothing)
        growth = size - (existing.st_size if existing else 0)
        if create_parent:
            self._reserve(account, vpath, growth)()  # a check only: nothing is written yet
            with os_errors(vpath):
                dest.parent.mkdir(parents=True, exist_ok=True)
        copy = self._instant_copy(account, vpath, dest, size, md5, growth)
        if copy is not None:
            return copy
        return self._resumable(account, vpath, dest, size, md5, overwrite, growth)

    def _existing(
        self, vpath: str, dest: Path, size: int, md5: str, overwrite: bool
    ) -> tuple[os.stat_result | None, bool]:
        """The destination's stat (None if absent), and whether it holds this very file."""
        with os_errors(vpath):
            if not dest.exists():
                return None, False
            existing = dest.stat()
        if stat_mod.S_ISDIR(existing.st_mode):
            raise IsDirectoryError(f"{vpath}: is a directory")
        if existing.st_size == size and self._open_regular(vpath, dest).close_md5() == md5:
            return existing, True
        if not overwrite:
            raise ExistsError(f"{vpath}: already exists")
        return existing, False

    def _resumable(
        self, account: Account, vpath: str, dest: Path, size: int, md5: str, overwrite: bool, growth: int
    ) -> Upload:
        """An upload into the partial file named after (name, size, md5), resuming what it holds."""
        partial, unclaim = self._claim_partial(dest, size, md5)
        unreserve = _nothing
        file = None
        try:
            with os_errors(vpath):
                held = partial.stat().st_size if partial.exists() else 0
                if held > size:
                    held = 0
                unreserve = self._reserve(account, vpath, growth - held)
                file = open(partial, "r+b" if held else "wb")  # noqa: SIM115 - owned by Upload
                file.truncate(held)
                digest = new_md5(size - held, md5_of(file, held))
                file.seek(held)
        except BaseException:
            if file is not None:
                file.close()
            unreserve()
            unclaim()
            raise
        return Upload(
            vpath, dest, partial, size, md5, held, overwrite, self.checksums,
            _both(unreserve, unclaim), file, digest, writeback=Writeback(file, held),
        )  # fmt: skip

    def _instant_copy(
        self, account: Account, vpath: str, dest: Path, size: int, md5: str, growth: int
    ) -> Upload | None:
        """Instant upload: if this user's home already holds a file with this size and
        MD5, link (or copy) it to a temp file beside `dest`; the upload then needs no
        byte from the network and `finish()` renames it into place.

        A hard link is safe because stored files are only ever replaced by rename,
        never written in place. Only files inside the user's own home are candidates,
        so an upload never reveals what other users store."""
        for source in self._unchanged(self.checksums.find(md5, size, account.home), md5):
            unreserve = self._reserve(account, vpath, growth)
            temp, unclaim = self._claim_temp(dest)
            try:
                with os_errors(vpath):
                    if self._link_or_copy(source, temp, md5):
                        return Upload(
                            vpath,
                            dest,
                            temp,
                            size,
                            md5,
                            size,
                            True,
                            self.checksums,
                            _both(unreserve, unclaim),
                        )
            except BaseException:
                unreserve()
                unclaim()
                raise
            unreserve()
            unclaim()  # the source changed or vanished meanwhile: try the next
        return None

    def _unchanged(self, paths: list[Path], md5: str) -> Iterator[Path]:
        """Those of `paths` that still hold the bytes their remembered `md5` was of."""
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                continue
            if stat_mod.S_ISREG(st.st_mode) and self.checksums.lookup(path, st) == md5:
                yield path

    def _link_or_copy(self, source: Path, temp: Path, md5: str) -> bool:
        """Put `source`'s bytes at `temp`; True if they still have `md5`."""
        try:
            os.link(source, temp)
            return self.checksums.lookup(source, temp.stat()) == md5
        except FileNotFoundError:
            return False
        except OSError:  # another filesystem, or links not allowed
            try:
                shutil.copyfile(source, temp)
            except FileNotFoundError:
                return False
            _fsync_file(temp)
            with open(temp, "rb") as copy:
                return md5_of(copy).hexdigest() == md5

    def _check_parent(self, vpath: str, parent: Path, parents: bool) -> bool:
        """Raise if `parent` cannot hold the target; True if it must be created first."""
        with os_errors(vpath):
            if parent.is_dir():
                return False
            if any(p.exists() and not p.is_dir() for p in (parent, *parent.parents)):
                raise NotDirectoryError(f"{vpath}: a component of the path is not a directory")
        if not parents:
            raise NotFoundError(f"{vpath}: parent directory does not exist")
        return True

    def _claim_partial(self, dest: Path, size: int, md5: str) -> tuple[Path, Callable[[], None]]:
        """Return the resumable partial file for this upload and a function releasing it.

        Two sessions uploading the same file at once must not share a partial
        file. A retry often arrives while the session of the broken attempt is
        still draining its socket, so wait a little for it to let go; after
        that the newcomer gets a private, non-resumable file instead.
        """
        key = hashlib.sha256(f"{dest.name}\0{size}\0{md5}".encode()).hexdigest()[:32]
        partial = dest.parent / f"{PARTIAL_PREFIX}{key}"
        with self._uploads_lock:
            if self._upload_released.wait_for(lambda: partial not in self._uploads_running, self.claim_wait):
                self._uploads_running.add(partial)
                return partial, self._unclaimer(partial)
        return self._claim_temp(dest)

    def _claim_temp(self, dest: Path) -> tuple[Path, Callable[[], None]]:
        """A private temp file beside `dest`, safe from the cleaner and `rm` while claimed."""
        temp = dest.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        with self._uploads_lock:
            self._uploads_running.add(temp)
        return temp, self._unclaimer(temp)

    def _unclaimer(self, path: Path) -> Callable[[], None]:
        def release() -> None:
            with self._uploads_lock:
                self._uploads_running.discard(path)
                self._upload_released.notify_all()
            if path.name.startswith(TEMP_PREFIX):
                path.unlink(missing_ok=True)  # private: never resumed

        return release

    def _reserve(self, account: Account, vpath: str, growth: int) -> Callable[[], None]:
        """Check `growth` more bytes against the quota and hold them until the returned
        function is called, so uploads running at once cannot pass the quota together."""
        if account.quota is None or growth <= 0:
            return _nothing
        used = self.usage(account.home)
        with self._uploads_lock:
            reserved = self._reserved.get(account.home, 0)
            if used + reserved + growth > account.quota:
                raise QuotaExceededError(
                    f"{vpath}: needs {growth} more bytes; {used + reserved} of {account.quota} bytes are in use"
                )
            self._reserved[account.home] = reserved + growth

        def unreserve() -> None:
            with self._uploads_lock:
                self._reserved[account.home] -= growth

        return unreserve

    def remove_stale_partials(self, max_age: float) -> int:
        """Delete partial uploads untouched for `max_age` seconds and not in use; return how many."""
        cutoff = time.time() - max_age
        removed = 0
        for directory, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if d != METADATA_DIR]
            for name in files:
                if not name.startswith((PARTIAL_PREFIX, TEMP_PREFIX)):
                    continue
                path = Path(directory, name)
                with self._uploads_lock:
                    if path in self._uploads_running:
                        continue
                    with contextlib.suppress(OSError):
                        if path.stat().st_mtime < cutoff:
                            path.unlink()
                            removed += 1
        return removed

    @staticmethod
    def usage(home: Path) -> int:
        """Bytes stored under `home`, partial uploads included."""
        total = 0
        stack = [home]
        while stack:
            with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name == METADATA_DIR:
                            continue
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        return total

    def mkdir(self, account: Account, path: str, parents: bool) -> None:
        vpath, real = self.resolve(account, path)
        if real.is_dir():
            if parents:
                return
            raise ExistsError(f"{vpath}: already exists")
        if real.exists():
            raise ExistsError(f"{vpath}: already exists")
        self._check_parent(vpath, real.parent, parents)
        with os_errors(vpath):
            real.mkdir(parents=parents)

    def remove(self, account: Account, path: str) -> None:
        vpath, real = self.resolve(account, path, follow=False)
        if vpath == "/":
            raise ForbiddenError("/: the home directory cannot be removed")
        with os_errors(vpath):
            st = real.lstat()
            if not stat_mod.S_ISDIR(st.st_mode):
                real.unlink()
                self.checksums.forget(real)
                return
            names = os.listdir(real)
            if any(not name.startswith(RESERVED_PREFIX) for name in names):
                raise NotEmptyError(f"{vpath}: directory is not empty")
            with self._uploads_lock:
                if any(partial.parent == real for partial in self._uploads_running):
                    raise NotEmptyError(f"{vpath}: an upload into it is in progress")
            for name in names:  # only abandoned partial uploads are left
                (real / name).unlink()
            real.rmdir()
