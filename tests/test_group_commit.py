"""Pipelined eager puts and their group commit keep every guarantee: answers in order,
`ok` only for durable files, nothing torn after a crash, v1 clients unaffected."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ftpproto import encode_frame
from ftpproto.io import FrameStream, PeerClosedError, ShortReadError, writeback
from ftpserver.storage.local import LocalStorage

from .conftest import counting_fsyncs, eager_put, wait_until, write_config

pytestmark = pytest.mark.timeout(60)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def request(stream: FrameStream, op: str, **fields: object) -> dict:
    stream.send({"op": op, **fields})
    return stream.recv()


def connect(port: int) -> FrameStream:
    stream = FrameStream(socket.create_connection(("127.0.0.1", port), timeout=10))
    stream.recv()
    return stream


def test_pipelined_puts_are_committed_in_groups_and_answered_in_order(server, monkeypatch):
    sizes: list[int] = []
    real = LocalStorage.commit_group

    def recording(self, group):
        sizes.append(len(group))
        return real(self, group)

    monkeypatch.setattr(LocalStorage, "commit_group", recording)
    files = {f"g/f{i:03}": os.urandom(8192) for i in range(200)}
    stream = connect(server.port)
    stream.send({"op": "mkdir", "path": "g"})
    batch = b"".join(eager_put(name, data) for name, data in files.items())
    stream.sock.sendall(batch + encode_frame({"op": "stat", "path": "g/f199"}))
    assert stream.recv() == {"ok": True}
    for name, data in files.items():
        assert stream.recv() == {"ok": True, "size": len(data), "md5": md5(data), "offset": 0}, name
    answer = stream.recv()
    assert answer.get("md5") == md5(files["g/f199"]), answer  # the stat, after every put's answer
    for name, data in files.items():
        assert (server.root / name).read_bytes() == data
    assert sum(sizes) == 200 and max(sizes) > 1, sizes  # not vacuous: files were committed together
    assert not [p for p in (server.root / "g").iterdir() if p.name.startswith(".sockftp")]


def test_a_failure_inside_a_group_is_that_puts_answer_alone(server):
    stream = connect(server.port)
    (server.root / "taken").write_bytes(b"already here")
    good, other = os.urandom(4000), os.urandom(5000)
    frames = [
        eager_put("one", good),
        encode_frame(  # no overwrite: refused when it would be published
            {"op": "put", "path": "taken", "size": 3, "md5": md5(b"new"), "eager": True, "overwrite": False}
        )
        + b"new",
        encode_frame({"op": "put", "path": "bad", "size": 4, "md5": md5(b"good"), "eager": True}) + b"evil",
        eager_put("two", other),
    ]
    stream.sock.sendall(b"".join(frames))
    assert stream.recv()["ok"] is True
    assert stream.recv()["error"] == "exists"
    assert stream.recv()["error"] == "checksum_mismatch"
    assert stream.recv() == {"ok": True, "size": len(other), "md5": md5(other), "offset": 0}
    assert (server.root / "taken").read_bytes() == b"already here" and not (server.root / "bad").exists()
    assert (server.root / "one").read_bytes() == good and (server.root / "two").read_bytes() == other


def test_a_v1_client_beside_a_pipelining_one_sees_nothing_new(server):
    stop = threading.Event()
    errors: list[BaseException] = []

    def pipeline() -> None:
        try:
            stream = connect(server.port)
            round_ = 0
            while not stop.is_set() and round_ < 200:
                files = [(f"p/{round_}-{i}", os.urandom(2048)) for i in range(16)]
                stream.sock.sendall(b"".join(eager_put(n, d) for n, d in files))
                for _, data in files:
                    assert stream.recv()["md5"] == md5(data)
                round_ += 1
        except BaseException as exc:
            errors.append(exc)

    (server.root / "p").mkdir()
    thread = threading.Thread(target=pipeline)
    thread.start()
    try:
        v1 = connect(server.port)
        for i in range(30):
            data = os.urandom(3000 + i)
            ack = request(v1, "put", path=f"v1-{i}", size=len(data), md5=md5(data))
            assert ack == {"ok": True, "offset": 0}
            v1.sock.sendall(data)
            assert v1.recv() == {"ok": True, "size": len(data), "md5": md5(data)}
            header = request(v1, "get", path=f"v1-{i}")
            assert header == {"ok": True, "size": len(data), "md5": md5(data), "offset": 0}
            v1.send({"op": "ack"})
            received = bytearray()
            v1.recv_data(len(data), received.extend)
            assert bytes(received) == data
    finally:
        stop.set()
        thread.join(30)
    assert errors == [] and not thread.is_alive()


def test_sigkill_in_the_middle_of_groups_loses_no_acknowledged_file_and_tears_none(tmp_path, server_process):
    config = write_config(tmp_path)
    server = server_process(config)  # stopped at teardown, whatever happens here
    storage = tmp_path / "storage"
    files = {f"k{i:04}": os.urandom(8192 + i) for i in range(3000)}
    acknowledged: list[str] = []
    stream = connect(server.port)

    def read_answers() -> None:
        try:
            for name in files:
                answer = stream.recv()
                assert answer == {
                    "ok": True,
                    "size": len(files[name]),
                    "md5": md5(files[name]),
                    "offset": 0,
                }, name
                acknowledged.append(name)
        except (PeerClosedError, ShortReadError, ConnectionError, OSError):
            return

    reader = threading.Thread(target=read_answers)
    reader.start()
    sender_done = threading.Event()

    def send_all() -> None:
        try:
            for name, data in files.items():
                stream.sock.sendall(eager_put(name, data))
        except OSError:
            pass
        sender_done.set()

    sender = threading.Thread(target=send_all)
    sender.start()
    try:
        assert wait_until(lambda: len(acknowledged) >= 300, 20), len(acknowledged)
        server.process.send_signal(signal.SIGKILL)  # mid-stream, with groups in flight
        server.process.wait(10)
    finally:
        reader.join(20)
        stream.sock.close()
        sender.join(20)
    assert 300 <= len(acknowledged) < len(files)  # not vacuous: killed with work in flight
    for name in acknowledged:  # every `ok` was durable and visible
        assert (storage / name).read_bytes() == files[name], name
    for path in storage.iterdir():  # no torn file under any final name
        if path.name.startswith(".sockftp"):
            continue
        assert path.read_bytes() == files[path.name], path.name


def test_puts_that_depend_on_each_other_in_one_batch_behave_as_one_after_the_other(server):
    stream = connect(server.port)
    first, second, third = b"first version", b"second version", b"below a file"
    no_overwrite = {
        "op": "put",
        "path": "same",
        "size": 5,
        "md5": md5(b"third"),
        "eager": True,
        "overwrite": False,
    }
    stream.sock.sendall(
        eager_put("same", first)
        + eager_put("same", second)  # replaces the first, as if sent after its answer
        + encode_frame(no_overwrite)
        + b"third"  # refused: the name is taken by then
        + eager_put("same/below", third)  # refused: "same" is a file
    )
    assert stream.recv()["md5"] == md5(first)
    assert stream.recv()["md5"] == md5(second)
    assert stream.recv()["error"] == "exists"
    assert stream.recv()["error"] == "not_a_directory"
    assert (server.root / "same").read_bytes() == second


def test_a_bug_in_a_group_commit_answers_internal_in_turn_and_keeps_serving(server, monkeypatch):
    def broken(self, group):
        raise RuntimeError("a bug")

    monkeypatch.setattr(LocalStorage, "commit_group", broken)
    stream = connect(server.port)
    files = [(f"b{i}", os.urandom(1000)) for i in range(5)]
    stream.sock.sendall(
        b"".join(eager_put(n, d) for n, d in files) + encode_frame({"op": "stat", "path": "/"})
    )
    for _ in files:
        assert stream.recv()["error"] == "internal"
    assert stream.recv()["type"] == "dir"  # the stat, answered after them: still in step
    assert not [p for p in server.root.iterdir() if p.name.startswith("b")]


def test_an_eager_put_then_end_of_stream_is_still_answered(server):
    """A scripted client (`nc -N`) sends its last request and shuts its side: that end is
    not a next request, so the group is committed and answered."""
    stream = connect(server.port)
    data = os.urandom(3000)
    stream.sock.sendall(eager_put("last", data))
    stream.sock.shutdown(socket.SHUT_WR)
    assert stream.recv() == {"ok": True, "size": len(data), "md5": md5(data), "offset": 0}
    assert (server.root / "last").read_bytes() == data


@pytest.mark.parametrize("stop", ["in the next request", "in the next put's data"])
def test_a_peer_that_stops_midway_still_gets_the_answers_owed_to_the_group(server, stop):
    """The group's answers, and the names its puts hold, wait only briefly (GROUP_WAIT)
    for the rest of what the peer began to send, not for idle_timeout (30 s here) or
    stall_timeout (10 s); the client reads with a 5 s time-out."""
    stream = connect(server.port)
    stream.set_timeout(5)
    first, second = os.urandom(3000), os.urandom(3000)
    following = eager_put("second", second)
    cut = len(following) - len(second) - 10 if stop == "in the next request" else len(following) - 1000
    stream.sock.sendall(eager_put("first", first) + following[:cut])
    assert stream.recv() == {"ok": True, "size": len(first), "md5": md5(first), "offset": 0}
    assert (server.root / "first").read_bytes() == first
    stream.sock.sendall(following[cut:])  # the rest, late: still one request, answered in order
    assert stream.recv() == {"ok": True, "size": len(second), "md5": md5(second), "offset": 0}
    assert (server.root / "second").read_bytes() == second
    assert request(stream, "stat", path="first")["md5"] == md5(first)


def test_answers_that_cannot_be_written_while_waiting_end_the_session_without_a_timeout_frame(
    server, monkeypatch
):
    """A peer that reads no more answers: the write of the group's answers, made while the
    server waits for the rest of a request, times out. The session ends there; it does not
    take that for the peer's silence and append a `timeout` error to half a frame."""

    def half_then_stuck(self, messages):
        payload = b"".join(encode_frame(message) for message in messages)
        self.sock.sendall(payload[: len(payload) // 2])
        raise TimeoutError("timed out")  # what a write to a full socket ends in

    monkeypatch.setattr(FrameStream, "send_many", half_then_stuck)
    stream = connect(server.port)
    data = os.urandom(3000)
    stream.sock.sendall(eager_put("first", data) + eager_put("second", data)[:-100])
    stream.sock.settimeout(5)
    received = b""
    while chunk := stream.sock.recv(65536):
        received += chunk
    assert received and b"timeout" not in received  # half an answer, then the end
    assert (server.root / "first").read_bytes() == data  # committed before its answer went


def test_a_stop_while_a_group_commits_lets_it_answer(server, monkeypatch):
    """Between the group's last request and its answers the session is idle, but it owes
    them: a stop waits for them (within shutdown_grace, 2 s here) rather than cutting it."""
    committing, real = threading.Event(), LocalStorage.commit_group

    def slow(self, group):
        committing.set()
        time.sleep(0.5)  # a disk that takes its time
        return real(self, group)

    monkeypatch.setattr(LocalStorage, "commit_group", slow)
    stream = connect(server.port)
    files = {f"s{i}": os.urandom(2000) for i in range(3)}
    stream.sock.sendall(b"".join(eager_put(name, data) for name, data in files.items()))
    assert committing.wait(5)
    stopping = threading.Thread(target=server.server.stop, daemon=True)
    stopping.start()
    for data in files.values():
        assert stream.recv()["md5"] == md5(data)
    stopping.join(10)
    assert all((server.root / name).read_bytes() == data for name, data in files.items())


def test_a_put_over_the_folder_of_a_put_in_the_group_sees_that_folder(server):
    stream = connect(server.port)
    child, parent = b"in the folder", b"a file named like the folder"
    message = {
        "op": "put",
        "path": "dir/sub/child",
        "size": len(child),
        "md5": md5(child),
        "eager": True,
        "parents": True,
    }
    stream.sock.sendall(
        encode_frame(message) + child + eager_put("dir", parent) + eager_put("dir/sub", parent)
    )
    assert stream.recv()["md5"] == md5(child)
    assert stream.recv()["error"] == "is_a_directory"  # as if sent after the first answer
    assert stream.recv()["error"] == "is_a_directory"
    assert (server.root / "dir" / "sub" / "child").read_bytes() == child


def put_group(server, names: list[str]) -> dict[str, bytes]:
    files = {name: os.urandom(4096) for name in names}
    stream = connect(server.port)
    stream.sock.sendall(b"".join(eager_put(name, data) for name, data in files.items()))
    for data in files.values():
        assert stream.recv()["md5"] == md5(data)
    return files


@pytest.mark.skipif(not writeback.SYNCFS, reason="syncfs reports failures on Linux 5.8+ only")
def test_a_group_is_made_durable_by_one_syncfs_not_an_fsync_per_file(server, monkeypatch):
    synced = counting_fsyncs(monkeypatch)
    files = put_group(server, [f"s{i:02}" for i in range(40)])
    assert all((server.root / name).read_bytes() == data for name, data in files.items())
    assert len(synced) < len(files) / 2, synced  # the lone puts between groups fsync their own file


def test_when_syncfs_reports_a_failure_every_file_is_fsynced_on_its_own(server, monkeypatch):
    monkeypatch.setattr(writeback, "_SYNCFS", lambda fd: -1)  # the kernel's "some write-back failed"
    synced = counting_fsyncs(monkeypatch)
    files = put_group(server, [f"f{i:02}" for i in range(40)])
    assert all((server.root / name).read_bytes() == data for name, data in files.items())
    assert len(synced) == len(files)


def test_sync_filesystems_covers_each_filesystem_and_skips_what_has_nothing_to_sync(tmp_path):
    shm = tempfile.TemporaryDirectory(dir="/dev/shm") if os.path.isdir("/dev/shm") else None
    folders = [tmp_path] + ([Path(shm.name)] if shm else [])
    fds = [os.open(folder / f"f{i}", os.O_RDWR | os.O_CREAT, 0o600) for folder in folders for i in range(2)]
    try:
        durable = writeback.sync_filesystems([*fds, -1])
        assert durable == (set(range(len(fds))) if writeback.SYNCFS else set())
    finally:
        for fd in fds:
            os.close(fd)
        if shm:
            shm.cleanup()


def test_a_resumed_partial_in_a_group_is_fsynced_on_its_own(server, monkeypatch):
    """Its first bytes went through another descriptor: a failure to write them back may
    have been reported to some other syncfs already, and only its own fsync tells."""
    data = os.urandom(200_000)
    cut = connect(server.port)
    assert request(cut, "put", path="resumed", size=len(data), md5=md5(data)) == {"ok": True, "offset": 0}
    cut.sock.sendall(data[:100_000])
    cut.sock.close()  # the server keeps the partial file for a resume
    wait_until(lambda: server.server.storage.uploads_running == 0)
    synced = counting_fsyncs(monkeypatch)
    others = {f"o{i}": os.urandom(3000) for i in range(8)}
    stream = connect(server.port)
    frames = [eager_put(name, payload) for name, payload in others.items()]
    frames.insert(4, eager_put("resumed", data))
    stream.sock.sendall(b"".join(frames))
    answers = [stream.recv() for _ in frames]
    assert answers[4] == {"ok": True, "size": len(data), "md5": md5(data), "offset": 100_000}
    assert (server.root / "resumed").read_bytes() == data
    expected = 1 if writeback.SYNCFS else len(frames)  # with syncfs, only the resumed one
    assert len(synced) == expected, synced


def test_a_filesystem_syncfs_is_not_trusted_on_gets_an_fsync_per_file(tmp_path, monkeypatch):
    monkeypatch.setattr(writeback, "SYNCFS_FILESYSTEMS", {})  # as for FUSE, where syncfs reaches no daemon
    fds = [os.open(tmp_path / f"f{i}", os.O_RDWR | os.O_CREAT, 0o600) for i in range(3)]
    try:
        assert writeback.sync_filesystems(fds) == set()
    finally:
        for fd in fds:
            os.close(fd)


def test_folders_a_put_or_mkdir_makes_are_fsynced_into_their_parents(server, monkeypatch):
    synced = counting_fsyncs(monkeypatch, directories=True)
    stream = connect(server.port)
    data = b"deep down"
    ack = request(stream, "put", path="a/b/c/f.txt", size=len(data), md5=md5(data), parents=True)
    assert ack == {"ok": True, "offset": 0}
    stream.sock.sendall(data)
    assert stream.recv()["ok"] is True

    def inode(path) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino

    # Each new folder's parent: without it the folder, and the file in it, may be gone after a crash.
    root = server.root
    assert {inode(root), inode(root / "a"), inode(root / "a/b")} <= set(synced)
    assert inode(root / "a/b/c") in synced  # the file's own folder, as before
    synced.clear()
    assert request(stream, "mkdir", path="a/m") == {"ok": True}
    assert set(synced) == {inode(root / "a")}
