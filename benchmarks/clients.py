"""The client side of one benchmark measurement, in a process of its own.

`python benchmarks/clients.py < spec.json` runs one operation against one peer
and prints one JSON object on stdout, so the client's time and peak memory are
its own and a hung client can be killed without touching the harness. The spec:

    {"peer": {"kind": "sockftp" | "ftp" | "sftp" | "boto3", ...connection...},
     "op": "transfer" | "batch" | "concurrent" | "logins", ...op fields...,
     "budget": seconds}

  transfer    one file, `direction` get or put, on one connection
  batch       `names` from `local_dir` to `remote_dir` (or back), over `workers` connections
  concurrent  `clients` connections at once, each getting `remote` into `local_dir`
  logins      `count` sequential connect + login + quit, each timed

Every session connects and logs in inside the timed span. Peers:
sockftp is our `ftpclient.Client`; ftp is the stdlib `ftplib` (a pyftpdlib
server); sftp is OpenSSH `sftp -b`, one process per session, whose queued
commands run when the session closes; boto3 talks to an object store directly
(`upload_file`/`download_file` with their defaults: 8 MiB parts, 10 threads),
the limit for sockftp's s3 backend.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ftplib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from ftpclient import Client

FTP_BLOCK = 256 * 1024  # ftplib's block size: the same as sockftp's receive buffer


class Session(Protocol):
    """One logged-in connection; get/put return the bytes sent, when the peer tells."""

    def get(self, remote: str, local: str) -> int | None: ...

    def put(self, local: str, remote: str) -> int | None: ...


# -- sessions ---------------------------------------------------------------------


class SockftpSession:
    def __init__(self, client: Client) -> None:
        self.client = client

    def get(self, remote: str, local: str) -> int | None:
        return self.client.get(remote, local).sent

    def put(self, local: str, remote: str) -> int | None:
        return self.client.put(local, remote).sent


class FtpSession:
    def __init__(self, ftp: ftplib.FTP) -> None:
        self.ftp = ftp

    def get(self, remote: str, local: str) -> int | None:
        with open(local, "wb") as file:
            self.ftp.retrbinary(f"RETR {remote}", file.write, blocksize=FTP_BLOCK)
        return os.path.getsize(local)

    def put(self, local: str, remote: str) -> int | None:
        with open(local, "rb") as file:
            self.ftp.storbinary(f"STOR {remote}", file, blocksize=FTP_BLOCK)
        return os.path.getsize(local)


class SftpSession:
    """Queues commands; they run as one `sftp -b -` batch when the session closes."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def get(self, remote: str, local: str) -> int | None:
        self.commands.append(f'get "{remote}" "{local}"')
        return None

    def put(self, local: str, remote: str) -> int | None:
        self.commands.append(f'put "{local}" "{remote}"')
        return None


