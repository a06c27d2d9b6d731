"""What a session needs from storage, whatever holds the bytes.

`Storage` is the interface every backend implements (the local filesystem
today, object stores later); the session and the server use nothing else.
Every method takes the `Account` acting and a virtual path as the client sent
it, and raises the `ProtocolError` the wire should carry: a backend never
lets an `OSError` or a library's own exception reach the session.
"""

from __future__ import annotations

import builtins
import stat as stat_mod
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from ftpproto import InternalError, ProtocolError

from ..config import Account

__all__ = ["Snapshot", "Storage", "Upload", "entry"]


def entry(name: str, mode: int, size: int, mtime: float) -> dict:
    """One `ls`/`stat` entry as the protocol shows it (`mode`: the attributes extension)."""
    is_dir = stat_mod.S_ISDIR(mode)
    kind = "dir" if is_dir else "file"
    return {
        "name": name,
        "type": kind,
        "size": 0 if is_dir else size,
        "mtime": mtime,
        "mode": stat_mod.S_IMODE(mode),
    }


@dataclass
class Snapshot:
    """A file opened for `get`: its bytes never change while it is open, because
    uploads replace files whole and never write in place."""

    file: BinaryIO
    size: int
    md5: str
    mtime: float = 0.0
    mode: int = 0o644  # permission bits

    def read(self, offset: int, count: int) -> bytes:
        """`count` bytes from `offset`, read at once (a small file sent with its header);
        an internal error if the file ends first (changed behind the server's back)."""
        self.file.seek(offset)
        data = self.file.read(count)
        if len(data) != count:
            raise InternalError(f"the file ended {count - len(data)} bytes before its size")
        return data

    def close(self) -> None:
        self.file.close()


class Upload(Protocol):
    """One `put` in progress. `offset` bytes are already held: feed the other
    `size - offset` to `write()`, then `finish()` or `abort()`, exactly once."""

    offset: int

    def space(self) -> memoryview | None:
        """Where the next bytes may be received to be hashed without a copy, or None."""

    def write(self, chunk: memoryview) -> None:
        """Store one chunk. A storage error is kept and raised by `finish()`, so the
        caller goes on draining the data phase and the connection stays in step."""

    def finish(self) -> None:
        """Verify the MD5 and make the file visible under its name; raises on any failure,
        leaving the previous file (if any) as it was. The same as `seal()` then a
        `commit_group()` of this upload alone."""

    def seal(self) -> None:
        """Verify the MD5 (and what went wrong while writing) without making anything
        durable or visible yet; raises on a failure, keeping nothing. Then the upload
        goes to the storage's `commit_group()`, or to `abort()`."""

    def abort(self) -> int:
        """Stop without publishing: what arrived is kept for a resume if the quota allows.
        Returns how many bytes are kept for a resume (0 if none)."""


class Storage(Protocol):
    """The operations of a session, on one account's home."""

    # Whether sessions may call it while holding their turn (ftpproto/io/turn.py): its
    # calls wait only for disks, and pause the turn around a sync. Never for a backend
    # whose calls wait for a network: the other sessions would wait as long.
    turns: bool

    def ensure_home(self, account: Account) -> None:
        """Create the account's home if it is missing, and start counting its usage."""

    def turns_for(self, account: Account) -> bool:
        """Whether a session in the account's home may hold its turn: `turns`, unless the
        home itself may wait for a network (a network mount below a local root)."""

    def list(self, account: Account, path: str, md5: bool = False) -> tuple[str, list[dict]]:
        """The canonical path and its entries sorted by name (one entry for a file). With
        `md5` (the ls-md5 extension), a file's entry carries its `md5` if the backend
        knows it without reading the file."""

    def stat(self, account: Account, path: str) -> dict:
        """One entry; a file's carries its `md5`."""

    def open_snapshot(self, account: Account, path: str) -> Snapshot:
        """Open a regular file for `get`."""

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
    ) -> Upload:
        """Check everything a `put` needs (permissions, quota, conflicts) before any
        data flows, then set up where the bytes go. With `mtime` and `mode` (the
        attributes extension) the stored file gets that modification time and, if
        `mode` is executable, execute permission where it has read permission."""

    def mkdir(self, account: Account, path: str, parents: bool) -> None:
        """Create a directory; with `parents`, missing parents too and no error if it exists."""

    def remove(self, account: Account, path: str, recursive: bool = False) -> None:
        """Remove a file, or a directory that holds nothing the user can see; with
        `recursive`, a directory and everything below it (links removed, not followed)."""

    def rename(self, account: Account, path: str, to: str, overwrite: bool) -> None:
        """Give a file or directory a new name in the same home, atomically. An existing
        file at `to` is replaced only with `overwrite`; a directory there never is."""

    def home_usage(self, account: Account) -> dict:
        """The home's `used` bytes, its `quota` and what is `free` of it (None without
        a quota), and `disk_free`: what the storage under the home can still take."""

    def commit_group(self, uploads: builtins.list[Upload]) -> builtins.list[ProtocolError | None]:
        """Make sealed uploads durable and visible together (cheaper than one by one: a
        group commit); returns each one's failure, None where it is committed. No upload
        is visible before it is durable. Every upload is closed after."""

    def remove_stale_partials(self, max_age: float) -> int:
        """Delete interrupted uploads untouched for `max_age` seconds; return how many."""

    def stats(self) -> dict[str, int]:
        """Counters for metrics: checksum lookups by result (`hit`, `miss`)."""

    def close(self) -> None:
        """Release what the backend holds open."""
