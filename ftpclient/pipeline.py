"""Pipelined transfers of many small files over one connection (the `eager` extension).

    put_pipelined(client, [(Path("a.txt"), "/in/a.txt"), ...], on_done=report, parents=True)
    get_pipelined(client, [("/in/a.txt", Path("a.txt")), ...], on_done=report)

A v1 exchange waits for the other side at every step. With the eager extension
a small file's request and bytes go out together, and the next ones follow
before the first answer is back (up to `window` unanswered), so one connection
moves small files as fast as the server commits them, which it does in groups.
Downloads likewise ask for the next files before the first has arrived, and
make what they wrote durable together: each file lands beside its target under
a hidden name, a group of them is fsynced at once, renamed, and each directory
fsynced once. Every file is still checked against its MD5.

Anything the eager path does not fit goes through `Client.put`/`Client.get` as
usual, in its turn: a file over `EAGER_PUT_MAX` bytes, a download whose target
exists (it may be identical: only the v1 exchange can see that and send
nothing), and everything when the server does not offer `eager`.
`on_done(index, result)` gets each item's `Transfer`, or the error that failed
it alone; an error that ends the connection is raised.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ftpproto import ChecksumMismatchError, Event, ProtocolError, ProtocolMismatchError
from ftpproto.io import new_md5
from ftpproto.io.writeback import sync_filesystems
from ftpproto.messages import EAGER_PUT_MAX, check_type, validate_md5

from .client import PARTIAL_PREFIX, Client, Entry, Transfer, open_regular, set_attributes

__all__ = ["GROUP", "WINDOW", "TempFiles", "get_pipelined", "put_pipelined", "stat_pipelined"]

WINDOW = 64  # requests sent ahead of their answers: a whole group of the server's (GROUP_MAX)
GROUP = 64  # downloaded files made durable together
SYNC_THREADS = 8

Done = Callable[[int, Transfer | BaseException], object]


@dataclass
class _Put:
    index: int
    local: Path
    remote: str
    size: int
    md5: str
    started: float


def put_pipelined(
    client: Client,
    items: Sequence[tuple[Path, str]],
    on_done: Done,
    *,
    overwrite: bool = True,
    parents: bool = False,
    preserve: bool = False,
    window: int = WINDOW,
) -> None:
    """Upload each (local, remote) pair, `window` requests ahead of their answers."""
    pending: deque[_Put] = deque()

    def settle() -> None:
        put = pending.popleft()
        result = _answer(client, put.index, on_done)
        if result is None:
            return
        if result.get("md5") != put.md5 or result.get("size") != put.size:
            on_done(put.index, ChecksumMismatchError(f"{put.remote}: the server stored a different file"))
            return
        # All of it held already (offset = size): the server linked identical content.
        linked = put.size > 0 and result.get("offset") == put.size
        transfer = Transfer(
            put.remote, str(put.local), put.size, put.md5, put.size, _since(put.started), linked=linked
        )
        on_done(put.index, transfer)

    eager = "eager" in client.features and (not preserve or "attributes" in client.features)

    def run() -> None:
        for index, (local, remote) in enumerate(items):
            started = time.monotonic()
            try:
                data, st = _read_small(local) if eager else (None, None)
            except OSError as exc:
                on_done(index, exc)
                continue
            if data is None or st is None:  # too big for one go, or no eager server: the v1 way, in turn
                while pending:
                    settle()
                put = partial(
                    client.put, local, remote, overwrite=overwrite, parents=parents, preserve=preserve
                )
                _in_turn(client, index, put, on_done)
                continue
            while client.conversation.outstanding >= window:
                settle()
            md5 = _md5(data)
            message: dict[str, object] = {
                "op": "put",
                "path": remote,
                "size": len(data),
                "md5": md5,
                "eager": True,
            }
            message.update(overwrite=overwrite, parents=parents)
            if preserve:
                message.update(mtime=st.st_mtime_ns / 1e9, mode=stat.S_IMODE(st.st_mode))
            if client.pace is not None:
                client.pace.consume(len(data))
            client._send(message, data=data)
            pending.append(_Put(index, local, remote, len(data), md5, started))
        while pending:
            settle()

    try:
        run()
    except BaseException:
        _out_of_step(client)
        raise


class TempFiles:
    """The hidden files downloads are writing and have not renamed yet, across threads:
    what a caller removes after an interruption cut the threads short."""

    def __init__(self) -> None:
        self._paths: set[str] = set()
        self._lock = threading.Lock()

    def add(self, path: str) -> None:
        with self._lock:
            self._paths.add(path)

    def discard(self, path: str) -> None:
        with self._lock:
            self._paths.discard(path)

    def remove_all(self) -> None:
        with self._lock:
            paths, self._paths = self._paths, set()
        for path in paths:
            _unlink(path)


@dataclass
class _Get:
    index: int
    remote: str
    local: Path
    started: float


@dataclass
class _Written:
    get: _Get
    temp: str
    fd: int
    size: int
    md5: str
    header: dict


def stat_pipelined(client: Client, paths: Sequence[str], window: int = WINDOW) -> list[Entry | ProtocolError]:
    """`stat` each path, `window` requests ahead (plain v1 pipelining: any server takes
    it); each path's own error (`not_found`) is its result."""
    results: list[Entry | ProtocolError] = []
    pending = 0

    def settle() -> None:
        try:
            answer = client._response()
            with client._wire():
                results.append(Entry.from_message(answer))
        except ProtocolError as exc:
            if exc.closes:
                raise
            results.append(exc)

    for path in paths:
        while pending >= window:
            settle()
            pending -= 1
        client._send({"op": "stat", "path": path})
        pending += 1
    for _ in range(pending):
        settle()
    return results


