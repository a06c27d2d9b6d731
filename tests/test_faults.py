"""Faults: processes killed mid-transfer, a server that cannot write, a file replaced
while it is being read. Servers and clients are real subprocesses killed by PID."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftpclient import Client
from ftpproto import InternalError
from ftpproto.io import FrameStream
from ftpserver.storage.base import Snapshot

from .conftest import run_cli, start_server_process, wait_until, write_config

pytestmark = pytest.mark.timeout(90)

RATE = 2_000_000  # bytes per second: slow enough to kill a transfer half-way
SIZE = 6_000_000


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def visible(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if not n.startswith(".sockftp"))


def partials(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith(".sockftp.part."))


def client_process(*args: str, port: int, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCKFTP_")}
    env.update({"SOCKFTP_HOST": "127.0.0.1", "SOCKFTP_PORT": str(port)})
    return subprocess.Popen(
        [sys.executable, "-m", "ftpclient", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(10)


def settled(paths) -> bool:
    """True once the files stop growing: the server has drained what the dead client sent."""
    sizes = [p.stat().st_size for p in paths()]
    time.sleep(0.3)
    return sizes == [p.stat().st_size for p in paths()]


@pytest.fixture
def slow_server(tmp_path, server_process):
    config = write_config(tmp_path, anonymous={"bandwidth": RATE})
    return server_process(config), tmp_path / "storage"


@pytest.fixture
def data(tmp_path) -> bytes:
    payload = os.urandom(SIZE)
    work = tmp_path / "work"
    work.mkdir()
    (work / "big.bin").write_bytes(payload)
    return payload


def test_client_killed_mid_put(slow_server, data, tmp_path):
    server, storage = slow_server
    (storage / "big.bin").write_bytes(b"the previous version")
    client = client_process("put", "big.bin", port=server.port, cwd=tmp_path / "work")
    assert wait_until(lambda: any(p.stat().st_size > 500_000 for p in partials(storage)), 20)
    kill(client)
    assert wait_until(lambda: settled(lambda: partials(storage)), 20)
    assert visible(storage) == ["big.bin"]
    assert (storage / "big.bin").read_bytes() == b"the previous version"
    assert run_cli("ls", port=server.port).stdout == "big.bin\n"  # serves the next client
    again = run_cli("put", "big.bin", "--json", port=server.port, cwd=tmp_path / "work")
    record = json.loads(again.stdout)
    assert again.returncode == 0 and 0 < record["sent"] < SIZE
    assert (storage / "big.bin").read_bytes() == data


def test_client_killed_mid_get(slow_server, data, tmp_path):
    server, storage = slow_server
    (storage / "big.bin").write_bytes(data)
    target = tmp_path / "down"
    target.mkdir()
    client = client_process("get", "big.bin", port=server.port, cwd=target)
    assert wait_until(lambda: any(p.stat().st_size > 500_000 for p in target.glob(".sockftp-get-*")), 20)
    kill(client)
    assert not (target / "big.bin").exists()
    assert run_cli("stat", "big.bin", port=server.port).returncode == 0
    again = run_cli("get", "big.bin", "--json", port=server.port, cwd=target)
    assert again.returncode == 0 and 0 < json.loads(again.stdout)["sent"] < SIZE
    assert (target / "big.bin").read_bytes() == data
    assert os.listdir(target) == ["big.bin"]


def test_server_killed_mid_put_then_restarted(tmp_path, data):
    config = write_config(tmp_path, anonymous={"bandwidth": RATE})
    storage = tmp_path / "storage"
    (storage / "big.bin").write_bytes(b"old and whole")
    server = start_server_process(config)
    try:
        client = client_process("put", "big.bin", port=server.port, cwd=tmp_path / "work")
        assert wait_until(lambda: any(p.stat().st_size > 500_000 for p in partials(storage)), 20)
        server.stop(signal.SIGKILL)
        client.wait(20)
        assert (storage / "big.bin").read_bytes() == b"old and whole"  # never torn
    finally:
        server.stop()
    restarted = start_server_process(config)
    try:
        again = run_cli("put", "big.bin", "--json", port=restarted.port, cwd=tmp_path / "work")
        assert again.returncode == 0 and 0 < json.loads(again.stdout)["sent"] < SIZE
        assert (storage / "big.bin").read_bytes() == data
    finally:
        restarted.stop()


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))


def test_a_write_error_on_the_server_is_reported_and_nothing_is_torn(tmp_path, data):
    config = write_config(tmp_path)
    storage = tmp_path / "storage"
    (storage / "big.bin").write_bytes(b"previous")
    process = subprocess.Popen(
        [sys.executable, "-m", "ftpserver", "--config", str(config), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_limit_file_size,  # SIGXFSZ is ignored by Python, so writes fail with EFBIG
    )
    try:
        line = ""
        while "listening on" not in line:  # warnings may come first
            line = process.stderr.readline()
            assert line, "server exited"
        port = int(line.split("listening on 127.0.0.1:")[1].split(",")[0])
        result = run_cli("put", "big.bin", port=port, cwd=tmp_path / "work")
        assert result.returncode == 1 and "too_large" in result.stderr
        assert (storage / "big.bin").read_bytes() == b"previous"
        assert partials(storage) == []
        (tmp_path / "work" / "small").write_bytes(b"fits")
        assert run_cli("put", "small", port=port, cwd=tmp_path / "work").returncode == 0
    finally:
        process.terminate()
        process.wait(10)


def test_a_file_replaced_during_a_get_is_served_whole(server, tmp_path):
    old, new = os.urandom(8_000_000), os.urandom(5_000_000)
    (server.root / "f").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        stream = FrameStream(sock)
        stream.recv()
        stream.send({"op": "get", "path": "f"})
        header = stream.recv()
        stream.send({"op": "ack"})
        received = bytearray(sock.recv(100_000))
        with Client("127.0.0.1", server.port, timeout=10) as other:
            other.put(tmp_path / "new", "/f")
        stream.recv_data(header["size"] - len(received), received.extend)
    assert header["md5"] == md5(old) and md5(bytes(received)) == md5(old)
    assert (server.root / "f").read_bytes() == new


def test_a_snapshot_shorter_than_its_size_is_an_internal_error_not_short_data(tmp_path):
    """An eager get reads a small file before its header: a file that shrank behind the
    server's back is refused then, instead of cutting the connection inside the data."""
    (tmp_path / "f").write_bytes(b"x" * 50)
    with open(tmp_path / "f", "rb") as file:
        snapshot = Snapshot(file, 100, "0" * 32)
        assert snapshot.read(10, 40) == b"x" * 40
        with pytest.raises(InternalError, match="ended 60 bytes before"):
            snapshot.read(0, 110)
