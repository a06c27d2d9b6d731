"""`Client`: the sockftp protocol v1 as a Python library.

    with Client("127.0.0.1", 9999, user="alice", password="...") as client:
        client.put("report.pdf", "/reports/report.pdf", parents=True)
        for entry in client.ls("/reports"):
            print(entry.name, entry.size)
        client.get("/reports/report.pdf", "copy.pdf")

Every frame goes through `_send()` and `_response()`, which drive the
connection's `Conversation` (ftpproto.states) as the server's session does;
an error answer raises the `ftpproto.ProtocolError` subclass its code names,
and any error that leaves the stream out of step closes the connection
(`closed` then says so). Transfers verify the MD5 of
every file they move and take a `progress(done, total)` callback, so the
library draws nothing itself. Downloads land in a hidden partial file beside
the target and are renamed only once their MD5 matches; an interrupted
download resumes from that partial file the next time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import socket
import ssl
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ftpproto import (
    PROTOCOL_VERSION,
    BadRequestError,
    ChecksumMismatchError,
    Conversation,
    Event,
    ProtocolError,
    ProtocolMismatchError,
    Role,
    State,
    UnsupportedError,
    error_from_response,
)
from ftpproto.io import SENDFILE_CHUNK, BackgroundMD5, FrameStream, RateLimiter, Writeback, md5_of, new_md5
from ftpproto.messages import check_type, validate_md5
from ftpproto.states import answer_event, exchange_kind
from ftpproto.units import endpoint

__all__ = ["Client", "Entry", "HandshakeError", "Progress", "Transfer", "Usage", "md5_file"]

Progress = Callable[[int, int], object]
PARTIAL_PREFIX = ".sockftp-get-"


class HandshakeError(ConnectionError):
    """The connection opened, but no sockftp session could start on it."""


def _wrap_tls(sock: socket.socket, host: str, cafile: str | os.PathLike | None) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        raise HandshakeError(f"TLS: the server's certificate is not trusted: {exc.verify_message}") from exc
    except ssl.SSLError as exc:
        raise HandshakeError(
            f"TLS handshake with {host} failed ({exc.reason}); does the server use TLS?"
        ) from exc


@dataclass(frozen=True)
class Entry:
    """One `ls` entry, or a `stat` answer (which adds `md5` for files)."""

    name: str
    type: str
    size: int
    mtime: float
    md5: str | None = None
    mode: int | None = None  # permission bits, from a server with the attributes extension

    @classmethod
    def from_message(cls, message: dict, home: bool = False) -> Entry:
        """An entry from an `ls` page or a `stat` answer. With `home` (a stat), the empty
        name of the home itself is accepted: no download is ever named after it."""
        try:
            md5, mode = message.get("md5"), message.get("mode")
            name = message.get("name")
            return cls(
                name="" if home and name == "" else _safe_name(name),
                type=message["type"] if message.get("type") in ("file", "dir") else "file",
                size=check_type("size", message.get("size"), "int"),
                mtime=float(message.get("mtime", 0)),
                md5=validate_md5(md5) if md5 is not None else None,
                mode=check_type("mode", mode, "mode") if mode is not None else None,
            )
        except (ProtocolError, TypeError, ValueError, KeyError) as exc:
            raise ProtocolMismatchError(f"malformed entry from server: {exc}") from None


def _safe_name(value: object) -> str:
    """An entry name from the server, refused if it could lead a download elsewhere."""
    name: str = check_type("name", value, "str")
    if (
        name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    ):
        raise ValueError(f"unsafe name {name[:60]!r}")
    return name


@dataclass(frozen=True)
class Usage:
    """A home's bytes: `used`, its `quota` and what is `free` of it (None: no quota),
    and `disk_free`, what the server's storage can still take (None: not said)."""

    used: int
    quota: int | None
    free: int | None
    disk_free: int | None


def _features(greeting: dict) -> frozenset[str]:
    """The extensions a greeting offers; a v1 server names none."""
    features = greeting.get("features")
    if not isinstance(features, list):
        return frozenset()
    return frozenset(name for name in features if isinstance(name, str))


def _optional_count(answer: dict, name: str) -> int | None:
    value = answer.get(name)
    return None if value is None else check_type(name, value, "int")


@dataclass(frozen=True)
class Transfer:
    """What one `get` or `put` did. `sent` counts bytes that crossed the network.

    `skipped`: the destination already held this exact file, nothing was sent.
    `linked` (put only): the destination did not hold it, but the server had the same
    content elsewhere in the home and linked it into place (an instant upload)."""

    remote: str
    local: str
    size: int
    md5: str
    sent: int
    seconds: float
    skipped: bool = False
    linked: bool = False