def get_pipelined(
    client: Client,
    items: Sequence[tuple[str, Path]],
    on_done: Done,
    *,
    preserve: bool = False,
    window: int = WINDOW,
    replace: bool = False,
    temps: TempFiles | None = None,
) -> None:
    """Download each (remote, local) pair, `window` requests ahead, committing in groups.
    An existing target goes the v1 way (it may be identical), unless `replace` says the
    caller has checked the targets already. `temps` keeps the names of the hidden files
    being written, for a caller whose threads an interruption may cut short."""
    pending: deque[_Get] = deque()
    written: list[_Written] = []
    eager = "eager" in client.features and (not preserve or "attributes" in client.features)
    temps = TempFiles() if temps is None else temps

    def receive() -> None:
        get = pending.popleft()
        header = _answer(client, get.index, on_done)
        if header is None:
            return
        size, md5 = _checked_header(client, header, preserve)
        temp = os.path.join(os.path.dirname(get.local), f"{PARTIAL_PREFIX}{uuid.uuid4().hex}")
        try:
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except OSError as exc:  # this file's folder refuses it: the file fails alone, in step
            with client._wire():
                client.stream.recv_data(size, lambda chunk: None)
                client.conversation.receive(Event.DATA_END)
            on_done(get.index, exc)
            return
        temps.add(temp)
        digest = new_md5(size)
        try:
            with client._wire():

                def consume(chunk: memoryview) -> None:
                    view = chunk
                    while view:
                        view = view[os.write(fd, view) :]
                    digest.update(chunk)
                    if client.pace is not None:
                        client.pace.consume(len(chunk))

                client.stream.recv_data(size, consume)
                client.conversation.receive(Event.DATA_END)
        except BaseException:
            digest.close()
            os.close(fd)
            _unlink(temp)
            temps.discard(temp)
            raise
        if digest.hexdigest() != md5:
            os.close(fd)
            _unlink(temp)
            temps.discard(temp)
            on_done(
                get.index,
                ChecksumMismatchError(f"{get.remote}: downloaded data does not match the server's md5"),
            )
            return
        written.append(_Written(get, temp, fd, size, md5, header))
        if len(written) >= GROUP:
            commit()

    def commit() -> None:
        try:
            _commit_downloads(written, preserve, on_done, temps)
        finally:
            written.clear()

    made: set[Path] = set()  # folders made (or found) already: one mkdir each, not one per file
    try:
        for index, (remote, local) in enumerate(items):
            if local.parent not in made:
                try:
                    local.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:  # a file where its folder should be: this file fails alone
                    on_done(index, exc)
                    continue
                made.add(local.parent)
            if not eager or (not replace and os.path.lexists(local)):  # v1 can see an identical file
                while pending:
                    receive()
                _in_turn(client, index, partial(client.get, remote, local, preserve=preserve), on_done)
                continue
            while client.conversation.outstanding >= window:
                receive()
            message: dict[str, object] = {"op": "get", "path": remote, "offset": 0, "eager": True}
            if preserve:
                message["attributes"] = True
            client._send(message)
            pending.append(_Get(index, remote, local, time.monotonic()))
        while pending:
            receive()
        commit()
    except BaseException:
        _out_of_step(client)
        raise
    finally:
        for left in written:  # interrupted: what was not committed is not kept
            if left.fd >= 0:
                os.close(left.fd)
            _unlink(left.temp)
            temps.discard(left.temp)


