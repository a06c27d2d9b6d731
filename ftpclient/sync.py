"""`sync`: make a directory on one side hold what a directory on the other side holds.

    source, dest = Side.parse("site"), Side.parse(":/www")
    plan = plan_sync(client, source, dest, delete=True)
    summary = Batch(connect, preserve=True).run(plan.jobs)
    if not summary.failed:
        for item in plan.deletes:
            delete(client, dest, item)

One side is a local directory, the other a remote one, written with a leading `:`.
A file is transferred when the destination lacks it, or holds it with another size
or a modification time more than `MTIME_TOLERANCE` apart (with `checksum`: another
MD5, whatever the times). Transfers keep modification times (the attributes
extension), so a second sync finds nothing to do. With `delete`, what the
destination holds and the source does not is listed for removal; the caller
removes it once every transfer succeeded. Nothing here prints.
"""

from __future__ import annotations

import posixpath
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ftpproto import NotFoundError, join_path, split_path

from .batch import Filters, remote_join, walk_local, walk_remote
from .client import Client, md5_file
from .errors import UsageError
from .jobs import Job, Outcome

__all__ = ["MTIME_TOLERANCE", "Item", "Side", "SyncPlan", "delete", "plan_sync"]

MTIME_TOLERANCE = 0.001  # seconds: a time goes through a JSON number on its way


@dataclass(frozen=True)
class Side:
    """One end of a sync: a local directory, or a remote one (`remote`, canonical path)."""

    path: str
    remote: bool

    @classmethod
    def parse(cls, text: str) -> Side:
        """`:PATH` is remote (relative to the home), anything else local."""
        if text.startswith(":"):
            return cls(join_path(split_path(text[1:])), True)
        return cls(text, False)

    def __str__(self) -> str:
        return f":{self.path}" if self.remote else self.path

    def join(self, relative: str) -> str:
        return remote_join(self.path, relative) if self.remote else str(Path(self.path, relative))


@dataclass(frozen=True)
class Item:
    """A file or directory of a tree being synced."""

    type: str  # "file" or "dir"
    path: str  # its local or remote path
    size: int = 0
    mtime: float = 0.0
    skip: str = ""  # a local symlink not followed
    empty: bool = False  # a directory with nothing in it
    md5: str | None = None  # a remote file's, if its listing had it (ls-md5)


@dataclass
class SyncPlan:
    """What a sync would do: `jobs` for a `Batch` (with `notes`, why each is there),
    how many files are `unchanged`, what `conflicts` (a file against a directory), and
    the destination's items to `deletes` (topmost only: a directory goes with its contents)."""

    jobs: list[Job] = field(default_factory=list)
    notes: dict[Job, str] = field(default_factory=dict)
    unchanged: int = 0
    conflicts: list[Outcome] = field(default_factory=list)
    deletes: list[Item] = field(default_factory=list)


def tree(client: Client, side: Side, links: str | None, md5: bool = False) -> dict[str, Item] | None:
    """The items below `side`'s directory by their path within it; None if it does not exist.
    With `md5`, remote files carry the MD5s their listing gives (ls-md5)."""
    if side.remote:
        try:
            root = client.stat(side.path)
        except NotFoundError:
            return None
        if root.type != "dir":
            raise UsageError(f"sync: {side} is a file; sync works on directories (get or put moves one file)")
        items = {}
        for remote_dir, relative, entries in walk_remote(client, side.path, md5):
            for entry in entries:
                path = remote_join(remote_dir, entry.name)
                items[posixpath.join(relative, entry.name)] = Item(
                    entry.type, path, entry.size, entry.mtime, md5=entry.md5
                )
        _mark_empty(items)
        return items
    root_path = Path(side.path)
    if not root_path.exists():
        return None
    if not root_path.is_dir():
        raise UsageError(f"sync: {side} is a file; sync works on directories (get or put moves one file)")
    local: dict[str, Item] = {}
    for item in walk_local(root_path, links):
        if not item.relative:
            continue
        if item.type == "dir" or item.skip:
            local[item.relative] = Item(item.type, str(item.path), skip=item.skip, empty=item.empty)
        else:
            st = item.path.stat()
            local[item.relative] = Item("file", str(item.path), st.st_size, st.st_mtime_ns / 1e9)
    return local


def _mark_empty(items: dict[str, Item]) -> None:
    """Mark the directories of a remote tree that hold nothing."""
    parents = {posixpath.dirname(relative) for relative in items}
    for relative, item in items.items():
        if item.type == "dir" and relative not in parents:
            items[relative] = Item("dir", item.path, empty=True)