def md5_file(path: str | os.PathLike) -> str:
    """Hex MD5 of a local file."""
    with open(path, "rb") as file:
        return md5_of(file).hexdigest()


class Client:
    """One connection to a sockftp server. Use it as a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9999,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        tls: bool = False,
        cafile: str | os.PathLike | None = None,
    ) -> None:
        """Connect, read the greeting and log in if `user` is given.

        With `tls`, the server's certificate is checked against the system's
        CAs, or against `cafile` alone when it is given."""
        self.host, self.port = host, port
        self.pace: RateLimiter | None = None  # set to hold transfers to a (shared) rate
        self.conversation = Conversation(Role.CLIENT)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        try:
            if tls:
                self.sock = _wrap_tls(self.sock, host, cafile)
            self.stream = FrameStream(self.sock)
            self.greeting = self._hello()
            self.features = _features(self.greeting)
            self.permissions: str | None = None
            if user is not None:
                self.login(user, password or "")
        except BaseException:
            self.sock.close()
            raise

    def _hello(self) -> dict:
        try:
            message = self.stream.recv()
        except (ConnectionError, TimeoutError) as exc:
            raise HandshakeError(
                f"no greeting from {endpoint(self.host, self.port)} ({exc.__class__.__name__}); "
                "if the server uses TLS, connect with TLS; if it sits behind a balancer, connect through it"
            ) from exc
        except ProtocolError as exc:
            raise HandshakeError(
                f"{endpoint(self.host, self.port)} does not speak sockftp: {exc.message}"
            ) from exc
        greeting = self._answer(message)  # an error answer (busy, say) raises as itself
        if greeting.get("type") != "hello" or greeting.get("proto") != PROTOCOL_VERSION:
            raise ProtocolMismatchError(f"not a sockftp v{PROTOCOL_VERSION} server: {str(greeting)[:80]}")
        return greeting

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.conversation.state is State.CLOSED or self.stream.closed

    def _drop(self) -> None:
        """End the connection at once: it is out of step with the server, or gone."""
        self.conversation.close()
        self.sock.close()

    @contextlib.contextmanager
    def _wire(self) -> Iterator[None]:
        """Drop the connection when an error leaves it out of step with the server:
        a broken link, a time-out, a closing protocol error, or any failure inside
        a data phase (wrapped around those by the caller)."""
        try:
            yield
        except ProtocolError as exc:
            if exc.closes:
                self._drop()
            raise
        except BaseException:
            self._drop()
            raise

    def _send(self, message: dict, event: Event = Event.REQUEST, data: bytes = b"") -> None:
        """Send a request (or a get's ack or cancel), which `event` records; `data`, an
        eager put's bytes, goes in the same write right after it."""
        kind = exchange_kind(message) if event is Event.REQUEST else None
        self.conversation.send(event, kind)
        with self._wire():
            self.stream.send(message, data)
        if kind == "put eager":
            self.conversation.send(Event.DATA_END)

    def _response(self) -> dict:
        with self._wire():
            message = self.stream.recv()
        return self._answer(message)

    def _answer(self, message: dict) -> dict:
        """Record the server's frame; an error answer raises as its error."""
        event, error = answer_event(self.conversation.state, message)
        with self._wire():
            self.conversation.receive(event)
        if error is not None:
            if event is Event.FATAL:
                self._drop()
                error.closes = True
            raise error
        return message

    def _request(self, op: str, **fields: object) -> dict:
        self._send({"op": op, **fields})
        return self._response()

    def _failed_data_phase(self, exc: OSError) -> Exception:
        """The server's reason for breaking a data phase, if it sent one before closing."""
        with contextlib.suppress(OSError, ProtocolError), self.stream.timed(2.0):
            message = self.stream.recv()
            if message.get("ok") is False:
                return error_from_response(message)
        return exc

    # -- ops -------------------------------------------------------------------

    def login(self, user: str, password: str) -> str | None:
        """Log in; returns the account's permissions (`r` or `rw`), if the server says."""
        permissions = self._request("login", user=user, password=password).get("permissions")
        self.permissions = permissions if isinstance(permissions, str) else None
        return self.permissions

    def ls(self, path: str = "/", md5: bool = False) -> list[Entry]:
        """Entries of a directory (or the one entry of a file), over as many pages as it takes.
        With `md5`, from a server that offers `ls-md5`, a file's entry has its MD5 when the
        server knows it without reading the file (else `md5` is None: `stat` it)."""
        message: dict[str, object] = {"op": "ls", "path": path}
        if md5 and "ls-md5" in self.features:
            message["md5"] = True
        self._send(message)
        entries = []
        while True:
            page = self._response()
            with self._wire():  # a malformed page: the rest of the listing would be out of step
                entries += [Entry.from_message(item) for item in page.get("entries", [])]
            if not page.get("more"):
                return entries

    def stat(self, path: str) -> Entry:
        answer = self._request("stat", path=path)
        with self._wire():
            return Entry.from_message(answer, home=True)

    def mkdir(self, path: str, parents: bool = False) -> None:
        self._request("mkdir", path=path, parents=parents)

    def rm(self, path: str, recursive: bool = False) -> None:
        """Remove a file or an empty directory; with `recursive` (the `rm-recursive`
        extension), a directory and everything below it."""
        if recursive:
            self._need("rm-recursive")
            self._request("rm", path=path, recursive=True)
        else:
            self._request("rm", path=path)

    def rename(self, path: str, to: str, overwrite: bool = False) -> None:
        """Give `path` the new name `to` in the same home, atomically (the `rename` extension)."""
        self._need("rename")
        self._request("rename", path=path, to=to, overwrite=overwrite)

    def usage(self) -> Usage:
        """The home's usage, quota and free space (the `usage` extension)."""
        self._need("usage")
        answer = self._request("usage")
        try:
            return Usage(
                used=check_type("used", answer.get("used"), "int"),
                quota=_optional_count(answer, "quota"),
                free=_optional_count(answer, "free"),
                disk_free=_optional_count(answer, "disk_free"),
            )
        except ProtocolError as exc:
            self._drop()
            raise ProtocolMismatchError(f"malformed usage answer: {exc.message}") from None

    def _need(self, feature: str) -> None:
        """Refuse, before sending anything, a call the server's greeting did not offer."""
        if feature not in self.features:
            raise UnsupportedError(f"the server does not offer {feature!r} (it speaks plain protocol v1)")

    def quit(self) -> None:
        with contextlib.suppress(OSError, ProtocolError):
            self._request("quit")

    def close(self) -> None:
        """Say `quit` if the connection is between exchanges, then close it. In the middle
        of one (an interrupted transfer), a frame would land inside the data: just close."""
        if not self.closed and self.conversation.state is State.IDLE:
            self.quit()
        self._drop()

    def get(
        self,
        remote: str,
        local: str | os.PathLike,
        progress: Progress | None = None,
        skip_identical: bool = True,
        preserve: bool = False,
    ) -> Transfer:
        """Download `remote` to `local`, verified; resumes an interrupted earlier download.

        With `skip_identical`, a local file that already has the remote size
        and MD5 is left alone and nothing is sent. With `preserve` (the attributes
        extension), the local file gets the remote modification time and execute bits.
        """
        started = time.monotonic()
        local = Path(local)
        if preserve:
            self._need("attributes")
        with _DownloadLock(local) as lock:
            held, partial = self._find_partial(local) if lock.inherited else (0, None)
            lock.partial = partial  # kept marked for a later get if this one fails early
            if partial is not None and held > 0:
                try:
                    header = self._get_header(remote, held, preserve)
                except BadRequestError:  # the file on the server is now shorter than what we hold
                    partial.unlink()
                    held, partial = 0, None
                    header = self._get_header(remote, 0, preserve)
            else:
                header = self._get_header(remote, 0, preserve)
            size, md5 = header["size"], header["md5"]
            if skip_identical and _same_file(local, size, md5):
                self._send({"op": "cancel"}, Event.CANCEL)
                if partial is not None:
                    partial.unlink()  # the target already holds the file
                if preserve:
                    set_attributes(local, header)
                return Transfer(remote, str(local), size, md5, 0, time.monotonic() - started, skipped=True)
            if partial is not None and partial.name != _partial_name(local, md5):
                self._send({"op": "cancel"}, Event.CANCEL)  # the partial file is of another version
                partial.unlink()
                held, header = 0, self._get_header(remote, 0, preserve)
                size, md5 = header["size"], header["md5"]
            partial = lock.partial = local.parent / _partial_name(local, md5)
            # Append only to a partial file found above; anything else under this name is
            # not known to be a prefix of this download.
            with self._wire(), open(partial, "a+b" if held else "w+b") as file:
                digest = new_md5(size - held, md5_of(file, held))
                writeback = Writeback(file, held)

                def write(chunk: memoryview) -> None:
                    file.write(chunk)
                    writeback.wrote(len(chunk))

                try:
                    self._send({"op": "ack"}, Event.ACK)
                    self._receive(write, digest, held, size, progress)
                    self.conversation.receive(Event.DATA_END)
                    file.flush()
                    os.fsync(file.fileno())
                except BaseException:
                    digest.close()
                    if file.tell() == 0:  # nothing held, nothing received: nothing to resume
                        partial.unlink(missing_ok=True)
                    raise
            if digest.hexdigest() != md5:
                partial.unlink()
                raise ChecksumMismatchError(f"{remote}: downloaded data does not match the server's md5")
            if preserve:
                set_attributes(partial, header)  # before the rename: the file appears complete
            os.replace(partial, local)
        return Transfer(remote, str(local), size, md5, size - held, time.monotonic() - started)

    def get_stream(self, remote: str, out: BinaryIO, progress: Progress | None = None) -> Transfer:
        """Download `remote` into the open binary stream `out` (stdout, a pipe) as it
        arrives, hashing it on the way. The bytes are out before the MD5 can be compared:
        a mismatch raises `ChecksumMismatchError` after them, and nothing is kept to resume.
        A failing `out` (a closed pipe) drops the connection in the middle of the data."""
        started = time.monotonic()
        header = self._get_header(remote, 0)
        size, md5 = header["size"], header["md5"]
        digest = new_md5(size)
        with self._wire():
            try:
                self._send({"op": "ack"}, Event.ACK)
                self._receive(out.write, digest, 0, size, progress)
                self.conversation.receive(Event.DATA_END)
            except BaseException:
                digest.close()
                raise
        out.flush()
        if digest.hexdigest() != md5:
            raise ChecksumMismatchError(f"{remote}: the data written out does not match the server's md5")
        return Transfer(remote, "-", size, md5, size, time.monotonic() - started)

    def _get_header(self, remote: str, offset: int, attributes: bool = False) -> dict:
        fields: dict[str, object] = {"path": remote, "offset": offset}
        if attributes:
            fields["attributes"] = True
        header = self._request("get", **fields)
        try:
            size = check_type("size", header.get("size"), "int")
            validate_md5(header.get("md5"))
            if header.get("offset") != offset or size < offset:
                raise ValueError(f"server answered offset {header.get('offset')!r} to {offset}")
            if attributes:
                check_type("mtime", header.get("mtime"), "time")
                check_type("mode", header.get("mode"), "mode")
        except (ProtocolError, ValueError) as exc:
            self._drop()  # the server now waits for ack or cancel: the stream is out of step
            raise ProtocolMismatchError(f"malformed get header: {exc}") from None
        header["md5"] = header["md5"].lower()
        return header

    def _receive(
        self,
        write: Callable[[memoryview], object],
        digest: BackgroundMD5,
        done: int,
        size: int,
        progress: Progress | None,
    ) -> None:
        """The data phase of a get: `size - done` bytes to `write`, hashed on the way."""

        def consume(chunk: memoryview) -> None:
            nonlocal done
            write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, size)
            if self.pace is not None:
                self.pace.consume(len(chunk))

        if progress is not None:
            progress(done, size)
        self.stream.recv_data(size - done, consume, space=digest.space)

    @staticmethod
    def _find_partial(local: Path) -> tuple[int, Path | None]:
        """An earlier interrupted download of `local`: (bytes held, its file)."""
        for candidate in local.parent.glob(_partial_name(local, "[0-9a-f]" * 32)):
            return candidate.stat().st_size, candidate
        return 0, None

    def put(
        self,
        local: str | os.PathLike,
        remote: str,
        overwrite: bool = True,
        parents: bool = False,
        progress: Progress | None = None,
        preserve: bool = False,
        tell_linked: bool = False,
    ) -> Transfer:
        """Upload `local` to `remote`, verified. Sends only what the server lacks:
        nothing if it holds this exact file, the rest if an earlier upload broke off.
        With `preserve` (the attributes extension), the stored file keeps the local
        modification time and execute bits.

        A server that has every byte already answers the same whether the destination
        held this file (`skipped`) or it linked identical content from elsewhere in the
        home (an instant upload). `tell_linked` stats the destination first, one more
        request, to report the second as `linked`; without it, both count as skipped."""
        started = time.monotonic()
        if preserve:
            self._need("attributes")
        with open_regular(local) as file:
            st = os.fstat(file.fileno())
            size = st.st_size
            md5 = md5_of(file).hexdigest()
            attributes = {"mtime": st.st_mtime_ns / 1e9, "mode": stat.S_IMODE(st.st_mode)} if preserve else {}
            # offset == size means "already there" or "linked from elsewhere in the home" (an
            # instant upload); what the destination held before tells the two apart. Without
            # `tell_linked`, ask only about an empty file (offset == size says nothing of it).
            before = self._stat_or_none(remote) if tell_linked or size == 0 else None
            was_there = (
                before is not None
                and (before.type, before.size) == ("file", size)
                and before.md5 in (None, md5)
            )
            # Before its ack the server may hash up to `size` bytes (a held partial, or the
            # destination): allow for that at a modest 50 MB/s on top of the usual timeout.
            timeout = self.stream.timeout
            with self.stream.timed(None if timeout is None else timeout + size / 50e6):
                ack = self._request(
                    "put", path=remote, size=size, md5=md5, overwrite=overwrite, parents=parents, **attributes
                )
            offset = ack.get("offset")
            if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= size:
                self._drop()  # the server now waits for data: the stream is out of step
                raise ProtocolMismatchError(f"server answered put with offset {offset!r} for {size} bytes")
            if progress is not None:
                progress(offset, size)
            done = offset

            def sent(count: int) -> None:
                nonlocal done
                done += count
                if progress is not None:
                    progress(done, size)
                if self.pace is not None:
                    self.pace.consume(count)

            chunk = RateLimiter.CHUNK if self.pace is not None else SENDFILE_CHUNK
            try:
                self.stream.send_file(file, offset, size - offset, sent, chunk)
            except OSError as exc:
                reason = self._failed_data_phase(exc)
                self._drop()
                raise reason from exc
            self.conversation.send(Event.DATA_END)
        result = self._response()
        if result.get("md5") != md5 or result.get("size") != size:
            raise ChecksumMismatchError(f"{remote}: the server stored a different file than was sent")
        skipped = offset == size and (was_there or (size > 0 and not tell_linked))
        linked = offset == size and size > 0 and not skipped
        seconds = time.monotonic() - started
        return Transfer(remote, str(local), size, md5, size - offset, seconds, skipped, linked)

    def _stat_or_none(self, remote: str) -> Entry | None:
        """The entry at `remote`, or None where there is none (or it cannot be seen)."""
        try:
            return self.stat(remote)
        except ProtocolError as exc:
            if exc.closes:
                raise
            return None


