"""The client side of one benchmark measurement, in a process of its own.

`python benchmarks/clients.py < spec.json` runs one operation against one peer
and prints one JSON object on stdout, so the client's time and peak memory are
its own and a hung client can be killed without touching the harness. The spec:

    {"peer": {"kind": "sockftp" | "ftp" | "sftp" | "rsync" | "boto3", ...connection...},
     "op": "transfer" | "batch" | "concurrent" | "logins" | "command", ...op fields...,
     "budget": seconds}

  transfer    one file, `direction` get or put, on one connection
  batch       `names` from `local_dir` to `remote_dir` (or back), over `workers` connections
  concurrent  `clients` connections at once, each getting `remote` into `local_dir`
  logins      `count` sequential connect + login + quit, each timed
  command     one command line (`argv`, `env`, `stdin`) run to its exit: a tool's own CLI

Every session connects and logs in inside the timed span. Peers:
sockftp is our `ftpclient.Client` (a batch pipelines its share of the files, as
ftpclient's own batches do); ftp is the stdlib `ftplib` (a pyftpdlib or vsftpd
server); sftp is OpenSSH `sftp -b`, one process per session, whose queued
commands run when the session closes; rsync likewise queues its files for one
`rsync` per session (its names as include rules); boto3 talks to an object store directly
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

from ftpclient import Client, Transfer
from ftpclient.pipeline import get_pipelined, put_pipelined

FTP_BLOCK = 256 * 1024  # ftplib's block size: the same as sockftp's receive buffer


class Session(Protocol):
    """One logged-in connection; get/put return the bytes sent, when the peer tells."""

    def get(self, remote: str, local: str) -> int | None: ...

    def put(self, local: str, remote: str) -> int | None: ...


# -- sessions ---------------------------------------------------------------------


class SockftpSession:
    def __init__(self, client: Client) -> None:
        self.client = client

    def move_pipelined(self, direction: str, pairs: list[tuple[str, str]]) -> bool:
        """Every (local, remote) pair in one pipelined call, as ftpclient's batches move
        small files (ftpclient.pipeline); raises unless each came back as a `Transfer`.
        Returns whether the server offers `eager` (if not, the calls went the v1 way)."""
        results: dict[int, Transfer | BaseException] = {}

        def done(index: int, result: Transfer | BaseException) -> None:
            results[index] = result

        if direction == "put":
            put_pipelined(self.client, [(Path(local), remote) for local, remote in pairs], done)
        else:  # the scratch folder is emptied before each repetition: no target to compare with
            get_pipelined(self.client, [(remote, Path(local)) for local, remote in pairs], done, replace=True)
        failed = [
            f"{pairs[index][1]}: {results.get(index, 'no outcome')!r}"
            for index in range(len(pairs))
            if not isinstance(results.get(index), Transfer)
        ]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(pairs)} files failed: {'; '.join(failed[:3])}")
        return "eager" in self.client.features

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
    """Run one `sftp` batch (the peer's argv reads it from stdin); raise with its stderr
    if any command failed."""
    run_tool(peer["argv"], "".join(f"{line}\n" for line in commands), peer["timeout"])


class RsyncSession:
    """Queues files; they move as one `rsync` run when the session closes.
    A batch moves files from one folder into another under the same names."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []  # (source, target)

    def get(self, remote: str, local: str) -> int | None:
        self.pairs.append((remote, local))
        return None

    def put(self, local: str, remote: str) -> int | None:
        self.pairs.append((local, remote))
        return None


@contextlib.contextmanager
def rsync_session(peer: dict) -> Iterator[Session]:
    session = RsyncSession()
    yield session
    if session.pairs:
        run_rsync(peer, session.pairs)


def run_rsync(peer: dict, pairs: list[tuple[str, str]]) -> None:
    sources = {source.rpartition("/")[0] for source, _ in pairs}
    targets = {target.rpartition("/")[0] for _, target in pairs}
    names = [source.rpartition("/")[2] for source, _ in pairs]
    if len(sources) != 1 or len(targets) != 1 or names != [t.rpartition("/")[2] for _, t in pairs]:
        raise ValueError("an rsync batch moves files from one folder into another, under the same names")
    # The names as include rules, not `--files-from`: rsync 3.5.0's daemon with `use chroot
    # = false` reports every file of a `--files-from` list it sends as vanished.
    command = [
        peer["rsync"],
        "-r",
        "--include-from=-",
        "--exclude=*",
        f"{sources.pop()}/",
        f"{targets.pop()}/",
    ]
    run_tool(command, "".join(f"/{name}\n" for name in names), peer["timeout"])


def run_tool(command: list[str], stdin: str | None, timeout: float, env: dict | None = None) -> None:
    """Run a client program to its end; raise with the tail of what it said if it failed."""
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip())[-300:]
        raise RuntimeError(f"{Path(command[0]).name} exited {done.returncode}: {said}")


SESSIONS: dict[str, Callable[[dict], contextlib.AbstractContextManager[Session]]] = {
    "sockftp": sockftp_session,
    "ftp": ftp_session,
    "sftp": sftp_session,
    "rsync": rsync_session,
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
    """All `names`, dealt round-robin to `workers` connections running in parallel. A
    sockftp connection moves its share in one pipelined call unless `lockstep` asks for
    one v1 exchange per file."""
    names, workers, deadline = spec["names"], spec["workers"], time.monotonic() + spec["budget"]
    pipelined: list[bool] = []

    def worker(share: list[str]) -> None:
        pairs = [(f"{spec['local_dir']}/{name}", f"{spec['remote_dir']}/{name}") for name in share]
        with open_session(peer) as session:
            if isinstance(session, SockftpSession) and not spec.get("lockstep"):
                pipelined.append(session.move_pipelined(spec["direction"], pairs))
                return
            for local, remote in pairs:
                if time.monotonic() > deadline:
                    raise TimeoutError("batch budget exhausted")
                move(session, spec["direction"], local, remote)

    started = time.perf_counter()
    failures = run_threads(worker, [names[i::workers] for i in range(workers)])
    seconds = time.perf_counter() - started
    if spec["direction"] == "get" and not failures:
        for name in names:
            check_size(f"{spec['local_dir']}/{name}", spec["size"])
    return {
        "seconds": seconds,
        "files": len(names),
        "failures": len(failures),
        "errors": failures[:3],
        "pipelined": bool(pipelined) and all(pipelined),
    }


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


def op_command(peer: dict, spec: dict) -> dict:
    """One command line (`argv`, extra `env`, `stdin`), timed from its start to its exit."""
    env = {**os.environ, **spec.get("env", {})}
    started = time.perf_counter()
    run_tool(spec["argv"], spec.get("stdin"), spec["budget"], env)
    return {"seconds": time.perf_counter() - started}


OPS: dict[str, Callable[[dict, dict], dict]] = {
    "transfer": op_transfer,
    "batch": op_batch,
    "concurrent": op_concurrent,
    "logins": op_logins,
    "command": op_command,
}


# -- memory -----------------------------------------------------------------------


def own_peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def client_peak_rss_mib(kind: str, op: str) -> float:
    """The client's peak RSS: this process, or for a command line (sftp, rsync, the
    `command` op) the largest child process."""
    if kind in ("sftp", "rsync") or op == "command":
        return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own_peak_rss_mib()


def main() -> int:
    spec = json.load(sys.stdin)
    peer = spec["peer"]
    Path(spec.get("local_dir", ".")).mkdir(parents=True, exist_ok=True)
    result = OPS[spec["op"]](peer, spec)
    result["client_rss_mib"] = client_peak_rss_mib(peer["kind"], spec["op"])
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
