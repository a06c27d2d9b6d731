"""The local backend: homes are directories below one storage root on this machine.

Every operation opens the account's home from the root's descriptor and
walks the client's path from there with `jail.walk()`; files are opened
relative to their directory's descriptor with `O_NOFOLLOW | O_NONBLOCK` and
checked with `fstat` before use, and rename, link, unlink and mkdir all take
that descriptor. Nothing resolves a path string and opens it again.

Uploads are atomic and resumable: bytes go to a hidden partial file in the
destination directory, named after (name, size, md5) so that the same `put`
after a dropped connection finds it, are hashed as they arrive, fsynced,
checked against the announced MD5 and only then renamed over the target.
Whatever sits at a partial name and is not a plain file of ours (a link, a
FIFO, a socket, a file with a second hard link) is removed, never opened.
Names starting with `.sockftp` are never listed, served or accepted from a
client; `.sockftp/` at the top of the root is the server's metadata folder.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import shutil
import stat as stat_mod
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
from ftpproto.io.hashing import BackgroundMD5, md5_of, new_md5
from ftpproto.io.turn import paused
from ftpproto.io.writeback import Writeback, on_local_disk, sync_filesystems
from ftpproto.paths import RESERVED_PREFIX

from ..config import Account, ConfigError
from .base import Snapshot, Upload, entry
from .checksums import ChecksumCache
from .jail import DIR_FLAGS, MAX_DEPTH, READ_FLAGS, Place, files_below, lstat_at, open_dir, open_home, walk
from .usage import Reservation, Usage

__all__ = ["LocalStorage", "LocalUpload"]

log = logging.getLogger("ftpserver.storage")

PARTIAL_PREFIX = RESERVED_PREFIX + ".part."  # resumable: named after (name, size, md5)
TEMP_PREFIX = RESERVED_PREFIX + ".tmp."  # private to one upload, never resumed
CLAIM_WAIT = 5.0  # seconds a put waits for another session to release its partial file
SYNC_THREADS = 8  # fsyncs of one group commit at once
METADATA_DIR = RESERVED_PREFIX  # the server's own folder at the top of the storage root
PATH_MAX = 4096  # a stored file's absolute path stays below this, so every tool can reach it
WRITE_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

_FORBIDDEN = "refused by the server's filesystem"
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
    errno.EOVERFLOW: (TooLargeError, "the file is larger than the server can store"),
    errno.ENAMETOOLONG: (ForbiddenError, "name too long for the server's filesystem"),
    errno.ELOOP: (ForbiddenError, "a symbolic link where the server follows none"),
    errno.ENXIO: (ForbiddenError, "not a regular file"),
    errno.EMLINK: (ForbiddenError, "too many links for the server's filesystem"),
    errno.EROFS: (ForbiddenError, "the server's filesystem is read-only"),
    errno.EBUSY: (ForbiddenError, "in use by the server's system"),
    errno.ETXTBSY: (ForbiddenError, "in use by the server's system"),
    errno.EXDEV: (ForbiddenError, _FORBIDDEN),
    errno.EINVAL: (ForbiddenError, _FORBIDDEN),
    errno.EILSEQ: (ForbiddenError, _FORBIDDEN),
    errno.EOPNOTSUPP: (ForbiddenError, _FORBIDDEN),
}


@contextlib.contextmanager
def os_errors(path: str) -> Iterator[None]:
    """Turn an `OSError` into the protocol error it means, naming only the virtual path."""
    try:
        yield
    except OSError as exc:
        cls, text = _ERRNO_ERRORS.get(exc.errno or 0, (InternalError, "storage error"))
        raise cls(f"{_short(path)}: {text}") from exc


def _short(path: str) -> str:
    return path if len(path) <= 200 else f"{path[:100]}...{path[-60:]}"


def _valid_utf8(name: str) -> bool:
    """False for a name made outside sockftp that is not UTF-8: no client could name it."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _fsync_dir(dir_fd: int) -> None:
    os.fsync(dir_fd)


_LIBC = ctypes.CDLL(None, use_errno=True)
_RENAMEAT2 = getattr(_LIBC, "renameat2", None)
RENAME_NOREPLACE = 1  # linux/fs.h


def _rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """Rename, failing with EEXIST if the new name is taken, atomically where the
    kernel and filesystem can (renameat2); elsewhere checked just before."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: no such flag on this filesystem
            raise OSError(err, os.strerror(err), dst)
    if lstat_at(dst_fd, dst) is not None:
        raise FileExistsError(errno.EEXIST, "already exists", dst)
    os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def _stored_mode(current: int, mode: int | None) -> int:
    """The permission bits a stored file keeps: the server's own read and write bits,
    plus execute wherever it has read, if the client's file was executable."""
    bits = stat_mod.S_IMODE(current) & 0o666
    if mode is not None and mode & 0o111:
        bits |= (bits & 0o444) >> 2
    return bits


def _attributes_match(st: os.stat_result, mtime: float | None, mode: int | None) -> bool:
    """Whether the file with stat `st` already has what a put asked for."""
    if mtime is not None and round(mtime * 1e9) != st.st_mtime_ns:
        return False
    return mode is None or _stored_mode(st.st_mode, mode) == stat_mod.S_IMODE(st.st_mode)


def _apply_attributes(fd: int, mtime: float | None, mode: int | None) -> None:
    """Give the open file the modification time and execute bits a put asked for."""
    if mtime is None and mode is None:
        return
    st = os.fstat(fd)
    if mode is not None and _stored_mode(st.st_mode, mode) != stat_mod.S_IMODE(st.st_mode):
        os.fchmod(fd, _stored_mode(st.st_mode, mode))
    if mtime is not None:
        os.utime(fd, ns=(st.st_atime_ns, round(mtime * 1e9)))


def _kind(mode: int) -> str:
    if stat_mod.S_ISLNK(mode):
        return "symbolic link"
    if stat_mod.S_ISFIFO(mode):
        return "FIFO"
    if stat_mod.S_ISSOCK(mode):
        return "socket"
    return "special file"


