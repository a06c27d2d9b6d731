"""`ftpclient.Client` against our real server, and against scripted servers that
misbehave on purpose (wrong md5, short data, busy, not sockftp at all)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ftpclient import Client, ProtocolMismatchError
from ftpclient.client import _partial_name
from ftpproto import (
    AuthFailedError,
    BusyError,
    ChecksumMismatchError,
    ExistsError,
    NotFoundError,
)
from ftpproto.io import BUFFER_SIZE, FrameStream, ShortReadError

from .conftest import wait_until

pytestmark = pytest.mark.timeout(60)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def client(server) -> Iterator[Client]:
    with Client("127.0.0.1", server.port, timeout=10) as c:
        yield c


@pytest.mark.parametrize(
    "size", [0, 1, BUFFER_SIZE - 1, BUFFER_SIZE, BUFFER_SIZE + 1, 3 * BUFFER_SIZE + 7, 20 * 1024 * 1024]
)
def test_round_trip_byte_for_byte(client, server, tmp_path, size):
    data = os.urandom(size)
    source, copy = tmp_path / "source.bin", tmp_path / "copy.bin"
    source.write_bytes(data)
    sent = client.put(source, "/dir/file.bin", parents=True)
    assert (sent.size, sent.md5, sent.sent) == (size, md5(data), size)
    assert (server.root / "dir" / "file.bin").read_bytes() == data
    got = client.get("/dir/file.bin", copy)
    assert (got.size, got.md5, got.sent) == (size, md5(data), size)
    assert copy.read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == ["copy.bin", "server.yaml", "source.bin", "storage", "users.yaml"]


@pytest.mark.parametrize(
    "name", ["with spaces.txt", "中文文件名.txt", "emoji 😀🎉.bin", "mixed 中 😀 e\u0301"]
)
def test_unusual_names_round_trip(client, tmp_path, name):
    local = tmp_path / name
    local.write_bytes(name.encode() * 100)
    client.put(local, f"/{name}")
    assert [e.name for e in client.ls("/")] == [name]
    local.unlink()
    client.get(f"/{name}", local)
    assert local.read_bytes() == name.encode() * 100


def test_progress_reports_reach_the_total(client, tmp_path):
    (tmp_path / "f").write_bytes(os.urandom(1_000_000))
    calls: list[tuple[int, int]] = []
    client.put(tmp_path / "f", "/f", progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 1_000_000) and calls[-1] == (1_000_000, 1_000_000)
    calls.clear()
    client.get("/f", tmp_path / "g", progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (1_000_000, 1_000_000)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_repeated_put_sends_nothing(client, tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 50_000)
    assert client.put(tmp_path / "f", "/f").sent == 50_000
    assert client.put(tmp_path / "f", "/f").sent == 0


def test_get_of_an_identical_local_file_is_skipped(client, tmp_path):
    (tmp_path / "f").write_bytes(b"same")
    client.put(tmp_path / "f", "/f")
    transfer = client.get("/f", tmp_path / "f")
    assert transfer.skipped and transfer.sent == 0


def test_put_resumes_an_upload_cut_off_mid_data(client, server, tmp_path):
    data = os.urandom(2_000_000)
    (tmp_path / "f").write_bytes(data)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        stream = FrameStream(sock)
        stream.recv()
        stream.send({"op": "put", "path": "f", "size": len(data), "md5": md5(data)})
        assert stream.recv()["offset"] == 0
        sock.sendall(data[:1_200_000])
    assert wait_until(lambda: server.server.storage.uploads_running == 0)
    assert not (server.root / "f").exists()
    transfer = client.put(tmp_path / "f", "/f")
    assert transfer.sent == 800_000
    assert (server.root / "f").read_bytes() == data


def leave_partial(target: Path, md5_hex: str, data: bytes) -> None:
    """What an interrupted download leaves beside its target: the partial file and its lock file."""
    (target.parent / _partial_name(target, md5_hex)).write_bytes(data)
    (target.parent / _partial_name(target, "lock")).touch()


def test_get_resumes_from_a_partial_download(client, server, tmp_path):
    data = os.urandom(1_000_000)
    (server.root / "f").write_bytes(data)
    target = tmp_path / "f"
    leave_partial(target, md5(data), data[:600_000])
    transfer = client.get("/f", target)
    assert transfer.sent == 400_000
    assert target.read_bytes() == data
    assert not list(tmp_path.glob(".sockftp-get-*"))


def test_a_get_cut_off_leaves_a_partial_that_the_next_get_resumes(scripted, client, server, tmp_path):
    data = os.urandom(1_000_000)
    (server.root / "f").write_bytes(data)

    def script(stream: FrameStream) -> None:
        stream.recv()
        stream.send({"ok": True, "offset": 0, "size": len(data), "md5": md5(data)})
        stream.recv()  # the ack
        stream.sock.sendall(data[:300_000])

    port = scripted(script)
    with Client("127.0.0.1", port, timeout=10) as c, pytest.raises(OSError):
        c.get("/f", tmp_path / "f")
    assert not (tmp_path / "f").exists()
    assert client.get("/f", tmp_path / "f").sent == 700_000
    assert (tmp_path / "f").read_bytes() == data and not list(tmp_path.glob(".sockftp-get-*"))


def test_a_stray_file_under_the_partial_name_is_not_resumed(client, server, tmp_path):
    """Without the lock file an interrupted download leaves, a file under the partial
    name is no known prefix of the download: it is overwritten, never appended to."""
    data = os.urandom(10_000)
    (server.root / "f").write_bytes(data)
    target = tmp_path / "f"
    (tmp_path / _partial_name(target, md5(data))).write_bytes(b"not a prefix")
    assert client.get("/f", target).sent == 10_000
    assert target.read_bytes() == data and not list(tmp_path.glob(".sockftp-get-*"))


def test_a_partial_download_of_another_version_is_discarded(client, server, tmp_path):
    data = os.urandom(1_000)
    (server.root / "f").write_bytes(data)
    target = tmp_path / "f"
    leave_partial(target, md5(b"old version"), b"old ")
    transfer = client.get("/f", target)
    assert transfer.sent == 1_000 and target.read_bytes() == data
    assert not list(tmp_path.glob(".sockftp-get-*"))


def test_errors_carry_the_protocol_code(client, server, tmp_path):
    with pytest.raises(NotFoundError) as info:
        client.stat("/nope")
    assert info.value.code == "not_found"
    (tmp_path / "f").write_bytes(b"1")
    client.put(tmp_path / "f", "/f")
    (tmp_path / "f").write_bytes(b"2")
    with pytest.raises(ExistsError):
        client.put(tmp_path / "f", "/f", overwrite=False)
    assert client.stat("/f").md5 == md5(b"1")  # and the connection still works


def test_login_and_wrong_password(server):
    with Client("127.0.0.1", server.port, user="alice", password="alice-pw", timeout=10) as c:
        assert c.permissions == "rw"
    with pytest.raises(AuthFailedError):
        Client("127.0.0.1", server.port, user="alice", password="wrong", timeout=10)


def test_ls_reads_every_page(client, server):
    (server.root / "many").mkdir()
    for i in range(2500):
        (server.root / "many" / f"{i:04}").touch()
    assert [e.name for e in client.ls("/many")] == [f"{i:04}" for i in range(2500)]


def test_mkdir_rm_stat(client):
    client.mkdir("/a/b", parents=True)
    assert client.stat("/a/b").type == "dir"
    client.rm("/a/b")
    assert [e.name for e in client.ls("/a")] == []


# -- scripted servers that misbehave ------------------------------------------------------


class ScriptedServers:
    """Servers of one connection each, run by a script in a thread.

    `close()` joins them and raises what a script raised (an `assert` in a script
    thread is a failure, not a warning), or fails if one is still running."""

    def __init__(self) -> None:
        self.listeners: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, script: Callable[[FrameStream], None], greeting: dict | None = None) -> int:
        """Serve one connection with `script(stream)`, greeting sent; returns the port."""
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(10)
        self.listeners.append(listener)

        def run() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(10)
                with conn:
                    stream = FrameStream(conn)
                    stream.send(
                        greeting or {"type": "hello", "proto": 1, "server": "fake/0", "auth": "optional"}
                    )
                    with contextlib.suppress(OSError):  # the client hung up: the test checks the client
                        script(stream)
            except BaseException as exc:
                self.errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)
        return listener.getsockname()[1]

    def close(self) -> None:
        for thread in self.threads:
            thread.join(10)
        for listener in self.listeners:
            listener.close()
        if self.errors:
            raise self.errors[0]
        assert not any(thread.is_alive() for thread in self.threads), "a scripted server is still running"


@pytest.fixture
def scripted() -> Iterator[Callable[..., int]]:
    """Serve one connection with `script(stream)`, greeting sent; returns the port.
    A script that fails (or hangs) fails the test at teardown."""
    servers = ScriptedServers()
    yield servers.start
    servers.close()


def test_a_failing_script_fails_the_test():
    servers = ScriptedServers()

    def script(stream: FrameStream) -> None:
        assert stream.recv()["op"] == "stat", "the script expected a stat"

    port = servers.start(script)
    with Client("127.0.0.1", port, timeout=10) as c, pytest.raises(OSError):
        c.ls("/")  # the script's thread fails and hangs up
    with pytest.raises(AssertionError, match="the script expected a stat"):
        servers.close()


def serve_get(body: bytes, announced: bytes, size: int | None = None) -> Callable[[FrameStream], None]:
    def script(stream: FrameStream) -> None:
        request = stream.recv()
        stream.send(
            {"ok": True, "size": len(announced) if size is None else size, "md5": md5(announced), "offset": 0}
        )
        assert stream.recv() == {"op": "ack"}
        stream.sock.sendall(body)
        stream.recv()  # wait for the client to hang up
        assert request["op"] == "get"

    return script


def test_wrong_md5_from_the_server_leaves_no_file(scripted, tmp_path):
    port = scripted(serve_get(b"corrupted!", announced=b"original!!"))
    with Client("127.0.0.1", port, timeout=10) as c, pytest.raises(ChecksumMismatchError):
        c.get("/f", tmp_path / "f")
    assert os.listdir(tmp_path) == []


def test_short_data_from_the_server_leaves_no_file_under_the_target_name(scripted, tmp_path):
    def script(stream: FrameStream) -> None:
        stream.recv()
        stream.send({"ok": True, "size": 1000, "md5": md5(b"x" * 1000), "offset": 0})
        stream.recv()
        stream.sock.sendall(b"x" * 400)

    port = scripted(script)
    client = Client("127.0.0.1", port, timeout=10)
    with pytest.raises(ShortReadError):
        client.get("/f", tmp_path / "f")
    assert client.closed
    assert not (tmp_path / "f").exists()
    # kept to resume from, with the lock file that tells the next get to look for it
    lock, partial = sorted(
        tmp_path.glob(".sockftp-get-*"), key=lambda p: p.name.endswith("-lock"), reverse=True
    )
    assert lock.name.endswith("-lock") and partial.read_bytes() == b"x" * 400


def test_busy_greeting_raises_busy(scripted):
    port = scripted(lambda stream: None, greeting={"ok": False, "error": "busy", "message": "full"})
    with pytest.raises(BusyError, match="full"):
        Client("127.0.0.1", port, timeout=10)


def test_a_server_that_is_not_sockftp(scripted):
    port = scripted(lambda stream: None, greeting={"type": "hello", "proto": 2})
    with pytest.raises(ProtocolMismatchError):
        Client("127.0.0.1", port, timeout=10)


def test_a_put_result_with_another_md5_is_an_error(scripted, tmp_path):
    def script(stream: FrameStream) -> None:
        request = stream.recv()
        stream.send({"ok": True, "offset": 0})
        stream.recv_data(request["size"], lambda chunk: None)
        stream.send({"ok": True, "size": request["size"], "md5": "0" * 32})
        stream.recv()

    (tmp_path / "f").write_bytes(b"data")
    port = scripted(script)
    with Client("127.0.0.1", port, timeout=10) as c, pytest.raises(ChecksumMismatchError):
        c.put(tmp_path / "f", "/f")


def test_a_get_header_with_a_bad_offset_is_refused(scripted, tmp_path):
    def script(stream: FrameStream) -> None:
        stream.recv()
        stream.send({"ok": True, "size": 10, "md5": "0" * 32, "offset": 3})
        stream.recv()

    port = scripted(script)
    with Client("127.0.0.1", port, timeout=10) as c, pytest.raises(ProtocolMismatchError):
        c.get("/f", tmp_path / "f")
    assert not Path(tmp_path / "f").exists()


def test_a_partial_download_longer_than_the_remote_file_is_dropped(client, server, tmp_path):
    (server.root / "f").write_bytes(b"short")
    target = tmp_path / "f"
    leave_partial(target, md5(b"an older, much longer version"), b"x" * 1000)
    assert client.get("/f", target).sent == 5
    assert target.read_bytes() == b"short" and not list(tmp_path.glob(".sockftp-get-*"))


@pytest.mark.parametrize("name", ["..", "../escape.txt", "/etc/x", "a/b", "", "nul\x00", "."])
def test_a_hostile_server_cannot_name_files_outside_the_target(scripted, tmp_path, name):
    def script(stream: FrameStream) -> None:
        stream.recv()
        entry = {"name": name, "type": "file", "size": 1, "mtime": 0.0}
        stream.send({"ok": True, "path": "/", "entries": [entry], "more": False})
        stream.recv()

    port = scripted(script)
    with (
        Client("127.0.0.1", port, timeout=10) as c,
        pytest.raises(ProtocolMismatchError, match="unsafe name"),
    ):
        c.ls("/")


def test_two_downloads_to_one_name_at_once_do_not_share_a_partial(client, server, tmp_path):
    from ftpclient.client import _DownloadLock

    (server.root / "f").write_bytes(b"data")
    with _DownloadLock(tmp_path / "f"), pytest.raises(OSError, match="another download"):
        client.get("/f", tmp_path / "f")
    assert client.get("/f", tmp_path / "f").sent == 4


def test_a_get_that_fails_before_its_data_keeps_the_partial_marked_for_the_next(client, server, tmp_path):
    data = os.urandom(1_000_000)
    target = tmp_path / "f"
    leave_partial(target, md5(data), data[:600_000])
    with pytest.raises(NotFoundError):  # the remote file is away for a moment
        client.get("/f", target)
    (server.root / "f").write_bytes(data)
    assert client.get("/f", target).sent == 400_000
    assert target.read_bytes() == data and not list(tmp_path.glob(".sockftp-get-*"))


def test_a_skipped_get_removes_a_partial_of_another_version(client, server, tmp_path):
    data = os.urandom(10_000)
    (server.root / "f").write_bytes(data)
    target = tmp_path / "f"
    target.write_bytes(data)
    leave_partial(target, md5(b"other version"), b"old")
    assert client.get("/f", target).skipped
    assert not list(tmp_path.glob(".sockftp-get-*"))


def test_a_get_cut_off_before_any_data_leaves_nothing_behind(scripted, tmp_path):
    data = os.urandom(1000)

    def script(stream: FrameStream) -> None:
        stream.recv()
        stream.send({"ok": True, "offset": 0, "size": len(data), "md5": md5(data)})
        stream.recv()  # the ack; then the server hangs up

    port = scripted(script)
    with Client("127.0.0.1", port, timeout=10) as c, pytest.raises(OSError):
        c.get("/f", tmp_path / "f")
    assert not list(tmp_path.iterdir())


def test_a_lock_file_deleted_during_a_get_does_not_fail_it(client, server, tmp_path):
    data = os.urandom(100_000)
    (server.root / "f").write_bytes(data)
    target = tmp_path / "f"

    def progress(done: int, total: int) -> None:
        (tmp_path / _partial_name(target, "lock")).unlink(missing_ok=True)

    open_fds = len(os.listdir("/proc/self/fd"))
    assert client.get("/f", target, progress=progress).sent == len(data)
    assert target.read_bytes() == data
    assert len(os.listdir("/proc/self/fd")) == open_fds
