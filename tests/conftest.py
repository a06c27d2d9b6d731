"""Fixtures: real servers on 127.0.0.1 port 0, configs written as YAML under tmp_path.

- `make_config(**sections)` writes a server.yaml (plus users.yaml) and loads it.
- `serve(config)` runs a `FileServer` in a thread and stops it at teardown.
- `server` is the common case: anonymous read-write plus users alice (rw),
  bob (r) and carol (rw, 1000-byte quota).
- `raw(server)` is a `FrameStream` over a fresh socket with the greeting read,
  for driving the server by hand-built frames rather than by our own client.
- `server_process(config_path)` starts `python -m ftpserver` as a subprocess.
- `run_cli(*args, port=...)` runs the client's `main(argv, env)` in this process;
  `run_cli_subprocess` runs `python -m ftpclient`, for the end-to-end cases.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ftpclient import Client
from ftpclient.cli import main as client_main
from ftpclient.environment import Environment
from ftpproto import encode_frame
from ftpproto.io import FrameStream
from ftpserver.auth import hash_password
from ftpserver.config import ServerConfig, load_config
from ftpserver.server import FileServer

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
_HASHES: dict[str, str] = {}
SOCKET_TIMEOUT = 10.0


def password_hash(user: str) -> str:
    """scrypt is slow on purpose: hash each test password once per run."""
    if user not in _HASHES:
        _HASHES[user] = hash_password(PASSWORDS[user])
    return _HASHES[user]


def counting_fsyncs(monkeypatch, directories: bool = False) -> list[tuple[int, int]]:
    """Record (device, inode) of each regular file (or with `directories`, each directory)
    fsynced from now on."""
    synced: list[tuple[int, int]] = []
    real = os.fsync
    wanted = stat.S_ISDIR if directories else stat.S_ISREG

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if wanted(st.st_mode):
            synced.append((st.st_dev, st.st_ino))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def write_config(tmp_path: Path, **sections: object) -> Path:
    """Write server.yaml and users.yaml under tmp_path; `sections` override the defaults."""
    (tmp_path / "storage").mkdir(exist_ok=True)
    users = {
        "alice": {"password": password_hash("alice"), "permissions": "rw"},
        "bob": {"password": password_hash("bob"), "permissions": "r"},
        "carol": {"password": password_hash("carol"), "permissions": "rw", "quota": 1000},
    }
    (tmp_path / "users.yaml").write_text(yaml.safe_dump({"users": users}))
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "storage": "storage",
        "users_file": "users.yaml",
        "anonymous": {"enabled": True, "home": "/", "permissions": "rw"},
        "limits": {"login_delay": 0, "idle_timeout": 30, "stall_timeout": 10, "shutdown_grace": 2},
        # Tests misbehave from 127.0.0.1 on purpose; tests/test_defender.py turns this off.
        "defender": {"safelist": ["127.0.0.0/8"]},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., ServerConfig]:
    def make(**sections: object) -> ServerConfig:
        return load_config(write_config(tmp_path, **sections))

    return make


@dataclass
class RunningServer:
    server: FileServer
    config: ServerConfig

    @property
    def port(self) -> int:
        return self.server.address[1]

    @property
    def root(self) -> Path:
        return self.config.storage_root

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=SOCKET_TIMEOUT)


@pytest.fixture
def serve() -> Iterator[Callable[[ServerConfig], RunningServer]]:
    started: list[tuple[FileServer, threading.Thread]] = []

    def start(config: ServerConfig) -> RunningServer:
        server = FileServer(config)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        started.append((server, thread))
        return RunningServer(server, config)

    yield start
    for server, thread in started:
        server.stop()
        thread.join(5)


@pytest.fixture
def server(make_config, serve) -> RunningServer:
    return serve(make_config())


class Raw(FrameStream):
    """A FrameStream with the greeting already read, and a request helper."""

    greeting: dict

    def request(self, op: str, **fields: object) -> dict:
        self.send({"op": op, **fields})
        return self.recv()


@pytest.fixture
def raw(server) -> Iterator[Callable[..., Raw]]:
    opened: list[Raw] = []

    def connect(target: RunningServer = server, user: str | None = None) -> Raw:
        stream = Raw(target.connect())
        opened.append(stream)
        stream.greeting = stream.recv()
        if user is not None:
            answer = stream.request("login", user=user, password=PASSWORDS[user])
            assert answer["ok"], answer
        return stream

    yield connect
    for stream in opened:
        stream.close()


# -- subprocesses ------------------------------------------------------------------


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    log: list[str]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)


def start_server_process(config_path: Path, *extra: str, env: dict | None = None) -> ServerProcess:
    """Start `python -m ftpserver` on port 0 and wait for its `listening on` line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ftpserver", "--config", str(config_path), "--port", "0", *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    log: list[str] = []
    port_found = threading.Event()
    port: list[int] = []

    def drain() -> None:
        for line in process.stderr:
            log.append(line)
            match = re.search(r"listening on [\d.]+:(\d+)", line)
            if match and not port:
                port.append(int(match.group(1)))
                port_found.set()

    threading.Thread(target=drain, daemon=True).start()
    if not port_found.wait(15):
        process.kill()
        process.wait(5)
        raise RuntimeError("server did not start:\n" + "".join(log))
    return ServerProcess(process, port[0], log)