@dataclass(eq=False)
class LocalUpload:
    """One `put` into a directory of the local backend (see `Upload` in base.py).

    `temp` is where the bytes are: the resumable partial file, a private temp
    file (an instant-upload link, or a put that found its partial busy), or
    None when the destination already holds exactly this file. `held` bytes of
    it were already counted in the home's usage when the upload began."""

    storage: LocalStorage = field(repr=False)
    account: Account = field(repr=False)
    home: tuple[str, ...]
    place: Place
    path: str
    size: int
    md5: str
    overwrite: bool
    offset: int
    temp: str | None = None
    held: int = 0
    claim: tuple[int, int, str] | None = None
    reservation: Reservation = field(default_factory=lambda: Reservation(None, (), 0), repr=False)
    file: BinaryIO | None = field(default=None, repr=False)  # open while bytes are to come
    digest: BackgroundMD5 | None = field(default=None, repr=False)
    writeback: Writeback | None = field(default=None, repr=False)
    temp_stat: os.stat_result | None = field(default=None, repr=False)  # what lands under the name
    error: ProtocolError | None = field(default=None, repr=False)
    mtime: float | None = None  # the attributes extension: what the stored file gets
    mode: int | None = None
    touch: bool = False  # the destination holds these bytes already, but not these attributes

    def space(self) -> memoryview | None:
        return self.digest.space() if self.digest is not None else None

    def write(self, chunk: memoryview) -> None:
        if self.error is not None or self.file is None:
            return
        try:
            with os_errors(self.path):
                _write_all(self.file.fileno(), chunk)  # unbuffered: an error shows here, not later
                if self.writeback is not None:
                    self.writeback.wrote(len(chunk))
        except ProtocolError as exc:
            self.error = exc
            return
        if self.digest is not None:
            self.digest.update(chunk)

    def finish(self) -> None:
        try:
            self.seal()
            self.commit()
        finally:
            self.close()

    def seal(self) -> None:
        """Check what arrived (a write error, the MD5) and give it its attributes;
        nothing is durable or visible yet. Raises, keeping nothing, on a failure."""
        if self.temp is not None and self.file is not None and self.temp_stat is None:
            self._verify_received()

    def unsynced_fd(self) -> int:
        """The descriptor `sync()` would fsync, or -1: nothing of its own to sync."""
        if self.temp is not None and self.file is not None and self.temp_stat is None:
            return self.file.fileno()
        return -1

    def sync(self, flush: bool = True) -> None:
        """Make the sealed bytes durable; many uploads may sync at once (a group commit).
        `flush=False`: a `syncfs` of their filesystem made them durable already."""
        fd = self.unsynced_fd()
        if fd >= 0 and self.file is not None:
            try:
                with os_errors(self.path):
                    if flush:
                        os.fsync(fd)
                    # A rename keeps inode, size and mtime: this is what lands under the name.
                    self.temp_stat = os.fstat(fd)
                    self.file.close()
            except ProtocolError:
                self._discard()
                raise

    def publish(self) -> None:
        """Give the durable file its name; its directory still needs an fsync (`commit()`)."""
        if self.temp is None:
            if self.touch:
                self._touch()
            return  # the destination already holds this very file
        self._move_into_place()

    def commit(self) -> None:
        """Make the sealed upload durable and visible under its name."""
        self.sync()
        self.publish()
        if self.temp is not None:
            with os_errors(self.path):
                _fsync_dir(self.place.dir_fd)
            self.record()

    def record(self) -> None:
        """Remember the published file's MD5 (after its directory is durable)."""
        self.storage.checksums.record_many(self.checksum_rows())

    def checksum_rows(self) -> list[tuple[str, os.stat_result, str]]:
        """What `record()` remembers: nothing unless this upload published a file of its own."""
        if self.temp is not None and self.temp_stat is not None:
            return [(self.place.key, self.temp_stat, self.md5)]
        return []

    def abort(self) -> int:
        try:
            if self.file is not None and self.temp is not None and not self.temp.startswith(TEMP_PREFIX):
                return self._keep_for_resume()
            return 0
        finally:
            self.close()

    def _verify_received(self) -> None:
        assert self.file is not None and self.digest is not None
        if self.error is not None:
            self._discard()
            raise self.error
        try:
            with os_errors(self.path):
                _apply_attributes(self.file.fileno(), self.mtime, self.mode)
        except ProtocolError:
            self._discard()
            raise
        if self.digest.hexdigest() != self.md5:
            self._discard()
            raise ChecksumMismatchError(f"{self.path}: received data does not match the announced md5")

    def _move_into_place(self) -> None:
        assert self.temp is not None
        fd, name, usage = self.place.dir_fd, self.place.name, self.storage.usage
        with os_errors(self.path), usage.lock:
            old = lstat_at(fd, name) if self.overwrite else None
            replaced = old.st_size if old is not None and stat_mod.S_ISREG(old.st_mode) else 0
            growth = self.size - self.held - replaced
            if not usage.fits(self.home, self.account.quota, growth - self.reservation.amount):
                self._discard()  # the file it would replace went meanwhile, and with it the room
                raise QuotaExceededError(f"{self.path}: no room left in the quota for it")
            self._check_still_ours(self.temp)
            try:
                if self.overwrite:
                    os.replace(self.temp, name, src_dir_fd=fd, dst_dir_fd=fd)
                else:  # link, unlike rename, fails if a file appeared there since the checks
                    os.link(self.temp, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
                    os.unlink(self.temp, dir_fd=fd)
            except OSError as exc:
                self._discard()  # a refused upload keeps nothing (nothing uncounted either)
                if isinstance(exc, FileExistsError):
                    raise ExistsError(f"{self.path}: already exists") from None
                raise
            self._check_still_ours(name)
            usage.add(self.place.parts, growth)

    def _touch(self) -> None:
        """Give the file already at the destination (its only link) the attributes asked for."""
        with os_errors(self.path):
            fd = os.open(self.place.name, READ_FLAGS, dir_fd=self.place.dir_fd)
            try:
                st = os.fstat(fd)
                if not stat_mod.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size != self.size:
                    return  # replaced since the put began: that file is not ours to change
                _apply_attributes(fd, self.mtime, self.mode)
                os.fsync(fd)
                self.storage.checksums.record(self.place.key, os.fstat(fd), self.md5)
            finally:
                os.close(fd)

    def _check_still_ours(self, name: str) -> None:
        """Raise unless `name` is the very file this upload wrote. Only someone with write
        access to the directory on the server can swap another in; what was swapped in
        is removed, so a put never answers `ok` for bytes that are not the ones it got.
        (The server's own renames are serialised by the usage lock, held around this.)"""
        assert self.temp_stat is not None
        st = lstat_at(self.place.dir_fd, name)
        if st is not None and (st.st_dev, st.st_ino) == (self.temp_stat.st_dev, self.temp_stat.st_ino):
            return
        if name != self.temp:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self.place.dir_fd)
        log.warning("the partial file of %s was replaced behind the server's back", self.path)
        raise ForbiddenError(
            f"{self.path}: the upload's partial file was replaced on the server; send it again"
        )

    def _keep_for_resume(self) -> int:
        """An interrupted upload keeps its partial file for a resume, unless holding it
        would put the home over its quota: then it goes (the next put starts afresh)."""
        assert self.file is not None and self.temp is not None
        usage = self.storage.usage
        try:
            now = os.fstat(self.file.fileno()).st_size
        except OSError:
            now = self.held + self.reservation.amount + 1  # unknown: do not keep it
        with usage.lock:  # its own reservation gives way to the bytes it keeps
            if usage.fits(self.home, self.account.quota, now - self.held - self.reservation.amount):
                usage.add(self.place.parts, now - self.held)
                return now
            self._discard()
            return 0

    def _discard(self) -> None:
        """Remove the bytes received; the home no longer holds them."""
        assert self.temp is not None
        with contextlib.suppress(OSError):
            os.unlink(self.temp, dir_fd=self.place.dir_fd)
            self.storage.usage.add(self.place.parts, -self.held)
        self.held = 0

    def close(self) -> None:
        """Let go of everything the upload holds (its claim, reservation, descriptors)."""
        if self.digest is not None:
            self.digest.close()
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None  # ended: a later abort() or close() does nothing
        self.reservation.release()
        if self.claim is not None:
            self.storage.unclaim(self.place.dir_fd, self.claim)
            self.claim = None
        self.place.close()


