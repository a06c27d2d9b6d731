"""Getting received files onto the disk, shared by both sides.

A received file is fsynced before it gets its name. Left alone, the kernel
keeps the bytes in memory until that fsync, which then waits for all of
them; asking for the writing to start as chunks arrive overlaps the disk
with the network, so the final fsync has little left to do (`Writeback`).

Many small files received together are made durable together: one `syncfs`
per filesystem instead of an fsync each (`sync_filesystems`).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence
from typing import BinaryIO

__all__ = ["SYNCFS", "Writeback", "on_local_disk", "sync_filesystems"]

STEP = 32 * 1024 * 1024


class Writeback:
    """Tell it how many bytes were written; every `STEP` bytes it starts their writeback."""

    def __init__(self, file: BinaryIO, start: int = 0) -> None:
        self._fd = file.fileno()
        self._written = self._started = start

    def wrote(self, count: int) -> None:
        self._written += count
        if self._written - self._started >= STEP and hasattr(os, "posix_fadvise"):
            # DONTNEED starts writing dirty pages out now; they are dropped once clean.
            os.posix_fadvise(self._fd, self._started, self._written - self._started, os.POSIX_FADV_DONTNEED)
            self._started = self._written


def _syncfs_reports_errors() -> bool:
    """Whether syncfs(2) says when write-back failed: Linux 5.17 and later. Before 5.8 it
    returned 0 whatever happened, and before 5.17 it ignored the filesystem's own
    `sync_fs` failures (a journal commit that failed), so only an fsync of each file
    could be trusted."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 17)


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_SYNCFS = getattr(_LIBC, "syncfs", None) if _syncfs_reports_errors() else None
_FSTATFS = getattr(_LIBC, "fstatfs", None)
SYNCFS = _SYNCFS is not None and _FSTATFS is not None
# Filesystems whose syncfs writes back and reports what an fsync of each file would:
# ext4, xfs, btrfs, and tmpfs (nothing to write). Not FUSE (sshfs, s3fs, mergerfs...),
# whose syncfs never reaches the daemon, nor overlayfs or network filesystems.
SYNCFS_FILESYSTEMS = {0xEF53: "ext4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x01021994: "tmpfs"}
# Filesystems whose calls may wait for a network or a daemon (linux/magic.h and the
# filesystems' own sources): NFS, SMB and CIFS, FUSE, Ceph, 9p, AFS, Coda, GFS2, OCFS2, Lustre.
REMOTE_FILESYSTEMS = {
    0x6969: "nfs",
    0x517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x65735546: "fuse",
    0x00C36400: "ceph",
    0x01021997: "9p",
    0x5346414F: "afs",
    0x6B414653: "kafs",
    0x73757245: "coda",
    0x01161970: "gfs2",
    0x7461636F: "ocfs2",
    0x0BD00BD0: "lustre",
}


def _filesystem_type(fd: int) -> int | None:
    """`f_type` of fstatfs(2): the first field of `struct statfs` on Linux."""
    if _FSTATFS is None:
        return None
    buffer = ctypes.create_string_buffer(512)  # struct statfs is 120 bytes on 64-bit Linux
    if _FSTATFS(fd, buffer) != 0:
        return None
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


def on_local_disk(fd: int) -> bool:
    """Whether the file behind `fd` is on a filesystem whose calls wait for a disk at
    most: any but `REMOTE_FILESYSTEMS` (where the type is unknown, a local one)."""
    return _filesystem_type(fd) not in REMOTE_FILESYSTEMS


def sync_filesystems(fds: Sequence[int], devices: Sequence[int] | None = None) -> set[int]:
    """Write back, with one `syncfs` per filesystem, every file behind `fds` (-1: skip);
    returns the indexes of those now durable (`devices`: the files' `st_dev`, if the
    caller knows them; else each file is fstatted). A file left out must be fsynced on
    its own: syncfs is not available or not trusted on its filesystem, or it reported a
    failure and cannot say whose. syncfs reports the failures since its descriptor was opened:
    list the oldest file first, and only files whose bytes were all written through
    the descriptor given.

    One journal commit for a whole group instead of one per file: on ext4 here, groups of
    32 small files reach three times the files per second of fsyncs issued in parallel."""
    if not SYNCFS:
        return set()
    by_device: dict[int, list[int]] = {}
    for index, fd in enumerate(fds):
        if fd < 0:
            continue
        try:
            device = os.fstat(fd).st_dev if devices is None else devices[index]
        except OSError:
            continue  # its own fsync will say what is wrong
        by_device.setdefault(device, []).append(index)
    durable: set[int] = set()
    for members in by_device.values():
        fd = fds[members[0]]
        if _filesystem_type(fd) in SYNCFS_FILESYSTEMS and _SYNCFS is not None and _SYNCFS(fd) == 0:
            durable.update(members)
    return durable
