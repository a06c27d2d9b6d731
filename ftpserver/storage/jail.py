"""Confinement by handles: every access walks from a directory descriptor.

No path string is ever checked and then opened again. `walk()` starts from
the home's directory descriptor and opens one component at a time with
`O_NOFOLLOW`, so the kernel never follows a symbolic link for us. A link met
on the way is read with `readlinkat` and its target walked the same way, from
the directory that holds it; a `..` in it is walked again from the home, by
the names we came down (the kernel's `..` could lead out of a directory moved
away meanwhile). A link that climbs above the home, an absolute link outside
the home's own path and a link into the server's own `.sockftp` names are
`forbidden`. Whatever is renamed or swapped while a walk runs, every step
stays below the home's descriptor (the approach of Go's `os.Root` and
CPython's `_rmtree_safe_fd`).
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
from collections.abc import Iterator
from dataclasses import dataclass, field

from ftpproto import ForbiddenError
from ftpproto.paths import RESERVED_PREFIX

__all__ = [
    "DIR_FLAGS",
    "MAX_DEPTH",
    "MAX_SYMLINKS",
    "READ_FLAGS",
    "Place",
    "files_below",
    "lstat_at",
    "open_dir",
    "open_home",
    "walk",
]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Non-blocking, so that a FIFO or device at the name cannot hang the session.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_SYMLINKS = 40  # as Linux's MAXSYMLINKS
MAX_DEPTH = 256  # directories below a home; also bounds the descriptors a walk holds


@dataclass
class Place:
    """A name inside an open directory: what an operation acts on.

    `parts` is the directory's physical path below the storage root (symbolic
    links resolved), `name` the entry in it, or "" for the directory itself.
    The place owns `dir_fd`; close it when done."""

    dir_fd: int
    parts: tuple[str, ...]
    name: str
    _identity: tuple[int, int] | None = field(default=None, repr=False, compare=False)
    _seen: tuple[os.stat_result | None] | None = field(default=None, repr=False, compare=False)

    def seen_by_walk(self) -> os.stat_result | None:
        """The lstat of the name as the walk that made this place saw it a moment ago
        (None: nothing there), handed out once; after that, or if the walk did not
        look, a new lstat. As racy as any lstat, and no more."""
        if self._seen is not None:
            (st,), self._seen = self._seen, None
            return st
        return lstat_at(self.dir_fd, self.name)

    def identity(self) -> tuple[int, int]:
        """The open directory's (device, inode): it stays that directory while open."""
        if self._identity is None:
            st = os.fstat(self.dir_fd)
            self._identity = (st.st_dev, st.st_ino)
        return self._identity

    @property
    def key(self) -> str:
        """The entry's physical path below the storage root, as `a/b/c`."""
        return "/".join((*self.parts, self.name) if self.name else self.parts)

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __enter__(self) -> Place:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_dir(dir_fd: int, name: str, create: bool = False) -> int:
    """Open the directory `name` in `dir_fd` without following a link; with `create`,
    make it first if it is missing (someone else making it at the same moment is fine),
    and fsync `dir_fd`: a file fsynced into the new directory is only durable once the
    directory's own name is."""
    if create:
        try:
            os.mkdir(name, 0o777, dir_fd=dir_fd)
        except FileExistsError:
            pass
        else:
            os.fsync(dir_fd)
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def open_home(root_fd: int, parts: tuple[str, ...], create: bool = False) -> int:
    """The descriptor of a home, walked from the root; every component must be a real
    directory (a home behind a symbolic link is refused, never followed)."""
    try:
        return _open_below(root_fd, parts, create)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ForbiddenError("the home directory is not a real directory on the server") from None
        raise


