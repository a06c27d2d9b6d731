"""Turns (ftpproto/io/turn.py): one session runs at a time, handed over in order, and
given up wherever a session waits, so that no wait of one holds the others up; and the
stream's direct calls, which wait only when they must, within the time-out."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from ftpclient import Client
from ftpclient.pipeline import put_pipelined
from ftpproto import encode_frame
from ftpproto.io import FrameStream
from ftpproto.io.hashing import HASH_CHUNK
from ftpproto.io.turn import Turn, paused

from .conftest import eager_put, wait_until

pytestmark = pytest.mark.timeout(60)


def in_thread(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def joiner(turn: Turn, name: str, order: list[str]):
    def run() -> None:
        turn.join()
        turn.take()
        order.append(name if turn.holding() else f"{name} without")
        turn.leave()

    return run


def test_one_thread_at_a_time_and_the_longest_waiting_goes_next():
    turn, order = Turn(patience=30), []
    turn.join()
    turn.take()
    first = in_thread(joiner(turn, "first", order))
    wait_until(lambda: turn.waiting == 1)
    second = in_thread(joiner(turn, "second", order))
    wait_until(lambda: turn.waiting == 2)
    time.sleep(0.05)
    assert order == []  # both wait while this thread holds it
    turn.leave()
    first.join(5)
    second.join(5)
    assert order == ["first", "second"]
    assert turn.take()  # and nobody kept it
    assert turn.timeouts == 0


def test_a_thread_that_waits_too_long_goes_on_without_it_and_gets_it_once_free():
    turn, order = Turn(patience=0.05), []
    turn.join()
    turn.take()
    resume, back = threading.Event(), []

    def late() -> None:
        turn.join()
        order.append("ran" if turn.take() else "ran without")
        with paused():  # without the turn: nothing to give, nothing to take after
            resume.wait(10)
        back.append(turn.holding())
        back.append(turn.take())
        turn.leave()

    thread = in_thread(late)
    wait_until(lambda: order)
    assert order == ["ran without"] and turn.timeouts == 1
    turn.leave()
    resume.set()
    thread.join(5)
    assert back == [False, True]


def test_paused_lets_the_others_run_and_takes_the_turn_back_unless_told_not_to():
    turn, order = Turn(patience=30), []
    turn.join()
    turn.take()
    with paused():
        assert not turn.holding()
        in_thread(joiner(turn, "other", order)).join(5)
        with paused():
            pass
        assert not turn.holding()  # an inner pause does not take it back early
    assert order == ["other"]
    assert turn.holding()
    with paused(resume=False):  # after a wait for the peer: on without it
        pass
    assert not turn.holding()
    turn.leave()
    with paused():  # outside any turn: nothing to do
        assert not turn.holding()


def test_pass_on_hands_over_only_to_a_waiter_and_only_after_the_slice():
    turn, order = Turn(patience=30), []
    turn.join()
    turn.take()
    turn.pass_on()
    assert turn.holding()  # nobody waits: it keeps it
    waiter = in_thread(joiner(turn, "waiter", order))
    wait_until(lambda: turn.waiting == 1)
    turn.pass_on(after=60)
    assert turn.holding() and order == []  # its slice is not over
    turn.pass_on()
    assert order == ["waiter"] and turn.holding()  # back after the waiter's go
    waiter.join(5)
    turn.leave()


# -- in the server ---------------------------------------------------------------


def files(folder: Path, count: int, prefix: str) -> list[tuple[Path, str]]:
    items = []
    for index in range(count):
        path = folder / f"{prefix}{index:03}"
        path.write_bytes(os.urandom(8192))
        items.append((path, f"up/{prefix}{index:03}"))
    return items


def upload(port: int, items: list[tuple[Path, str]], failures: list) -> None:
    with Client("127.0.0.1", port, timeout=20) as client:
        put_pipelined(
            client, items, lambda i, r: failures.append(r) if isinstance(r, BaseException) else None
        )


def in_a_run(running, *frames: bytes) -> socket.socket:
    """A session sent `ls /` and `frames` in one write: it holds the turn after the ls."""
    sock = running.connect()
    sock.recv(4096)  # the greeting
    sock.sendall(encode_frame({"op": "ls", "path": "/"}) + b"".join(frames))
    return sock


def test_sessions_that_wait_for_the_network_or_a_login_delay_never_hold_the_others_up(
    make_config, serve, tmp_path
):
    running = serve(make_config(limits={"login_delay": 4}))
    turn = running.server.turn
    if turn is None:
        pytest.skip("the storage is not on a local disk's filesystem: no turns")
    turn.patience = 1.5  # far below the waits it must not be held through, far above a busy slice
    (running.root / "up").mkdir()
    items = files(tmp_path, 150, "f")
    # In a run, one session sleeps out a failed login's delay; another stops inside a frame.
    guesser = in_a_run(running, encode_frame({"op": "login", "user": "alice", "password": "wrong"}))
    stalled = in_a_run(running, encode_frame({"op": "ls", "path": "/"})[:5])
    time.sleep(0.2)
    failures: list = []
    upload(running.port, items, failures)  # a pipelining session: it asks for the turn
    assert failures == []
    for local, remote in items:
        assert (running.root / remote).read_bytes() == local.read_bytes()
    assert turn.timeouts == 0  # nobody waited its patience out for the turn
    guesser.settimeout(10)
    answers = FrameStream(guesser)
    assert answers.recv()["ok"]  # the ls
    assert answers.recv()["error"] == "auth_failed"
    stalled.close()
    guesser.close()


def test_a_lock_step_session_never_waits_for_the_turn_and_a_pipelining_one_does(server, tmp_path):
    turn = server.server.turn
    if turn is None:
        pytest.skip("the storage is not on a local disk's filesystem: no turns")
    turn.patience = 0.05
    (server.root / "up").mkdir()
    items = files(tmp_path, 30, "f")
    assert turn.take()  # held by the test: whoever asks for it waits, then goes on
    try:
        with Client("127.0.0.1", server.port, timeout=10) as client:
            for local, remote in items[:10]:
                client.put(local, remote)
                client.get(remote, tmp_path / "back")
                assert (tmp_path / "back").read_bytes() == local.read_bytes()
        assert turn.timeouts == 0  # one request at a time: it never asked
        failures: list = []
        upload(server.port, items, failures)
        assert failures == []
        assert turn.timeouts >= 1  # a run of requests read at once: it asked
    finally:
        turn.give()


def test_four_pipelining_sessions_take_turns_and_every_file_arrives(server, tmp_path):
    turn = server.server.turn
    if turn is None:
        pytest.skip("the storage is not on a local disk's filesystem: no turns")
    (server.root / "up").mkdir()
    batches = [files(tmp_path, 100, f"s{k}_") for k in range(4)]
    failures: list = []
    threads = [threading.Thread(target=upload, args=(server.port, batch, failures)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
    assert failures == []
    for local, remote in (item for batch in batches for item in batch):
        stored = (server.root / remote).read_bytes()
        assert hashlib.md5(stored).digest() == hashlib.md5(local.read_bytes()).digest()
    wait_until(lambda: server.server.session_count == 0)
    assert turn.take()  # no session kept it when it ended
    turn.give()


# -- the stream's direct calls ---------------------------------------------------


def pair(timeout: float) -> tuple[FrameStream, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.settimeout(timeout)
    theirs.settimeout(10)
    return FrameStream(ours), theirs


def test_a_direct_write_to_a_peer_that_never_reads_times_out():
    stream, peer = pair(0.2)
    with peer, pytest.raises(TimeoutError):
        stream.send_many([{"op": "ls", "path": "x" * 1000}] * 20_000)  # far more than the buffers hold
    stream.close()


def test_a_direct_read_from_a_silent_peer_times_out_and_a_frame_in_pieces_is_whole():
    stream, peer = pair(0.2)
    with peer:
        with pytest.raises(TimeoutError):
            stream.recv()
        frame = encode_frame({"op": "stat", "path": "a"})
        for byte in frame:
            peer.sendall(bytes([byte]))
        assert stream.recv() == {"op": "stat", "path": "a"}
    stream.close()


@pytest.mark.parametrize("kind", ["real file", "no descriptor"])
def test_send_file_sends_exactly_the_range_asked(tmp_path, kind):
    data = os.urandom(300_000)
    path = tmp_path / "data"
    path.write_bytes(data)
    stream, peer = pair(5)
    reported: list[int] = []
    with peer, path.open("rb") as real:
        file = real if kind == "real file" else io.BytesIO(data)
        sender = in_thread(lambda: stream.send_file(file, 1000, 200_000, reported.append))  # type: ignore[arg-type]
        received = b""
        while len(received) < 200_000:
            received += peer.recv(65536)
        sender.join(5)
    assert received == data[1000:201_000]
    assert sum(reported) == 200_000
    stream.close()


def test_a_slow_group_sync_or_a_wait_for_a_claim_lets_the_others_run(server, tmp_path, monkeypatch):
    from ftpserver.storage import local

    turn = server.server.turn
    if turn is None:
        pytest.skip("the storage is not on a local disk's filesystem: no turns")
    (server.root / "up").mkdir()
    turn.patience = 1.0  # far below the waits it must not be held through, far above a busy slice
    server.server.storage.claim_wait = 3.0
    in_sync, real_sync = threading.Event(), local.sync_filesystems

    def slow_disk(*args, **kwargs):  # a disk that takes its time, as a loaded one does
        in_sync.set()
        time.sleep(3.0)
        return real_sync(*args, **kwargs)

    monkeypatch.setattr(local, "sync_filesystems", slow_disk)
    failures: list = []
    syncing = in_thread(lambda: upload(server.port, files(tmp_path, 20, "g"), failures))
    assert in_sync.wait(10)
    upload(server.port, files(tmp_path, 10, "h"), failures)  # pipelining too: it asks for the turn
    syncing.join(20)
    assert failures == [] and turn.timeouts == 0
    monkeypatch.setattr(local, "sync_filesystems", real_sync)

    # In a run, a put that waits for another session's claim on the same partial file.
    data = os.urandom(1000)
    put = {"op": "put", "path": "up/same", "size": len(data), "md5": hashlib.md5(data).hexdigest()}
    holder = FrameStream(server.connect())
    holder.recv()
    holder.send(put)
    assert holder.recv()["ok"]  # ready: the partial file is claimed, no data sent
    waiter = in_a_run(server, encode_frame(put))
    time.sleep(0.1)
    upload(server.port, files(tmp_path, 10, "i"), failures)
    waiter.settimeout(10)
    waiting = FrameStream(waiter)
    assert waiting.recv()["ok"]  # the ls
    assert waiting.recv()["ok"]  # ready, after its wait: a private temp file
    waiter.sendall(data)
    assert waiting.recv()["ok"]
    assert failures == [] and turn.timeouts == 0
    holder.close()
    waiter.close()


class SlowOnce:
    """`real`, but its first call sleeps `seconds` first: a disk that takes its time."""

    def __init__(self, real, seconds: float = 3.0) -> None:
        self.real, self.seconds, self.slept = real, seconds, threading.Event()

    def __call__(self, *args, **kwargs):
        if not self.slept.is_set():
            self.slept.set()
            time.sleep(self.seconds)
        return self.real(*args, **kwargs)


class SlowBigMD5:
    """hashlib for ftpproto.io.hashing whose MD5s sleep on their first 1 MiB update:
    only a big file's hash (the sessions' own small files are fed in smaller pieces)."""

    def __init__(self) -> None:
        self.sleep = SlowOnce(lambda: None)

    def md5(self, *args):
        real, sleep = hashlib.md5(*args), self.sleep

        class Digest:
            def update(self, data) -> None:
                if len(data) >= HASH_CHUNK:
                    sleep()
                real.update(data)

            def __getattr__(self, name):
                return getattr(real, name)

        return Digest()


@pytest.mark.parametrize("work", ["hash of a big file", "copy of an instant upload", "fsync of a folder"])
def test_the_disks_long_work_lets_the_others_run(server, tmp_path, monkeypatch, work):
    """A session in a run holds the turn; the 3 s it spends on the disk (a hash of an
    uncached 2 MiB file, an instant upload's copy, a group's folder fsync) it spends
    outside it, so a pipelining session never waits its patience (1 s) out."""
    from ftpproto.io import hashing
    from ftpserver.storage import local

    turn = server.server.turn
    if turn is None:
        pytest.skip("the storage is not on a local disk's filesystem: no turns")
    (server.root / "up").mkdir()
    turn.patience = 1.0
    failures: list = []
    big = os.urandom(2 * HASH_CHUNK)
    md5 = hashlib.md5(big).hexdigest()
    if work == "hash of a big file":
        (server.root / "big").write_bytes(big)  # written behind the server: its MD5 is not known
        slow = SlowBigMD5()
        monkeypatch.setattr(hashing, "hashlib", slow)
        slept = slow.sleep.slept
        busy = in_a_run(server, encode_frame({"op": "stat", "path": "big"}))
    elif work == "copy of an instant upload":
        (tmp_path / "big").write_bytes(big)
        with Client("127.0.0.1", server.port) as client:
            client.put(tmp_path / "big", "/big")  # remembered: a put of the same bytes needs none
        copy = SlowOnce(local.shutil.copyfileobj)
        monkeypatch.setattr(local.shutil, "copyfileobj", copy)
        slept = copy.slept
        # Another modification time: the new file cannot be a link to the first, it is a copy.
        put = {"op": "put", "path": "up/again", "size": len(big), "md5": md5, "mtime": 1e9}
        busy = in_a_run(server, encode_frame(put))
    else:
        fsync = SlowOnce(local._fsync_dir)
        monkeypatch.setattr(local, "_fsync_dir", fsync)
        slept = fsync.slept
        small = {f"up/g{index}": os.urandom(3000) for index in range(5)}
        busy = in_a_run(server, *(eager_put(name, data) for name, data in small.items()))
    assert slept.wait(10)
    upload(server.port, files(tmp_path, 10, "h"), failures)  # pipelining: it asks for the turn
    assert failures == [] and turn.timeouts == 0
    busy.settimeout(10)
    answers = FrameStream(busy)
    assert answers.recv()["ok"]  # the ls
    if work == "hash of a big file":
        assert answers.recv()["md5"] == md5
    elif work == "fsync of a folder":
        for name, data in small.items():
            assert answers.recv()["md5"] == hashlib.md5(data).hexdigest()
            assert (server.root / name).read_bytes() == data
    else:
        assert answers.recv() == {"ok": True, "offset": len(big)}  # every byte there already
        assert answers.recv()["md5"] == md5
        assert (server.root / "up" / "again").read_bytes() == big
    busy.close()


def test_a_stuck_holder_costs_the_others_one_wait_at_most():
    turn = Turn(patience=0.1)
    turn.join()
    turn.take()
    time.sleep(0.15)  # no progress shown for longer than the patience
    answers: list = []

    def ask() -> None:
        started = time.monotonic()
        answers.append((turn.take(), time.monotonic() - started))

    in_thread(ask).join(5)
    assert answers[0][0] is False and answers[0][1] < 0.05  # on at once, without it
    assert turn.timeouts == 1
    turn.pass_on()  # progress: the next one waits for it again
    turn.patience = 30
    asker = in_thread(ask)
    wait_until(lambda: turn.waiting == 1)
    turn.leave()
    asker.join(5)
    assert answers[1][0] is True


def test_a_short_file_to_a_slow_reader_gets_the_time_out_per_wait_not_for_the_whole_file(tmp_path):
    data = os.urandom(900_000)  # under LONG_DATA: sent directly
    path = tmp_path / "data"
    path.write_bytes(data)
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    ours.settimeout(0.5)
    stream, errors = FrameStream(ours), []

    def send() -> None:
        try:
            with path.open("rb") as file:
                stream.send_file(file, 0, len(data))
        except OSError as exc:
            errors.append(exc)

    sender = in_thread(send)
    received = bytearray()
    with theirs:
        theirs.settimeout(2)  # a sender that gave up sends nothing more
        while len(received) < len(data) and not errors:
            received += theirs.recv(65536)
            time.sleep(0.05)  # about 1 MB/s at most: the whole file takes longer than 0.5 s
    sender.join(10)
    assert errors == []
    assert bytes(received) == data
    stream.close()


def test_a_file_that_sendfile_refuses_is_sent_by_copying(tmp_path, monkeypatch):
    data = os.urandom(50_000)
    path = tmp_path / "data"
    path.write_bytes(data)
    refused = []

    def no_sendfile(*args):
        refused.append(args)
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", no_sendfile)
    stream, peer = pair(5)
    with peer, path.open("rb") as file:
        sender = in_thread(lambda: stream.send_file(file, 0, len(data)))
        received = b""
        while len(received) < len(data):
            received += peer.recv(65536)
        sender.join(5)
    assert received == data and refused
    stream.close()


def test_turns_are_off_where_the_filesystem_may_wait_on_a_network(monkeypatch, tmp_path):
    from ftpproto.io import writeback

    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for kind, local in ((0x6969, False), (0x65735546, False), (0xEF53, True), (None, True)):
            monkeypatch.setattr(writeback, "_filesystem_type", lambda fd, kind=kind: kind)
            assert writeback.on_local_disk(fd) is local, hex(kind or 0)
    finally:
        os.close(fd)


def test_ready_sees_a_waiting_frame_on_a_descriptor_above_1023():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip("the descriptor limit is below 1100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100), hard))
    ours, theirs = socket.socketpair()
    try:
        high = socket.socket(fileno=os.dup2(ours.fileno(), 1050))
        high.settimeout(5)
        stream = FrameStream(high)
        assert not stream.ready()
        theirs.sendall(encode_frame({"op": "ls", "path": "/"}))
        assert wait_until(stream.ready, timeout=2)  # the next request is here: a group may go on
        assert stream.recv() == {"op": "ls", "path": "/"}
        stream.close()
    finally:
        ours.close()
        theirs.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_home_on_a_network_filesystem_takes_no_turns(make_config, serve, monkeypatch):
    """Turns are decided per home too: a home that is an NFS mount below a local storage
    root (here: alice's, as the filesystem check reports it) makes its sessions leave."""
    from ftpserver.storage import local

    real = local.on_local_disk

    def alice_on_nfs(fd: int) -> bool:
        return not os.readlink(f"/proc/self/fd/{fd}").endswith("/alice") and real(fd)

    monkeypatch.setattr(local, "on_local_disk", alice_on_nfs)
    running = serve(make_config())
    if running.server.turn is None:
        pytest.skip("the storage is not on a local disk's filesystem: no turns")
    sessions: list = []
    original = running.server.session_started
    running.server.session_started = lambda s: (sessions.append(s), original(s))  # type: ignore[method-assign]
    with Client("127.0.0.1", running.port) as anonymous:
        anonymous.ls("/")
    with Client("127.0.0.1", running.port, user="alice", password="alice-pw") as alice:
        alice.ls("/")
    assert [session.turn for session in sessions] == [running.server.turn, None]
