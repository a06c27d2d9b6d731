"""Abuse and load: slow frames, crowds of idle connections, readers that never read,
many clients at once, bandwidth limits and abandoned uploads. After each, a normal
client still gets correct answers."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ftpclient import Client
from ftpproto import encode_frame
from ftpproto.io import FrameStream

from .conftest import wait_until, write_config

pytestmark = pytest.mark.timeout(90)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def still_serves(server, tmp_path) -> None:
    data = os.urandom(50_000)
    (tmp_path / "probe").write_bytes(data)
    with Client("127.0.0.1", server.port, timeout=10) as client:
        client.put(tmp_path / "probe", "/probe")
        client.get("/probe", tmp_path / "probe-back")
        client.rm("/probe")
    assert (tmp_path / "probe-back").read_bytes() == data


def test_a_frame_dribbled_one_byte_at_a_time_with_pauses(raw, server, tmp_path):
    stream = raw()
    for byte in encode_frame({"op": "mkdir", "path": "slow"}):
        stream.sock.sendall(bytes([byte]))
        time.sleep(0.01)
    assert stream.recv() == {"ok": True}
    still_serves(server, tmp_path)


def test_300_idle_connections_do_not_starve_a_normal_client(make_config, serve, tmp_path):
    running = serve(make_config(limits={"max_connections": 400, "max_connections_per_address": 400}))
    idle = []
    try:
        for _ in range(300):
            sock = running.connect()
            idle.append(sock)
        assert wait_until(lambda: running.server.session_count >= 300, 20)
        started = time.monotonic()
        still_serves(running, tmp_path)
        assert time.monotonic() - started < 10
    finally:
        for sock in idle:
            sock.close()
    assert wait_until(lambda: running.server.session_count == 0, 20)


def test_a_reader_that_never_reads_is_freed_by_the_stall_timeout(make_config, serve, tmp_path):
    running = serve(make_config(limits={"stall_timeout": 0.5}))
    (running.root / "big").write_bytes(os.urandom(30_000_000))
    with running.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(encode_frame({"op": "get", "path": "big"}) + encode_frame({"op": "ack"}))
        assert wait_until(lambda: running.server.session_count == 1, 5)
        assert wait_until(lambda: running.server.session_count == 0, 15)
    still_serves(running, tmp_path)


def test_50_clients_put_and_get_distinct_files_at_once(make_config, serve, tmp_path):
    server = serve(make_config(limits={"max_connections_per_address": 100}))

    def round_trip(i: int) -> bool:
        data = os.urandom(200_000 + i)
        source, back = tmp_path / f"in-{i}", tmp_path / f"out-{i}"
        source.write_bytes(data)
        with Client("127.0.0.1", server.port, timeout=30) as client:
            sent = client.put(source, f"/c{i}/file", parents=True)
            got = client.get(f"/c{i}/file", back)
        return sent.md5 == got.md5 == md5(data) == md5(back.read_bytes())

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(round_trip, range(50)))
    assert all(results)
    assert all((server.root / f"c{i}" / "file").stat().st_size == 200_000 + i for i in range(50))


def test_bandwidth_is_shared_by_all_sessions_of_a_user(make_config, serve, tmp_path):
    rate = 1_000_000
    running = serve(make_config(anonymous={"bandwidth": rate}))
    for i in range(2):
        (tmp_path / f"f{i}").write_bytes(os.urandom(600_000))

    def upload(i: int) -> None:
        with Client("127.0.0.1", running.port, timeout=30) as client:
            client.put(tmp_path / f"f{i}", f"/f{i}")

    started = time.monotonic()
    threads = [threading.Thread(target=upload, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # 1.2 MB at 1 MB/s shared: at least ~1 s (one 64 KiB chunk may pass unpaced per session).
    assert time.monotonic() - started >= 1.0
    assert all((running.root / f"f{i}").stat().st_size == 600_000 for i in range(2))


def test_stale_partial_uploads_are_removed_at_start_and_periodically(make_config, serve):
    config = make_config(limits={"partial_max_age": 1})
    old = config.storage_root / "d" / ".sockftp.part.0123456789abcdef"
    old.parent.mkdir()
    old.write_bytes(b"abandoned")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    running = serve(config)
    assert wait_until(lambda: not old.exists(), 5)
    later = config.storage_root / ".sockftp.tmp.feedface"
    later.write_bytes(b"abandoned later")
    os.utime(later, (time.time() - 10, time.time() - 10))
    keep = config.storage_root / "d" / "user-file"
    keep.write_bytes(b"not a partial")
    os.utime(keep, (time.time() - 3600, time.time() - 3600))
    assert wait_until(lambda: not later.exists(), 5)
    assert keep.exists() and running.server.session_count == 0


def test_partial_in_use_is_not_removed(make_config, serve, raw):
    running = serve(make_config(limits={"partial_max_age": 1}))
    stream = raw(running)
    data = os.urandom(10_000)
    stream.request("put", path="f", size=len(data), md5=md5(data))
    stream.sock.sendall(data[:5_000])
    (partial,) = wait_until(lambda: list(running.root.glob(".sockftp.part.*")), 5)
    os.utime(partial, (time.time() - 3600, time.time() - 3600))
    time.sleep(1.5)  # at least one cleaning round
    assert partial.exists()
    stream.sock.sendall(data[5_000:])
    assert stream.recv()["ok"]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_crowd_of_logins_does_not_balloon_the_servers_memory(tmp_path, server_process):
    config = write_config(tmp_path, limits={"max_connections_per_address": 100, "max_failed_logins": 10})
    server = server_process(config)
    before = peak_rss_mib(server.process.pid)

    def login(i: int) -> bool:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            stream = FrameStream(sock)
            stream.recv()
            stream.send({"op": "login", "user": "alice", "password": f"wrong-{i}"})
            return stream.recv().get("error") == "auth_failed"

    with ThreadPoolExecutor(60) as pool:
        assert all(pool.map(login, range(60)))
    # Each scrypt check takes 16 MiB; 60 at once would take about 1 GB.
    assert peak_rss_mib(server.process.pid) - before < 200


def test_a_frame_dribbled_slower_than_the_idle_timeout_is_cut(make_config, serve, raw):
    stream = raw(serve(make_config(limits={"idle_timeout": 0.5})))
    frame = encode_frame({"op": "mkdir", "path": "slow" * 10})
    started = time.monotonic()
    with contextlib.suppress(OSError):
        for byte in frame:  # a byte every 0.1 s: each recv is quick, the frame is not
            stream.sock.sendall(bytes([byte]))
            time.sleep(0.1)
    stream.sock.settimeout(5)
    answer = stream.recv()
    assert answer["error"] == "timeout" and time.monotonic() - started < 5


def test_silent_refused_tls_peers_do_not_hold_up_new_connections(tmp_path, make_config, serve):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    running = serve(make_config(tls={"cert": "server.pem"}, limits={"max_connections_per_address": 1}))
    silent = []
    try:
        for _ in range(9):  # from another loopback address: one admitted, eight refused, all silent
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", running.port))
            silent.append(sock)
        started = time.monotonic()
        with Client("127.0.0.1", running.port, tls=True, cafile=tmp_path / "ca.pem", timeout=10) as client:
            assert client.ls("/") == []
        assert time.monotonic() - started < 2
    finally:
        for sock in silent:
            sock.close()


def test_stop_ends_sessions_that_outlive_the_grace_period(make_config, serve, raw):
    running = serve(make_config(limits={"shutdown_grace": 0.3, "stall_timeout": 60}))
    stream = raw(running)
    stream.request("put", path="f", size=1000, md5=md5(b"x" * 1000))
    stream.sock.sendall(b"x" * 10)  # then nothing: a transfer that would hold on for a minute
    started = time.monotonic()
    running.server.stop()
    assert running.server.session_count == 0 and time.monotonic() - started < 6
