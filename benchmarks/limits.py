"""Machine limits, measured in the same run as the peers they are compared with.

md5        `hashlib.md5` on one core over a buffer in memory: what a verified
           transfer can hash at best.
copy       a raw Python loopback copy: `socket.sendfile` of the test file into
           `recv_into` one reused 256 KiB buffer, sender on a thread.
hash+write the same receiver also hashing each chunk and writing it to a
           file, then fsync: what a verified, durable download can do at best
           with one receiving thread.

All three are in MiB/s. One more, in files/s:

durable    small files written the way a server that never answers `ok` before
           the data is on disk must write them, with no network and no checks:
           create a temp file, write, fsync, rename, fsync the folder; on 4
           threads. A file server that fsyncs cannot store small files faster.

And one in seconds, the floor under the concurrent clients' wall time:

clients    what N clients getting one file each must do on their own side,
           whatever the server: N threads in one process each MD5 the file's
           bytes from memory, and (durable) write them to a file and fsync it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import MIB, set_aside

DURABLE_THREADS = 4

RECV_BUFFER = 256 * 1024


def md5_rate(total: int = 256 * MIB, chunk: int = MIB) -> float:
    """MiB/s of `hashlib.md5` over `total` bytes already in memory, fed in `chunk`s."""
    buffer = bytearray(os.urandom(chunk)) * (total // chunk)
    view = memoryview(buffer)
    digest = hashlib.md5()
    started = time.perf_counter()
    for offset in range(0, total, chunk):
        digest.update(view[offset : offset + chunk])
    return total / MIB / (time.perf_counter() - started)


def loopback_rate(source: Path, sink: Path | None = None, timeout: float = 120.0) -> float:
    """MiB/s of sending `source` over loopback; with `sink`, the receiver also hashes
    and writes what it gets to `sink` (fsynced; removed after the clock stops)."""
    try:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.settimeout(timeout)
            port = listener.getsockname()[1]
            sender = threading.Thread(target=_send_file, args=(source, port, timeout), daemon=True)
            started = time.perf_counter()
            sender.start()
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(timeout)
                received = _receive(conn, sink)
            seconds = time.perf_counter() - started
            sender.join(timeout)
    finally:
        if sink is not None:
            sink.unlink(missing_ok=True)
    if received != source.stat().st_size:
        raise RuntimeError(f"loopback copy received {received} of {source.stat().st_size} bytes")
    return received / MIB / seconds


def _send_file(source: Path, port: int, timeout: float) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn, open(source, "rb") as file:
        conn.sendfile(file)


def _receive(conn: socket.socket, sink: Path | None) -> int:
    if sink is None:
        return _drain(conn, lambda chunk: None)
    digest = hashlib.md5()
    with open(sink, "wb") as file:

        def consume(chunk: memoryview) -> None:
            file.write(chunk)
            digest.update(chunk)

        total = _drain(conn, consume)
        file.flush()
        os.fsync(file.fileno())
    return total


def _drain(conn: socket.socket, consume: Callable[[memoryview], object]) -> int:
    """Read into one reused buffer until the sender closes; hand each chunk to `consume`."""
    buffer = bytearray(RECV_BUFFER)
    view = memoryview(buffer)
    total = 0
    while True:  # ends when the sender closes, or on the socket's time-out
        count = conn.recv_into(buffer)
        if not count:
            return total
        consume(view[:count])
        total += count


def durable_files_rate(folder: Path, count: int, size: int, threads: int = DURABLE_THREADS) -> float:
    """Files/s of writing `count` files of `size` bytes durably into `folder` (emptied after)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)

    def write(share: range) -> None:
        directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for index in share:
                temp = folder / f".tmp{index}"
                fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(temp, folder / f"f{index}")
                os.fsync(directory)
        finally:
            os.close(directory)

    return count / _time_threads(write, [range(k, count, threads) for k in range(threads)], folder)


def clients_work_seconds(
    folder: Path, clients: int, size: int, durable: bool, chunk: int = RECV_BUFFER
) -> float:
    """Seconds for `clients` threads to each MD5 `size` bytes from memory in `chunk`s, and
    if `durable` also write each chunk to a file of its own and fsync it (files removed
    after): the concurrent clients' own work, with no network and no server."""
    folder.mkdir(parents=True, exist_ok=True)
    data = memoryview(os.urandom(size))

    def work(index: int) -> None:
        digest = hashlib.md5()
        if not durable:
            for offset in range(0, size, chunk):
                digest.update(data[offset : offset + chunk])
            return
        with open(folder / f"client{index}.bin", "wb") as file:
            for offset in range(0, size, chunk):
                piece = data[offset : offset + chunk]
                digest.update(piece)
                file.write(piece)
            file.flush()
            os.fsync(file.fileno())

    return _time_threads(work, list(range(clients)), folder)


def _time_threads(work: Callable[[Any], None], items: list, folder: Path) -> float:
    """Seconds for `work(item)` on one thread per item, all started together; then the
    files they wrote into `folder` are set aside."""
    workers = [threading.Thread(target=work, args=(item,)) for item in items]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - started
    set_aside(folder)  # not deleted: see harness.set_aside
    folder.mkdir()
    return seconds