def plan_sync(
    client: Client,
    source: Side,
    dest: Side,
    *,
    checksum: bool = False,
    delete: bool = False,
    filters: Filters | None = None,
    links: str | None = None,
) -> SyncPlan:
    """Compare the two trees and plan the transfers (and, with `delete`, the removals)."""
    filters = filters or Filters()
    if source.remote == dest.remote:
        raise UsageError(
            "sync: one side must be remote, written with a leading ':' (sync DIR :/DIR, or back)"
        )
    src = tree(client, source, links, checksum)
    if src is None:
        where = "on the server" if source.remote else "here"
        raise FileNotFoundError(2, f"no such directory {where}", str(source))
    dst = tree(client, dest, "skip", checksum)
    plan = SyncPlan()
    if dst is None:
        plan.jobs.append(_job(source, dest, "", Item("dir", source.path)))
        dst = {}
    for relative in sorted(src):
        item, there = src[relative], dst.get(relative)
        if not filters.keep(relative) and not (item.type == "dir" and not item.skip):
            continue
        if item.skip:
            plan.jobs.append(_job(source, dest, relative, item))
        elif item.type == "dir":
            if there is not None and there.type != "dir":
                plan.conflicts.append(_conflict(source, dest, relative, item, "a file is in the way"))
            elif there is None and item.empty and filters.keep(relative):
                plan.jobs.append(_job(source, dest, relative, item))
        elif there is not None and there.type == "dir":
            plan.conflicts.append(_conflict(source, dest, relative, item, "a directory is in the way"))
        else:
            why = _difference(client, source.remote, item, there, checksum)
            if why is None:
                plan.unchanged += 1
            else:
                job = _job(source, dest, relative, item)
                plan.jobs.append(job)
                plan.notes[job] = why
    if delete:
        plan.deletes = _deletes(src, dst, filters)
    return plan


def _difference(
    client: Client, from_remote: bool, item: Item, there: Item | None, checksum: bool
) -> str | None:
    """Why `item` must be sent over `there`, or None if the destination is up to date."""
    if there is None:
        return "new"
    if there.skip:
        return "a symlink at the destination"
    if there.size != item.size:
        return "size differs"
    if checksum:
        same = _md5(client, item, from_remote) == _md5(client, there, not from_remote)
        return None if same else "content differs"
    return None if abs(there.mtime - item.mtime) <= MTIME_TOLERANCE else "modification time differs"


def _md5(client: Client, item: Item, remote: bool) -> str | None:
    """A file's MD5: a remote one's from its listing if it had it, else from a `stat`."""
    if not remote:
        return md5_file(item.path)
    return item.md5 or client.stat(item.path).md5


def _deletes(src: dict[str, Item], dst: dict[str, Item], filters: Filters) -> list[Item]:
    """The destination's items the source lacks, topmost first. With filters, only the files
    they keep go (one a time): what they leave out of the sync is left alone."""
    filtered = bool(filters.include or filters.exclude)
    gone: list[str] = []
    for relative in sorted(dst):
        if relative in src or any(relative.startswith(parent + "/") for parent in gone):
            continue
        if filtered and (dst[relative].type == "dir" or not filters.keep(relative)):
            continue
        gone.append(relative)
    return [dst[relative] for relative in gone]


def _job(source: Side, dest: Side, relative: str, item: Item) -> Job:
    remote = source if source.remote else dest
    local = dest if source.remote else source
    local_path, remote_path = Path(local.join(relative)), remote.join(relative)
    if item.type == "dir" and not item.skip:
        return Job("mkdir" if dest.remote else "mkdir-local", local_path, remote_path)
    return Job("put" if dest.remote else "get", local_path, remote_path, item.size, item.skip)


def _conflict(source: Side, dest: Side, relative: str, item: Item, why: str) -> Outcome:
    job = _job(source, dest, relative, Item("file", item.path, item.size))
    return Outcome(job, "failed", error=IsADirectoryError(21, f"{why} at {dest.join(relative)}"))


def delete(client: Client, dest: Side, item: Item) -> None:
    """Remove one of a plan's `deletes`: a file, or a directory with all it holds."""
    if not dest.remote:
        path = Path(item.path)
        if item.type == "dir" and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    elif item.type != "dir" or "rm-recursive" in client.features:
        client.rm(item.path, recursive=item.type == "dir")
    else:  # a plain v1 server: empty the directory first, deepest first
        walked = list(walk_remote(client, item.path))
        for remote_dir, _, entries in reversed(walked):
            for entry in entries:
                if entry.type == "file":
                    client.rm(remote_join(remote_dir, entry.name))
            client.rm(remote_dir)