def _out_of_step(client: Client) -> None:
    """An exchange was cut short (an interruption, a local failure): answers or data are
    still owed, so nothing more may be read or sent on this connection."""
    if client.conversation.outstanding:
        client._drop()


def _commit_downloads(group: list[_Written], preserve: bool, on_done: Done, temps: TempFiles) -> None:
    """Make the group's files durable at once (one `syncfs`, or an fsync each in parallel),
    rename each over its target, fsync each directory once."""
    if not group:
        return
    failures: dict[int, OSError] = {}
    for item in group:
        try:
            if preserve:
                set_attributes(item.fd, item.header)
        except OSError as exc:
            failures[item.get.index] = exc
    flushed = sync_filesystems([-1 if item.get.index in failures else item.fd for item in group])

    def sync(item: _Written) -> None:
        try:
            os.fsync(item.fd)
        except OSError as exc:
            failures[item.get.index] = exc

    left = [
        item for index, item in enumerate(group) if index not in flushed and item.get.index not in failures
    ]
    if left:
        with ThreadPoolExecutor(max_workers=min(SYNC_THREADS, len(left))) as pool:
            list(pool.map(sync, left))
    directories: dict[Path, list[_Written]] = {}
    for item in group:
        os.close(item.fd)
        item.fd = -1
        if item.get.index not in failures:
            try:
                os.replace(item.temp, item.get.local)
            except OSError as exc:
                failures[item.get.index] = exc
            else:
                temps.discard(item.temp)
                directories.setdefault(item.get.local.parent, []).append(item)
                continue
        _unlink(item.temp)
        temps.discard(item.temp)
    for directory, items in directories.items():
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            for item in items:
                failures[item.get.index] = exc
    for item in group:
        failure = failures.get(item.get.index)
        get = item.get
        on_done(
            get.index,
            failure
            or Transfer(get.remote, str(get.local), item.size, item.md5, item.size, _since(get.started)),
        )


def _answer(client: Client, index: int, on_done: Done) -> dict | None:
    """The next answer; an error answer that leaves the connection usable is item
    `index`'s own failure (reported, None returned); one that ends it is raised."""
    try:
        return client._response()
    except ProtocolError as exc:
        if exc.closes:
            raise
        on_done(index, exc)
        return None


def _in_turn(client: Client, index: int, transfer: Callable[[], Transfer], on_done: Done) -> None:
    """One transfer the v1 way: its own failure is reported; one that ends the connection is raised."""
    try:
        result = transfer()
    except (ProtocolError, OSError) as exc:
        if client.closed or (isinstance(exc, ProtocolError) and exc.closes):
            raise
        on_done(index, exc)
    else:
        on_done(index, result)


def _checked_header(client: Client, header: dict, preserve: bool) -> tuple[int, str]:
    try:
        size = check_type("size", header.get("size"), "int")
        md5 = validate_md5(header.get("md5"))
        if header.get("offset") != 0:
            raise ValueError(f"server answered offset {header.get('offset')!r} to 0")
        if preserve:
            check_type("mtime", header.get("mtime"), "time")
            check_type("mode", header.get("mode"), "mode")
    except (ProtocolError, ValueError) as exc:
        client._drop()  # its data may follow: the stream is out of step
        raise ProtocolMismatchError(f"malformed get header: {exc}") from None
    return size, md5


def _read_small(local: Path) -> tuple[bytes | None, os.stat_result | None]:
    """A file's bytes if it fits one eager put (None if not), and its stat."""
    with open_regular(local) as file:
        st = os.fstat(file.fileno())
        if st.st_size > EAGER_PUT_MAX:
            return None, None
        data = file.read(EAGER_PUT_MAX + 1)
    if len(data) > EAGER_PUT_MAX:  # grew meanwhile
        return None, None
    return data, st


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _since(started: float) -> float:
    return time.monotonic() - started