def walk(
    home_fd: int,
    home: tuple[str, ...],
    parts: tuple[str, ...],
    follow: bool,
    create: bool = False,
    home_path: str | None = None,
    start: tuple[int, tuple[str, ...]] | None = None,
) -> Place:
    """Resolve `parts` below the home open at `home_fd` (taken over: closed here).
    `home` is the home's path below the root, `home_path` its absolute path on the
    server (an absolute link into it is followed from the home; any other is refused).
    `start`, a directory's descriptor and path below the root, begins the walk there
    instead of at the home (its descriptor is not taken over).

    The last component is not opened: the caller opens it as it needs. With `follow`,
    a link at the last component is resolved too; without it, the link itself is
    the place (for `rm`). With `create`, missing directories on the way are made.
    Only two descriptors are open at a time: a `..` from a link's target is walked
    again from the home (the directory above may have moved since we passed it).
    Raises `OSError` for what the filesystem refuses, `ForbiddenError` for an escape.
    """
    # `fd` is the directory reached so far; while that is the home, it is `home_fd`
    # itself (no copy: a put or get in a home's top folder costs two system calls less).
    # Each descriptor is closed once, whatever fails: `fd` is replaced before the directory
    # it leaves is closed, and `home_fd` is closed in one place, unless the place keeps it.
    fd = -1

    def move(new: int) -> None:
        """Go on from `new`; the directory left behind is closed (never the home's)."""
        nonlocal fd
        old, fd = fd, new
        if old >= 0 and old != home_fd:
            os.close(old)

    try:
        fd, where = (os.dup(start[0]), start[1]) if start is not None else (home_fd, home)
        pending = list(reversed(parts))
        hops = 0
        place = None
        while pending and place is None:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if len(where) <= len(home):
                    raise ForbiddenError("a symbolic link leads outside the home directory")
                where = where[:-1]
                move(-1)
                move(_open_below(home_fd, where[len(home) :]) if len(where) > len(home) else home_fd)
                continue
            if name.startswith(RESERVED_PREFIX):
                raise ForbiddenError("a symbolic link leads to the server's own files")
            seen = lstat_at(fd, name) if not pending and follow else None
            if not pending and not (seen is not None and stat_mod.S_ISLNK(seen.st_mode)):
                place = Place(fd, where, name, _seen=(seen,) if follow else None)
                continue
            if pending:
                try:
                    child = open_dir(fd, name, create)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    there = lstat_at(fd, name)
                    kind = there.st_mode if there is not None else 0
                    if stat_mod.S_ISDIR(kind) and hops < MAX_SYMLINKS:
                        hops += 1  # a link that was swapped back meanwhile: open it again
                        pending.append(name)
                        continue
                    if not stat_mod.S_ISLNK(kind):
                        raise
                else:
                    move(child)
                    where = (*where, name)
                    if len(where) - len(home) > MAX_DEPTH:
                        raise ForbiddenError(f"the path is deeper than {MAX_DEPTH} directories")
                    continue
            hops += 1
            if hops > MAX_SYMLINKS:
                raise ForbiddenError("too many levels of symbolic links")
            target = os.readlink(name, dir_fd=fd)
            if target.startswith("/"):
                inside = _below(target, home_path)
                if inside is None:
                    raise ForbiddenError("an absolute symbolic link leads outside the home directory")
                move(home_fd)
                where = home
                target = inside
            pending.extend(reversed(target.split("/")))
        # Else the path named the home itself, or a link's target ended on a directory
        # (`sub/..`): the place is that directory, with no name.
        place = place or Place(fd, where, "")
    except BaseException:
        if fd >= 0 and fd != home_fd:
            os.close(fd)
        os.close(home_fd)
        raise
    if place.dir_fd != home_fd:
        try:
            os.close(home_fd)
        except OSError:
            place.close()
            raise
    return place


def _below(target: str, home_path: str | None) -> str | None:
    """An absolute link target as a path below the home, or None if it is not in it."""
    if home_path is None:
        return None
    if target == home_path or target.rstrip("/") == home_path:
        return ""
    if target.startswith(home_path + "/"):
        return target[len(home_path) + 1 :]
    return None


def _open_below(dir_fd: int, parts: tuple[str, ...], create: bool = False) -> int:
    """Open the directory `parts` below `dir_fd`, one component at a time, never
    following a link (with `create`, making the missing ones)."""
    if not parts:
        return os.dup(dir_fd)
    fd = open_dir(dir_fd, parts[0], create)
    try:
        for name in parts[1:]:
            child = open_dir(fd, name, create)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """The lstat of `name` in the directory `dir_fd` (None: nothing there)."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def files_below(
    dir_fd: int, parts: tuple[str, ...], skip: tuple[str, ...] = (), depth: int = 0
) -> Iterator[tuple[int, tuple[str, ...], str, os.stat_result]]:
    """Every regular file below `dir_fd` as (its directory's descriptor, that directory's
    parts, name, lstat). Links and special files are skipped, never followed; `skip`
    names directories of the top level to leave out. Holds one descriptor per level."""
    subdirs = []
    try:
        entries = os.scandir(dir_fd)
    except OSError:
        return  # unreadable, or no descriptor left: skipped, never fatal
    with entries:
        for item in entries:
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished meanwhile
            if stat_mod.S_ISDIR(st.st_mode):
                if not (depth == 0 and item.name in skip):
                    subdirs.append(item.name)
            elif stat_mod.S_ISREG(st.st_mode):
                yield dir_fd, parts, item.name, st
    if depth >= 2 * MAX_DEPTH:
        return
    for name in subdirs:
        try:
            child = open_dir(dir_fd, name)
        except OSError:
            continue  # replaced by a link or removed meanwhile: not ours to count
        try:
            yield from files_below(child, (*parts, name), (), depth + 1)
        finally:
            os.close(child)