@pytest.fixture
def server_process() -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(config_path: Path, *extra: str, env: dict | None = None) -> ServerProcess:
        proc = start_server_process(config_path, *extra, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def client_environ(port: int, env: dict | None = None) -> dict[str, str]:
    """The variables a client run sees: ours without SOCKFTP_*, then the server's
    address, no config file, then `env` (where `{"X": ""}` removes X)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SOCKFTP_")}
    full_env.update(
        {"SOCKFTP_HOST": "127.0.0.1", "SOCKFTP_PORT": str(port), "XDG_CONFIG_HOME": "/nonexistent"}
    )
    full_env.update(env or {})
    return {k: v for k, v in full_env.items() if v != ""}


@dataclass
class CliResult:
    """What a client run left: the fields of `subprocess.CompletedProcess` the tests read."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_cli(
    *args: str,
    port: int,
    env: dict | None = None,
    cwd: Path | None = None,
    input: str | None = None,
    terminal: bool = False,
) -> CliResult:
    """Run the client CLI in this process, `main(args, Environment(...))` against 127.0.0.1:port:
    `input` is its stdin, the variables `client_environ()`; in `cwd` for the call. With
    `terminal`, stdin and stderr count as a terminal's (stdout stays a pipe)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    environment = Environment(
        stdin=io.StringIO(input or ""),
        stdout=stdout,
        stderr=stderr,
        stdin_isatty=terminal,
        stderr_isatty=terminal,
        environ=client_environ(port, env),
    )
    before = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        status = client_main(list(args), environment)
    finally:
        os.chdir(before)
    return CliResult(["ftpclient", *args], int(status), stdout.getvalue(), stderr.getvalue())


def run_cli_subprocess(
    *args: str, port: int, env: dict | None = None, cwd: Path | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the client CLI (`python -m ftpclient`) in a subprocess against 127.0.0.1:port."""
    return subprocess.run(
        [sys.executable, "-m", "ftpclient", *args],
        capture_output=True,
        text=True,
        env=client_environ(port, env),
        cwd=cwd,
        input=input,
        timeout=60,
    )


def eager_put(path: str, data: bytes) -> bytes:
    """An eager put's frame and its data, as a pipelining client sends them."""
    md5 = hashlib.md5(data).hexdigest()
    return encode_frame({"op": "put", "path": path, "size": len(data), "md5": md5, "eager": True}) + data


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> object:
    """Poll `predicate` until it returns something true (and return that) or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.02)
    return predicate()


# -- real services: an S3-compatible object store, a load balancer (tests/services.py) --


def _needs(start, *args):
    """Start a service; a program that is not installed fails the test in CI (which installs
    it), and skips it, saying why, elsewhere."""
    from .services import ProgramMissingError

    try:
        return start(*args)
    except ProgramMissingError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def object_store(tmp_path_factory):
    """One SeaweedFS for the whole run (it takes a second to start); each test keeps to
    a key prefix of its own in its bucket."""
    from .services import start_seaweedfs

    store = _needs(start_seaweedfs, tmp_path_factory.mktemp("seaweedfs"))
    yield store
    store.stop()


@pytest.fixture
def balancer(tmp_path):
    """`balancer(ports)` starts an HAProxy in TCP mode over the servers on `ports`;
    `balancer(ports, send_proxy=True)` has it name each client in a PROXY v2 header."""
    from .services import start_haproxy

    started = []

    def start(ports, send_proxy=False):
        running = _needs(start_haproxy, tmp_path / f"haproxy{len(started)}", ports, send_proxy)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


class working_directory:  # a function in use: `with working_directory(path):`
    """Run the block in `path` (None: where we are), and come back after it."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.before = path, os.getcwd()

    def __enter__(self) -> None:
        os.chdir(self.path or self.before)

    def __exit__(self, *exc_info: object) -> None:
        os.chdir(self.before)


def run_cli_bytes(
    *args: str, port: int, input: bytes = b"", cwd: Path | None = None, env: dict | None = None
) -> tuple[CliResult, bytes]:
    """`run_cli` with streams that also take bytes (`cat`, `get -o -`, `put -`): `input` is
    stdin's bytes; returns the result (its stdout decoded leniently) and stdout's bytes."""
    stdout, stderr = io.BytesIO(), io.StringIO()
    environment = Environment(
        stdin=io.TextIOWrapper(io.BytesIO(input), encoding="utf-8"),
        stdout=io.TextIOWrapper(stdout, encoding="utf-8", write_through=True),
        stderr=stderr,
        stdin_isatty=False,
        stderr_isatty=False,
        environ=client_environ(port, env),
    )
    with working_directory(cwd):
        status = client_main(list(args), environment)
    data = stdout.getvalue()
    return CliResult(
        ["ftpclient", *args], int(status), data.decode(errors="replace"), stderr.getvalue()
    ), data


@pytest.fixture
def v1_server(make_config, serve, monkeypatch) -> RunningServer:
    """Our server, greeting as a plain v1 server does: no `features`, so the client
    offers no extension to it (and refuses each before sending it)."""
    import ftpserver.handler

    monkeypatch.setattr(ftpserver.handler, "FEATURES", ())
    return serve(make_config())


class CountingClient(Client):
    """A real client that counts the requests it sends, by op; `without` hides extensions
    the server offers, as if it did not."""

    def __init__(self, *args: object, without: frozenset[str] = frozenset(), **kwargs: object) -> None:
        self.sent: dict[str, int] = {}
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.features = frozenset(self.features) - without

    def _send(self, message: dict, *args: object, **kwargs: object) -> None:
        op = str(message.get("op"))
        self.sent[op] = self.sent.get(op, 0) + 1
        super()._send(message, *args, **kwargs)  # type: ignore[arg-type]