class Boto3Session:
    """An S3 bucket through boto3's managed transfers; remote paths are keys."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client, self.bucket = client, bucket

    def get(self, remote: str, local: str) -> int | None:
        self.client.download_file(self.bucket, remote, local)
        return os.path.getsize(local)

    def put(self, local: str, remote: str) -> int | None:
        self.client.upload_file(local, self.bucket, remote)
        return os.path.getsize(local)


@contextlib.contextmanager
def boto3_session(peer: dict) -> Iterator[Session]:
    import boto3  # only this peer needs it: pip install -e '.[s3]'

    client = boto3.client(
        "s3",
        endpoint_url=peer["endpoint"],
        region_name="us-east-1",
        aws_access_key_id=peer["access_key"],
        aws_secret_access_key=peer["secret_key"],
    )
    yield Boto3Session(client, peer["bucket"])


@contextlib.contextmanager
def sockftp_session(peer: dict) -> Iterator[Session]:
    address = {"host": peer["host"], "port": peer["port"], "timeout": peer["timeout"]}
    with Client(**address, user=peer["user"], password=peer["password"]) as client:
        yield SockftpSession(client)


@contextlib.contextmanager
def ftp_session(peer: dict) -> Iterator[Session]:
    ftp = ftplib.FTP(timeout=peer["timeout"])
    try:
        ftp.connect(peer["host"], peer["port"])
        ftp.login(peer["user"], peer["password"])
        yield FtpSession(ftp)
        ftp.quit()
    finally:
        ftp.close()


@contextlib.contextmanager
def sftp_session(peer: dict) -> Iterator[Session]:
    session = SftpSession()
    yield session
    run_sftp(peer, session.commands)


def run_sftp(peer: dict, commands: list[str]) -> None:
    """Run one `sftp` batch; raise with its stderr if any command failed."""
    command = [
        peer["sftp"],
        "-b",
        "-",
        "-q",
        "-P",
        str(peer["port"]),
        "-i",
        peer["key"],
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        f"{peer['user']}@{peer['host']}",
    ]
    batch = "".join(f"{line}\n" for line in commands)
    done = subprocess.run(command, input=batch, capture_output=True, text=True, timeout=peer["timeout"])
    if done.returncode != 0:
        raise RuntimeError(f"sftp exited {done.returncode}: {done.stderr.strip()[-300:]}")


SESSIONS: dict[str, Callable[[dict], contextlib.AbstractContextManager[Session]]] = {
    "sockftp": sockftp_session,
    "ftp": ftp_session,
    "sftp": sftp_session,
    "boto3": boto3_session,
}


def open_session(peer: dict) -> contextlib.AbstractContextManager[Session]:
    return SESSIONS[peer["kind"]](peer)


# -- operations -------------------------------------------------------------------


def check_size(path: str, size: int) -> None:
    actual = os.path.getsize(path)
    if actual != size:
        raise RuntimeError(f"{path}: got {actual} bytes, expected {size}")


def move(session: Session, direction: str, local: str, remote: str) -> int | None:
    return session.get(remote, local) if direction == "get" else session.put(local, remote)


def op_transfer(peer: dict, spec: dict) -> dict:
    started = time.perf_counter()
    with open_session(peer) as session:
        sent = move(session, spec["direction"], spec["local"], spec["remote"])
    seconds = time.perf_counter() - started
    if spec["direction"] == "get":
        check_size(spec["local"], spec["size"])
    return {"seconds": seconds, "sent": sent}


def op_batch(peer: dict, spec: dict) -> dict:
    """All `names`, dealt round-robin to `workers` connections running in parallel."""
    names, workers, deadline = spec["names"], spec["workers"], time.monotonic() + spec["budget"]

    def worker(share: list[str]) -> None:
        with open_session(peer) as session:
            for name in share:
                if time.monotonic() > deadline:
                    raise TimeoutError("batch budget exhausted")
                local, remote = f"{spec['local_dir']}/{name}", f"{spec['remote_dir']}/{name}"
                move(session, spec["direction"], local, remote)

    started = time.perf_counter()
    failures = run_threads(worker, [names[i::workers] for i in range(workers)])
    seconds = time.perf_counter() - started
    if spec["direction"] == "get" and not failures:
        for name in names:
            check_size(f"{spec['local_dir']}/{name}", spec["size"])
    return {"seconds": seconds, "files": len(names), "failures": len(failures), "errors": failures[:3]}


def op_concurrent(peer: dict, spec: dict) -> dict:
    """`clients` sessions released together by a barrier, each getting the same file."""
    count = spec["clients"]
    released: list[float] = []
    barrier = threading.Barrier(count, action=lambda: released.append(time.perf_counter()), timeout=60)

    def client(index: int) -> None:
        local = f"{spec['local_dir']}/{index}.bin"
        barrier.wait()
        with open_session(peer) as session:
            session.get(spec["remote"], local)
        check_size(local, spec["size"])

    failures = run_threads(client, list(range(count)))
    seconds = time.perf_counter() - released[0] if released else float("nan")
    return {"seconds": seconds, "clients": count, "failures": len(failures), "errors": failures[:3]}


def op_logins(peer: dict, spec: dict) -> dict:
    """`count` sequential connect + login + quit; stops early when the budget runs out."""
    latencies, errors = [], []
    deadline = time.monotonic() + spec["budget"]
    for _ in range(spec["count"]):
        if time.monotonic() > deadline:
            errors.append("budget exhausted")
            break
        started = time.perf_counter()
        try:
            with open_session(peer):
                pass
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        latencies.append(time.perf_counter() - started)
    return {"latencies": latencies, "failures": len(errors), "errors": errors[:3]}


def run_threads(target: Callable, items: list) -> list[str]:
    """Run `target(item)` for every item, each on its own thread; return the failures."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = [pool.submit(target, item) for item in items]
        errors = [future.exception() for future in futures]
    return [f"{type(error).__name__}: {error}" for error in errors if error is not None]


OPS: dict[str, Callable[[dict, dict], dict]] = {
    "transfer": op_transfer,
    "batch": op_batch,
    "concurrent": op_concurrent,
    "logins": op_logins,
}


# -- memory -----------------------------------------------------------------------


def own_peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def client_peak_rss_mib(kind: str) -> float:
    """The client's peak RSS: this process, or for sftp the largest child process."""
    if kind == "sftp":
        return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own_peak_rss_mib()


def main() -> int:
    spec = json.load(sys.stdin)
    peer = spec["peer"]
    Path(spec.get("local_dir", ".")).mkdir(parents=True, exist_ok=True)
    result = OPS[spec["op"]](peer, spec)
    result["client_rss_mib"] = client_peak_rss_mib(peer["kind"])
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