class _DownloadLock:
    """An exclusive lock on one download target, so two downloads to the same name
    (in this process or another) never write one partial file at once.

    The lock file also marks an interrupted download: it is removed when a download
    ends without leaving a partial file, and stays when one is left for a resume (or
    when the process dies). Only a download that finds it `inherited` looks for a
    partial file, so a batch into a large folder does not list the folder per file.
    """

    def __init__(self, local: Path) -> None:
        self.path = local.parent / f"{_partial_name(local, 'lock')}"
        self.partial: Path | None = None  # the download's partial file, once it has one
        self.inherited = False

    def __enter__(self) -> _DownloadLock:
        try:
            self.fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except FileExistsError:
            self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            self.inherited = True
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(self.path).st_ino != os.fstat(self.fd).st_ino:
                raise BlockingIOError  # its holder removed it between our open and flock
        except (BlockingIOError, FileNotFoundError):
            os.close(self.fd)
            raise OSError(errno.EBUSY, "another download to this name is in progress") from None
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.partial is None or not self.partial.exists():
                # Only our own lock file: someone may have deleted it and another download made a new one.
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                        os.unlink(self.path)
        finally:
            os.close(self.fd)


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open a local file to upload. Non-blocking, so a FIFO cannot hang the client;
    anything but a regular file is refused."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return os.fdopen(fd, "rb")


def _partial_name(local: Path, md5: str) -> str:
    """Hidden name of a download in progress: fixed length, so any target name fits."""
    key = hashlib.sha256(os.fsencode(local.name)).hexdigest()[:16]
    return f"{PARTIAL_PREFIX}{key}-{md5}"


def set_attributes(local: Path | int, header: dict) -> None:
    """Give a downloaded file (a path, or an open descriptor) the remote modification
    time, and execute permission wherever it has read permission if the remote file
    is executable."""
    bits = stat.S_IMODE(os.stat(local).st_mode) & 0o666
    if header["mode"] & 0o111:
        bits |= (bits & 0o444) >> 2
    os.chmod(local, bits)
    os.utime(local, ns=(time.time_ns(), round(header["mtime"] * 1e9)))


def _same_file(local: Path, size: int, md5: str) -> bool:
    try:
        return local.is_file() and local.stat().st_size == size and md5_file(local) == md5
    except OSError:
        return False