class LocalStorage:
    """File operations for accounts whose homes lie below `root` (see `Storage` in base.py)."""

    def __init__(
        self, root: Path, max_file_size: int | None = None, count_usage_of: Iterable[Path] = ()
    ) -> None:
        """Serve the homes below `root`; count the usage of the homes in `count_usage_of`
        now (those with a quota), so that no put pays for it."""
        self.root = root.resolve()
        self.max_file_size = max_file_size
        self.claim_wait = CLAIM_WAIT
        self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # Sessions take turns (base.py) where no call waits on a network: not on NFS or FUSE.
        self.turns = on_local_disk(self._root_fd)
        self._meta_fd = self._open_metadata()
        self.checksums = ChecksumCache(self._metadata_path("checksums.sqlite"))
        self.usage = Usage(self._count)
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        self._claims: set[tuple[int, int, str]] = set()  # (dev, inode of the directory, name)
        self._removing: set[tuple[int, int]] = set()  # directories an `rm` is emptying
        self._pool: ThreadPoolExecutor | None = None  # fsyncs of group commits, made when first needed
        self._homes: dict[Path, tuple[str, ...]] = {}  # each home's parts below the root
        self._home_turns: dict[tuple[str, ...], bool] = {}  # whether each home's filesystem allows turns
        for home in count_usage_of:
            self.usage.track(home.relative_to(self.root).parts)

    def _open_metadata(self) -> int:
        """The server's own folder, private to the server's user: nothing another local
        account plants in the root can stand in for it."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(METADATA_DIR, 0o700, dir_fd=self._root_fd)
        where = self.root / METADATA_DIR
        try:
            fd = os.open(METADATA_DIR, DIR_FLAGS, dir_fd=self._root_fd)
        except OSError as exc:
            raise ConfigError(f"{where}: not a directory the server can use ({exc.strerror})") from None
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            os.close(fd)
            raise ConfigError(f"{where}: must belong to the server's user and be writable by it alone")
        return fd

    def _metadata_path(self, name: str) -> str:
        """A name in the metadata folder, through its open descriptor where the system allows."""
        proc = f"/proc/self/fd/{self._meta_fd}"
        return f"{proc}/{name}" if os.path.isdir(proc) else str(self.root / METADATA_DIR / name)

    def stats(self) -> dict[str, int]:
        return dict(self.checksums.stats)

    def commit_group(self, group: builtins.list[Upload]) -> builtins.list[ProtocolError | None]:
        """Commit sealed uploads together: their bytes made durable at once, then each
        renamed, then each directory touched fsynced once. Returns each upload's failure
        (None: durable and visible), in order. Where the kernel allows, one `syncfs` per
        filesystem does for the whole group (see `sync_filesystems`); the files it did
        not cover are fsynced in parallel, and each upload learns its own result."""
        uploads = [upload for upload in group if isinstance(upload, LocalUpload)]
        if len(uploads) != len(group):
            raise TypeError("commit_group() takes this backend's own uploads")
        results: builtins.list[ProtocolError | None] = [None] * len(uploads)

        def sync(index: int) -> None:
            try:
                uploads[index].sync(flush=index not in flushed)
            except ProtocolError as exc:
                results[index] = exc

        try:
            fds = [upload.unsynced_fd() for upload in uploads]
            # A resumed partial's first bytes went through an earlier descriptor: a failure
            # to write them back may have been reported to another syncfs already, and only
            # an fsync of the file itself still tells it.
            fresh = [fd if upload.held == 0 else -1 for fd, upload in zip(fds, uploads, strict=True)]
            # A file is on its directory's filesystem: no fstat of each file to find out.
            devices = [
                upload.place.identity()[0] if fd >= 0 else -1
                for fd, upload in zip(fresh, uploads, strict=True)
            ]
            with paused():  # the disk works: other sessions may run meanwhile
                flushed = sync_filesystems(fresh, devices) if len(uploads) > 1 else set()
                left = [index for index, fd in enumerate(fds) if fd >= 0 and index not in flushed]
                list(self._sync_pool().map(sync, left))
            for index in flushed:
                sync(index)  # fstat and close: nothing left to write
            directories: dict[tuple[int, int], tuple[int, builtins.list[int]]] = {}
            rows: builtins.list[tuple[str, os.stat_result, str]] = []
            for index, upload in enumerate(uploads):
                if results[index] is not None:
                    continue
                try:
                    upload.publish()
                except ProtocolError as exc:
                    results[index] = exc
                    continue
                if upload.temp is not None:
                    directories.setdefault(upload.place.identity(), (upload.place.dir_fd, []))[1].append(
                        index
                    )
            with paused(resume=False):  # the disk's work; the session's next run takes the turn again
                for dir_fd, members in directories.values():
                    try:
                        with os_errors(uploads[members[0]].path):
                            _fsync_dir(dir_fd)
                    except ProtocolError as exc:  # renamed but maybe not durable: say so, as commit() would
                        for index in members:
                            results[index] = exc
                        continue
                    rows.extend(row for index in members for row in uploads[index].checksum_rows())
            self.checksums.record_many(rows)
        finally:
            for upload in uploads:
                upload.close()
        return results

    def _sync_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=SYNC_THREADS, thread_name_prefix="fsync")
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.checksums.close()
        for fd in (self._meta_fd, self._root_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._meta_fd = self._root_fd = -1  # a session still running gets EBADF, never another file

    @property
    def uploads_running(self) -> int:
        """How many uploads hold a partial or temp file right now."""
        with self._lock:
            return len(self._claims)

    # -- paths -----------------------------------------------------------------

    def _home(self, account: Account) -> tuple[str, ...]:
        parts = self._homes.get(account.home)
        if parts is None:  # pathlib's relative_to is a tenth of a small get's time: once per home
            parts = self._homes[account.home] = account.home.relative_to(self.root).parts
        return parts

    def _parse(self, account: Account, path: str) -> tuple[str, tuple[str, ...]]:
        """The canonical virtual path and its parts; paths too deep or too long to store
        are refused before the disk is touched."""
        parts = split_path(path)
        vpath = join_path(parts)
        if len(parts) > MAX_DEPTH:
            raise ForbiddenError(f"{_short(vpath)}: deeper than the server allows ({MAX_DEPTH} levels)")
        if len(os.fsencode(account.home)) + len(vpath.encode()) >= PATH_MAX:
            raise ForbiddenError(f"{_short(vpath)}: too long for the server's filesystem")
        return vpath, parts

    def _walk(
        self, account: Account, vpath: str, parts: tuple[str, ...], follow: bool, create: bool = False
    ) -> Place:
        home = self._home(account)
        with os_errors(vpath):
            try:
                return walk(open_home(self._root_fd, home), home, parts, follow, create, str(account.home))
            except ForbiddenError as exc:
                raise ForbiddenError(f"{_short(vpath)}: {exc.message}") from None

    def ensure_home(self, account: Account) -> None:
        with os_errors("/"):
            os.close(open_home(self._root_fd, self._home(account), create=True))
        if account.quota is not None:
            self.usage.track(self._home(account))

    def turns_for(self, account: Account) -> bool:
        if not self.turns:
            return False
        home = self._home(account)
        allowed = self._home_turns.get(home)
        if allowed is None:
            try:
                fd = open_home(self._root_fd, home)
            except (OSError, ProtocolError):
                return False  # not there yet: asked again after ensure_home()
            try:
                allowed = self._home_turns[home] = on_local_disk(fd)  # once: a later mount needs a restart
            finally:
                os.close(fd)
        return allowed

    def _count(self, home: tuple[str, ...]) -> int:
        try:
            fd = open_home(self._root_fd, home)
        except (OSError, ProtocolError):
            return 0
        try:
            return sum(st.st_size for _, _, _, st in files_below(fd, home, skip=(METADATA_DIR,)))
        finally:
            os.close(fd)

    def home_usage(self, account: Account) -> dict:
        home = self._home(account)
        with os_errors("/"):
            fd = open_home(self._root_fd, home)
            try:
                disk = os.fstatvfs(fd)
            finally:
                os.close(fd)
        used = self.usage.used(home)  # counted once, then kept up to date by every change
        quota = account.quota
        free = None if quota is None else max(0, quota - used)
        return {"used": used, "quota": quota, "free": free, "disk_free": disk.f_bavail * disk.f_frsize}

    # -- reading ---------------------------------------------------------------

    @staticmethod
    def _open(place: Place, vpath: str) -> tuple[int, os.stat_result]:
        """Open what the place names (never following a link) and fstat it."""
        with os_errors(vpath):
            fd = (
                os.dup(place.dir_fd)
                if not place.name
                else os.open(place.name, READ_FLAGS, dir_fd=place.dir_fd)
            )
            return fd, os.fstat(fd)

    def _open_file(self, place: Place, vpath: str) -> tuple[BinaryIO, os.stat_result]:
        """Open what the place names as a file: `is_directory` for a directory."""
        fd, st = self._open(place, vpath)
        if stat_mod.S_ISDIR(st.st_mode):
            os.close(fd)
            raise IsDirectoryError(f"{vpath}: is a directory")
        return open(fd, "rb", closefd=True), st

    def list(self, account: Account, path: str, md5: bool = False) -> tuple[str, list[dict]]:
        vpath, parts = self._parse(account, path)
        with self._walk(account, vpath, parts, follow=True) as place:
            fd, st = self._open(place, vpath)
            try:
                if stat_mod.S_ISDIR(st.st_mode):
                    where = (*place.parts, place.name) if place.name else place.parts
                    with os_errors(vpath):
                        return vpath, self._entries(account, fd, where, md5)
                if not stat_mod.S_ISREG(st.st_mode):
                    raise ForbiddenError(f"{vpath}: not a regular file")
                one = entry(vpath.rsplit("/", 1)[-1], st.st_mode, st.st_size, st.st_mtime_ns / 1e9)
                known = self.checksums.lookup(place.key, st) if md5 else None
                return vpath, [{**one, "md5": known} if known else one]
            finally:
                os.close(fd)

    def _entries(
        self, account: Account, dir_fd: int, where: tuple[str, ...], md5: bool = False
    ) -> builtins.list[dict]:
        """A directory's entries: one fstatat each, whatever the depth; a link is shown
        as what it leads to if that is inside the home, else left out. With `md5`, a
        plain file's entry carries the MD5 the checksum cache holds for it, if any (a
        link's target is not looked up: its entry has none)."""
        entries = []
        plain: builtins.list[tuple[dict, str, os.stat_result]] = []  # files that are not links
        home_fd = -1
        try:
            with os.scandir(dir_fd) as items:
                for item in items:
                    name = item.name
                    if name.startswith(RESERVED_PREFIX) or not _valid_utf8(name):
                        continue
                    try:
                        st: os.stat_result | None = item.stat(follow_symlinks=False)
                    except OSError:
                        continue  # vanished meanwhile
                    linked = st is not None and stat_mod.S_ISLNK(st.st_mode)
                    if linked:
                        if home_fd < 0:
                            home_fd = open_home(self._root_fd, self._home(account))
                        st = self._follow(account, home_fd, (dir_fd, where), name)
                    if st is not None and (stat_mod.S_ISDIR(st.st_mode) or stat_mod.S_ISREG(st.st_mode)):
                        entries.append(entry(name, st.st_mode, st.st_size, st.st_mtime_ns / 1e9))
                        if md5 and not linked and stat_mod.S_ISREG(st.st_mode):
                            plain.append((entries[-1], name, st))
        finally:
            if home_fd >= 0:
                os.close(home_fd)
        known = self.checksums.lookup_many([("/".join((*where, name)), st) for _, name, st in plain])
        for (one, _, _), checksum in zip(plain, known, strict=True):
            if checksum is not None:
                one["md5"] = checksum
        return sorted(entries, key=lambda e: e["name"])

    def _follow(
        self,
        account: Account,
        home_fd: int,
        start: tuple[int, tuple[str, ...]],
        name: str,
        vpath: str | None = None,
    ) -> os.stat_result | None:
        """The stat of what the link `name` in the directory `start` leads to, walked from
        that directory (so a link costs the same at any depth); None if it is dangling.
        One that leads out of the home is None too, or with `vpath` `forbidden`."""
        home = self._home(account)
        try:
            with walk(
                os.dup(home_fd), home, (name,), True, home_path=str(account.home), start=start
            ) as place:
                fd, st = self._open(place, "")
                os.close(fd)
                return st
        except ForbiddenError as exc:
            if vpath is not None:
                raise ForbiddenError(f"{vpath}: {exc.message}") from None
            return None
        except (OSError, ProtocolError):
            return None

    def stat(self, account: Account, path: str) -> dict:
        vpath, parts = self._parse(account, path)
        name = vpath.rsplit("/", 1)[-1]  # the name asked for, also when it is a link
        with self._walk(account, vpath, parts, follow=True) as place:
            fd, st = self._open(place, vpath)
            if stat_mod.S_ISDIR(st.st_mode):
                os.close(fd)
                return entry(name, st.st_mode, st.st_size, st.st_mtime_ns / 1e9)
            with open(fd, "rb", closefd=True) as file:
                md5 = self._md5(place, vpath, file, st)
            return {**entry(name, st.st_mode, st.st_size, st.st_mtime_ns / 1e9), "md5": md5}

    def open_snapshot(self, account: Account, path: str) -> Snapshot:
        vpath, parts = self._parse(account, path)
        with self._walk(account, vpath, parts, follow=True) as place:
            file, st = self._open_file(place, vpath)
            try:
                md5 = self._md5(place, vpath, file, st)
                return Snapshot(file, st.st_size, md5, st.st_mtime_ns / 1e9, stat_mod.S_IMODE(st.st_mode))
            except BaseException:
                file.close()
                raise

    def _md5(self, place: Place, vpath: str, file: BinaryIO, st: os.stat_result) -> str:
        """The MD5 of an open regular file: remembered, or hashed now and remembered."""
        if not stat_mod.S_ISREG(st.st_mode):
            raise ForbiddenError(f"{vpath}: not a regular file")
        md5 = self.checksums.lookup(place.key, st)
        if md5 is None:
            with os_errors(vpath):
                md5 = md5_of(file).hexdigest()
            self.checksums.record(place.key, st, md5)
        return md5

    # -- writing ---------------------------------------------------------------

    def begin_upload(
        self,
        account: Account,
        path: str,
        size: int,
        md5: str,
        overwrite: bool,
        parents: bool,
        mtime: float | None = None,
        mode: int | None = None,
    ) -> LocalUpload:
        vpath, parts = self._parse(account, path)
        if not parts:
            raise IsDirectoryError("/: is a directory")
        home = self._home(account)
        try:
            place: Place | None = self._walk(account, vpath, parts, follow=True)
        except NotFoundError:
            if not parents:
                raise NotFoundError(f"{vpath}: parent directory does not exist") from None
            place = None
        if self.max_file_size is not None and size > self.max_file_size:  # after the path's checks
            if place is not None:
                place.close()
            raise TooLargeError(f"{vpath}: {size} bytes exceeds the limit of {self.max_file_size}")
        if place is None:
            self.usage.reserve(home, account.quota, size, vpath).release()  # a check: nothing is made yet
            place = self._walk(account, vpath, parts, follow=True, create=True)
        try:
            if not place.name:
                raise IsDirectoryError(f"{vpath}: is a directory")
            replaced, identical = self._existing(place, vpath, size, md5, overwrite)
        except BaseException:
            place.close()
            raise
        upload = LocalUpload(self, account, home, place, vpath, size, md5, overwrite, offset=size)
        upload.mtime, upload.mode = mtime, mode
        if identical:
            there = lstat_at(place.dir_fd, place.name)
            if not overwrite or there is None or _attributes_match(there, mtime, mode):
                return upload  # without overwrite, a file already there is left as it is
            if there.st_nlink == 1:
                upload.touch = True  # finish() sets them on the file itself
                return upload
            # Its inode is shared with another name (an instant upload): that name keeps
            # its attributes, and this one gets a copy of its own (made on the server).
        try:
            return self._instant_copy(upload, replaced) or self._resumable(upload, replaced)
        except BaseException:
            upload.close()  # a partial file stays as it was, for a later resume
            raise

    def _existing(self, place: Place, vpath: str, size: int, md5: str, overwrite: bool) -> tuple[int, bool]:
        """The size of the file the upload would replace (0 if none), and whether it
        already is this very file."""
        with os_errors(vpath):
            st = place.seen_by_walk()
        if st is None:
            return 0, False
        if stat_mod.S_ISDIR(st.st_mode):
            raise IsDirectoryError(f"{vpath}: is a directory")
        if not stat_mod.S_ISREG(st.st_mode):
            raise ForbiddenError(f"{vpath}: a {_kind(st.st_mode)} is in the way")
        if st.st_size == size:
            file, opened = self._open_file(place, vpath)
            with file:
                if self._md5(place, vpath, file, opened) == md5:
                    return st.st_size, True
        if not overwrite:
            raise ExistsError(f"{vpath}: already exists")
        return st.st_size, False

    def _resumable(self, upload: LocalUpload, replaced: int) -> LocalUpload:
        """Receive into the partial file named after (name, size, md5), resuming what it holds.

        Two sessions uploading the same file at once must not share a partial file. A
        retry often arrives while the session of the broken attempt is still draining
        its socket, so wait a little for it to let go; after that the newcomer gets a
        private, non-resumable file instead."""
        place, vpath = upload.place, upload.path
        key = hashlib.sha256(f"{place.name}\0{upload.size}\0{upload.md5}".encode()).hexdigest()[:32]
        name = f"{PARTIAL_PREFIX}{key}"
        claim = (*place.identity(), name)
        if not self._claim(claim, self.claim_wait):
            name = f"{TEMP_PREFIX}{uuid.uuid4().hex}"
            claim = (*place.identity(), name)
            self._claim(claim, 0)
        upload.temp, upload.claim = name, claim
        with os_errors(vpath):
            fd, held = self._open_partial(place, name) if name.startswith(PARTIAL_PREFIX) else (None, 0)
        if fd is not None:
            upload.file = open(fd, "r+b", buffering=0, closefd=True)  # noqa: SIM115 - owned by the upload
        if fd is not None and held > upload.size:  # cannot be this upload's: start again
            with os_errors(vpath):
                os.ftruncate(fd, 0)
            self.usage.add(place.parts, -held)
            held = 0
        upload.held = held
        # Checked before a new partial file exists: a refused put leaves nothing behind.
        growth = upload.size - replaced - held
        upload.reservation = self.usage.reserve(upload.home, upload.account.quota, growth, vpath)
        with os_errors(vpath):
            if upload.file is None:
                try:
                    fd = os.open(name, WRITE_FLAGS | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=place.dir_fd)
                except FileExistsError:
                    raise ForbiddenError(
                        f"{vpath}: something keeps appearing at the upload's partial file"
                    ) from None
                upload.file = open(fd, "r+b", buffering=0, closefd=True)  # noqa: SIM115 - owned by the upload
            upload.digest = new_md5(upload.size - held, md5_of(upload.file, held))
            if held:  # a new file is at its start already
                upload.file.seek(held)
        upload.offset, upload.writeback = held, Writeback(upload.file, held)
        return upload

    def _open_partial(self, place: Place, name: str) -> tuple[int | None, int]:
        """Open the partial file `name` if there is one; return its descriptor (None if
        there is none) and size.

        The name is ours but the directory may be writable by others: anything there
        that is not a plain file with a single link is removed unopened, so the upload
        can never write through it to another file, wait on it, or learn its size."""
        seen = lstat_at(place.dir_fd, name)
        if seen is None:
            return None, 0
        if stat_mod.S_ISREG(seen.st_mode) and seen.st_nlink == 1:
            try:  # non-blocking and never following: whatever was swapped in meanwhile
                fd = os.open(name, WRITE_FLAGS, dir_fd=place.dir_fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENOENT):
                    raise
            else:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino, st.st_nlink) == (seen.st_dev, seen.st_ino, 1):
                    return fd, st.st_size
                os.close(fd)
        self._remove_intruder(place, name)
        return None, 0

    def _remove_intruder(self, place: Place, name: str) -> None:
        with self.usage.lock:
            st = lstat_at(place.dir_fd, name)
            if st is None:
                return
            if stat_mod.S_ISDIR(st.st_mode):
                raise ForbiddenError("a directory is in the way of the upload's partial file")
            os.unlink(name, dir_fd=place.dir_fd)  # never follows: removes the name itself
            if stat_mod.S_ISREG(st.st_mode):
                self.usage.add(place.parts, -st.st_size)
        kind = "file with another link" if stat_mod.S_ISREG(st.st_mode) else _kind(st.st_mode)
        log.warning("removed a %s planted at %s/%s", kind, place.key or ".", name)

    def _instant_copy(self, upload: LocalUpload, replaced: int) -> LocalUpload | None:
        """Instant upload: if this user's home already holds a file with this size and
        MD5, link (or copy) it to a temp file beside the destination; the upload then
        needs no byte from the network and `finish()` renames it into place.

        A hard link is safe because stored files are only ever replaced by rename,
        never written in place. Only files inside the user's own home are candidates,
        so an upload never reveals what other users store."""
        home = upload.home
        for key in self.checksums.find(upload.md5, upload.size, "/".join(home)):
            try:
                source = walk(open_home(self._root_fd, home), home, tuple(key.split("/"))[len(home) :], False)
            except (OSError, ProtocolError):
                continue
            with source:
                try:
                    fd, st = self._open(source, upload.path)
                except ProtocolError:
                    continue
                if not stat_mod.S_ISREG(st.st_mode) or self.checksums.lookup(key, st) != upload.md5:
                    os.close(fd)
                    continue
                with open(fd, "rb", closefd=True) as file:
                    if self._link_or_copy(upload, source, file, st, replaced):
                        return upload
        return None

    def _link_or_copy(
        self, upload: LocalUpload, source: Place, file: BinaryIO, st: os.stat_result, replaced: int
    ) -> bool:
        """Put the bytes of `source` (open as `file`, with stat `st`) at a new temp name
        beside the destination; True if they are still the ones wanted."""
        place = upload.place
        reservation = self.usage.reserve(
            upload.home, upload.account.quota, upload.size - replaced, upload.path
        )
        temp = f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        claim = (*place.identity(), temp)
        self._claim(claim, 0)
        try:
            with os_errors(upload.path):
                linked = (
                    self._link(source, place, temp, st)
                    if _attributes_match(st, upload.mtime, upload.mode)
                    else None
                ) or self._copy(file, place, temp, upload)
        except BaseException:
            reservation.release()
            self.unclaim(place.dir_fd, claim)
            raise
        if linked is None:
            reservation.release()
            self.unclaim(place.dir_fd, claim)
            return False
        upload.temp, upload.claim, upload.reservation, upload.temp_stat = temp, claim, reservation, linked
        return True

    @staticmethod
    def _link(source: Place, place: Place, temp: str, st: os.stat_result) -> os.stat_result | None:
        """Hard-link the source to `temp`; its stat if the link is to the very file we checked."""
        try:
            os.link(
                source.name, temp, src_dir_fd=source.dir_fd, dst_dir_fd=place.dir_fd, follow_symlinks=False
            )
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EMLINK, errno.EXDEV, errno.EOPNOTSUPP):
                return None  # links not allowed here: copy instead
            raise
        linked = os.stat(temp, dir_fd=place.dir_fd, follow_symlinks=False)
        same = (linked.st_dev, linked.st_ino, linked.st_size, linked.st_mtime_ns) == (
            st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
        )  # fmt: skip
        return linked if same else None

    @staticmethod
    def _copy(file: BinaryIO, place: Place, temp: str, upload: LocalUpload) -> os.stat_result | None:
        """Copy the open source to `temp` (where a link will not do), with the upload's
        attributes, verified and fsynced."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=place.dir_fd)  # a link that did not match
        fd = os.open(temp, WRITE_FLAGS | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=place.dir_fd)
        with open(fd, "r+b", closefd=True) as copy, paused():  # copy, sync, hash: the disk's work
            file.seek(0)
            shutil.copyfileobj(file, copy, 1024 * 1024)
            copy.flush()
            _apply_attributes(copy.fileno(), upload.mtime, upload.mode)
            os.fsync(copy.fileno())
            if md5_of(copy).hexdigest() != upload.md5:
                return None
            return os.fstat(copy.fileno())

    # -- claims: partial and temp files in use by a running upload -------------

    @staticmethod
    def _claim_key(dir_fd: int, name: str) -> tuple[int, int, str]:
        st = os.fstat(dir_fd)
        return st.st_dev, st.st_ino, name

    def _claim(self, key: tuple[int, int, str], wait: float) -> bool:
        """Mark the name in the directory (`key`: device, inode, name) as in use; False if
        another upload kept it for `wait` s."""
        with self._lock:
            if key[:2] in self._removing:
                raise NotFoundError("the directory is being removed")
            if key not in self._claims:
                self._claims.add(key)
                return True
        if not wait:
            return False
        with paused(), self._lock:  # the holder may need the turn to let go
            if key[:2] in self._removing:
                raise NotFoundError("the directory is being removed")
            if not self._released.wait_for(lambda: key not in self._claims, wait):
                return False
            self._claims.add(key)
            return True

    def unclaim(self, dir_fd: int, key: tuple[int, int, str]) -> None:
        """Give a claimed name back; a private temp file is removed (never resumed) while
        still claimed, so the stale sweep cannot take it at the same moment."""
        if key[2].startswith(TEMP_PREFIX):
            with contextlib.suppress(OSError):
                os.unlink(key[2], dir_fd=dir_fd)
        with self._lock:
            self._claims.discard(key)
            self._released.notify_all()

    # -- directories and removal -----------------------------------------------

    def mkdir(self, account: Account, path: str, parents: bool) -> None:
        vpath, parts = self._parse(account, path)
        if not parts:
            if parents:
                return
            raise ExistsError("/: already exists")
        with self._walk(account, vpath, parts, follow=False, create=parents) as place, os_errors(vpath):
            try:
                os.mkdir(place.name, 0o777, dir_fd=place.dir_fd)
                _fsync_dir(place.dir_fd)  # an `ok` means the directory survives a crash
            except FileExistsError:
                st = lstat_at(place.dir_fd, place.name)
                if st is not None and stat_mod.S_ISLNK(st.st_mode):
                    home_fd = open_home(self._root_fd, self._home(account))
                    try:
                        st = self._follow(account, home_fd, (place.dir_fd, place.parts), place.name, vpath)
                    finally:
                        os.close(home_fd)
                if parents and st is not None and stat_mod.S_ISDIR(st.st_mode):
                    return  # made meanwhile, perhaps by another `mkdir -p`: that is success
                raise

    def remove(self, account: Account, path: str, recursive: bool = False) -> None:
        vpath, parts = self._parse(account, path)
        if not parts:
            raise ForbiddenError("/: the home directory cannot be removed")
        with self._walk(account, vpath, parts, follow=False) as place, os_errors(vpath):
            st = lstat_at(place.dir_fd, place.name)
            if st is None:
                raise NotFoundError(f"{vpath}: no such file or directory")
            if stat_mod.S_ISDIR(st.st_mode):
                if recursive:
                    self._remove_tree(place, vpath)
                else:
                    self._remove_dir(place, vpath)
                return
            with self.usage.lock:  # a link or special file is removed itself, never followed
                st = os.stat(place.name, dir_fd=place.dir_fd, follow_symlinks=False)
                os.unlink(place.name, dir_fd=place.dir_fd)
                if stat_mod.S_ISREG(st.st_mode):
                    self.usage.add(place.parts, -st.st_size)
            self.checksums.forget(place.key)

    def _remove_tree(self, place: Place, vpath: str) -> None:
        """Remove a directory and everything below it, depth first. Links are removed,
        never followed; a directory with an upload running into it stops the removal
        there (`not_empty`), whatever was removed before it stays removed."""
        fd = open_dir(place.dir_fd, place.name)
        try:
            self._empty(fd, (*place.parts, place.name), vpath, 0)
        finally:
            os.close(fd)
        os.rmdir(place.name, dir_fd=place.dir_fd)
        self.checksums.forget_below(place.key)

    def _empty(self, fd: int, where: tuple[str, ...], vpath: str, depth: int) -> None:
        """Remove everything in the open directory `fd` (one descriptor per level)."""
        if depth >= MAX_DEPTH:
            raise ForbiddenError(f"{_short(vpath)}: deeper than the server allows ({MAX_DEPTH} levels)")
        with self._emptying(fd, vpath):
            with os.scandir(fd) as items:
                names = [item.name for item in items]
            for name in names:
                held = lstat_at(fd, name)
                if held is not None and stat_mod.S_ISDIR(held.st_mode):
                    child = open_dir(fd, name)  # O_NOFOLLOW: a directory swapped for a link is refused
                    try:
                        self._empty(child, (*where, name), f"{vpath}/{name}", depth + 1)
                    finally:
                        os.close(child)
                    os.rmdir(name, dir_fd=fd)
                else:
                    self._unlink_entry(fd, name, where)

    def rename(self, account: Account, path: str, to: str, overwrite: bool) -> None:
        vpath, parts = self._parse(account, path)
        tpath, tparts = self._parse(account, to)
        if not parts or not tparts:
            raise ForbiddenError("/: the home directory cannot be renamed or replaced")
        with (
            self._walk(account, vpath, parts, follow=False) as src,
            self._walk(account, tpath, tparts, follow=False) as dst,
        ):
            old, new = (*src.parts, src.name), (*dst.parts, dst.name)
            if new[: len(old)] == old and new != old:
                raise ForbiddenError(f"{_short(tpath)}: a directory cannot move into itself")
            with os_errors(vpath):
                st = lstat_at(src.dir_fd, src.name)
            if st is None:
                raise NotFoundError(f"{vpath}: no such file or directory")
            with self.usage.lock, os_errors(tpath):
                there = lstat_at(dst.dir_fd, dst.name)
                if there is None:
                    _rename_noreplace(src.dir_fd, src.name, dst.dir_fd, dst.name)
                elif (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino):
                    if new == old:
                        return  # renamed to itself: nothing to do
                    if not overwrite:
                        raise ExistsError(f"{tpath}: already exists")
                    # Two links to one file (as an instant upload makes): rename(2) would keep
                    # both names, so the old name is removed and the new one already holds it.
                    os.unlink(src.name, dir_fd=src.dir_fd)
                    self.usage.add(src.parts, -st.st_size if stat_mod.S_ISREG(st.st_mode) else 0)
                    self.checksums.forget(src.key)
                    return
                elif stat_mod.S_ISDIR(there.st_mode):
                    raise IsDirectoryError(f"{tpath}: is a directory")
                elif not overwrite:
                    raise ExistsError(f"{tpath}: already exists")
                elif stat_mod.S_ISDIR(st.st_mode):
                    raise NotDirectoryError(f"{tpath}: is not a directory, and a directory cannot replace it")
                else:
                    os.rename(src.name, dst.name, src_dir_fd=src.dir_fd, dst_dir_fd=dst.dir_fd)
                    if stat_mod.S_ISREG(there.st_mode):
                        self.usage.add(dst.parts, -there.st_size)
                self.usage.moved(old, new, lambda: self._bytes_at(dst, st))
            self.checksums.move(src.key, dst.key)

    def _bytes_at(self, place: Place, st: os.stat_result) -> int:
        """What the entry at `place` (lstat `st`) holds, for the usage of homes it moved between."""
        if stat_mod.S_ISREG(st.st_mode):
            return st.st_size
        if not stat_mod.S_ISDIR(st.st_mode):
            return 0
        fd = open_dir(place.dir_fd, place.name)
        try:
            return sum(held.st_size for _, _, _, held in files_below(fd, (*place.parts, place.name)))
        finally:
            os.close(fd)

    def _remove_dir(self, place: Place, vpath: str) -> None:
        """Remove a directory that holds nothing but abandoned partial uploads."""
        fd = open_dir(place.dir_fd, place.name)
        where = (*place.parts, place.name)
        try:
            with os.scandir(fd) as items:
                names = [item.name for item in items]
            if any(not name.startswith(RESERVED_PREFIX) for name in names):
                raise NotEmptyError(f"{vpath}: directory is not empty")
            with self._emptying(fd, vpath):
                for name in names:
                    self._unlink_entry(fd, name, where)
                os.rmdir(place.name, dir_fd=place.dir_fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _emptying(self, fd: int, vpath: str) -> Iterator[None]:
        """While the block empties the open directory `fd`, no upload may claim a name in
        it; one that holds a name there already makes it `not_empty`."""
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        with self._lock:
            if any(key[:2] == ident for key in self._claims):
                raise NotEmptyError(f"{_short(vpath)}: an upload into it is in progress")
            self._removing.add(ident)
        try:
            yield
        finally:
            with self._lock:
                self._removing.discard(ident)

    def _unlink_entry(self, fd: int, name: str, where: tuple[str, ...]) -> None:
        """Remove the entry `name` of the open directory `where` unless it is a directory
        (gone, or made meanwhile: the rmdir after says not_empty); a file's bytes leave usage."""
        with self.usage.lock:
            held = lstat_at(fd, name)
            if held is None or stat_mod.S_ISDIR(held.st_mode):
                return
            os.unlink(name, dir_fd=fd)  # a link itself, never what it points at
            if stat_mod.S_ISREG(held.st_mode):
                self.usage.add(where, -held.st_size)

    def remove_stale_partials(self, max_age: float) -> int:
        cutoff = time.time() - max_age
        removed = 0
        fd = os.dup(self._root_fd)
        try:
            for dir_fd, where, name, st in files_below(fd, (), skip=(METADATA_DIR,)):
                if not name.startswith((PARTIAL_PREFIX, TEMP_PREFIX)) or st.st_mtime >= cutoff:
                    continue
                key = self._claim_key(dir_fd, name)
                with self._lock, self.usage.lock, contextlib.suppress(OSError):
                    now = lstat_at(dir_fd, name)  # resumed since the scan? then it is fresh again
                    if key in self._claims or now is None or now.st_mtime >= cutoff:
                        continue
                    if not stat_mod.S_ISREG(now.st_mode):
                        continue
                    os.unlink(name, dir_fd=dir_fd)
                    self.usage.add(where, -now.st_size)
                    removed += 1
        finally:
            os.close(fd)
        return removed
