"""Conformance tests: our server, driven over 127.0.0.1 by the independent ``rawclient``.

Every exchange and every rule of PROTOCOL.md is exercised here. The server is started
through its documented interface only (``python -m ftpserver --config ... --port 0`` and
``python -m ftpserver adduser``); its storage is inspected and prepared directly on disk.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .rawclient import (
    MAX_FRAME,
    MAX_LS_ENTRIES,
    Download,
    Message,
    RawClient,
    ServerError,
    Upload,
    encode_frame,
    md5_hex,
    pack_frame,
)

pytestmark = pytest.mark.timeout(30)

HOST = "127.0.0.1"
SOCKET_TIMEOUT = 10.0
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
TEMP_PREFIX = ".sockftp"
ANON_HOME = "public"
DEFAULT_LIMITS: dict[str, Any] = {
    "max_connections": 200,
    "max_connections_per_address": 200,
    "idle_timeout": 300,
    "stall_timeout": 60,
    "login_delay": 0,
    "max_failed_logins": 3,
    "max_file_size": None,
    "shutdown_grace": 1,
}
ANON_RW = {"enabled": True, "home": ANON_HOME, "permissions": "rw", "quota": None}
ANON_OFF = {"enabled": False, "home": ANON_HOME, "permissions": "r", "quota": None}
EXISTING = "existing.txt"  # a file in the anonymous home of the shared server
EXISTING_DATA = b"existing file\n"
OUTSIDE = "outside.txt"  # a file in the storage root, above the anonymous home
OUTSIDE_DATA = b"above the home\n"
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class User:
    """A named account, created with ``ftpserver adduser``."""

    name: str
    password: str
    permissions: str = "rw"
    home: str | None = None
    quota: int | None = None

    @property
    def home_dir(self) -> str:
        return self.home or self.name


ALICE = User("alice", "alice-secret")
READER = User("reader", "reader-secret", permissions="r", home=ANON_HOME)
SMALL = User("small", "small-secret", quota=1000)


@dataclass
class Server:
    """A running server subprocess and its storage root."""

    process: subprocess.Popen[str]
    port: int
    storage: Path
    log: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Area:
    """A directory of the anonymous home reserved for one test, seen remotely and on disk."""

    remote: str
    local: Path

    def path(self, name: str) -> str:
        return f"{self.remote}/{name}"


class Clients:
    """Opens connections for one test and closes them all when it ends."""

    def __init__(self) -> None:
        self._open: list[RawClient] = []

    def connect(self, server: Server, *, greet: bool = True) -> RawClient:
        client = RawClient.connect(HOST, server.port, timeout=SOCKET_TIMEOUT, greet=greet)
        self._open.append(client)
        return client

    def login(self, server: Server, user: User) -> RawClient:
        client = self.connect(server)
        client.login(user.name, user.password)
        return client

    def close_all(self) -> None:
        for client in self._open:
            client.close()


# -- server lifecycle ----------------------------------------------------------


def _drain_log(stream: Any, lines: list[str], ports: queue.Queue[int]) -> None:
    """Collect the server's stderr, reporting the port once, so that the pipe never fills."""
    for line in stream:
        lines.append(line.rstrip("\n"))
        match = LISTENING.search(line)
        if match:
            ports.put(int(match.group(1)))
    ports.put(-1)


def _ftpserver(*args: str) -> list[str]:
    return [sys.executable, "-m", "ftpserver", *args]


def add_user(config: Path, user: User) -> None:
    command = _ftpserver("adduser", user.name, "--config", str(config), "--password-stdin")
    command += ["--permissions", user.permissions, "--home", user.home_dir]
    if user.quota is not None:
        command += ["--quota", str(user.quota)]
    subprocess.run(
        command, input=f"{user.password}\n", text=True, check=True, capture_output=True, timeout=30
    )


def start_server(
    base: Path, *, anonymous: dict[str, Any], users: tuple[User, ...] = (), **limits: Any
) -> Server:
    """Write a config under ``base``, add ``users`` and start a server on a free port."""
    storage = base / "storage"
    storage.mkdir(parents=True)
    for home in {ANON_HOME, *(user.home_dir for user in users)}:
        (storage / home).mkdir(exist_ok=True)
    config = base / "server.yaml"
    settings = {
        "listen": {"host": HOST, "port": 9999},
        "storage": "storage",
        "users_file": "users.yaml",
        "anonymous": anonymous,
        "limits": {**DEFAULT_LIMITS, **limits},
        "log_level": "info",
        # This suite sends hundreds of wrong logins and garbage frames from one address on
        # purpose; the server's defender would (rightly) ban it. Never ban the test host.
        "defender": {"safelist": [f"{HOST}/32"]},
    }
    config.write_text(json.dumps(settings, indent=2))  # JSON is YAML
    for user in users:
        add_user(config, user)
    process = subprocess.Popen(
        _ftpserver("--config", str(config), "--port", "0"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=base,
    )
    lines: list[str] = []
    ports: queue.Queue[int] = queue.Queue()
    threading.Thread(target=_drain_log, args=(process.stderr, lines, ports), daemon=True).start()
    try:
        port = ports.get(timeout=STARTUP_TIMEOUT)
    except queue.Empty:
        port = -1
    server = Server(process, port, storage, lines)
    if port < 0:
        stop_server(server)
        raise RuntimeError("server did not start:\n" + "\n".join(lines))
    return server


def stop_server(server: Server) -> None:
    """Stop the server by its PID; fail if it died on its own or logged a traceback (it must never crash)."""
    exited = server.process.poll()
    if exited is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=STOP_TIMEOUT)
    if exited is not None:
        pytest.fail(f"server exited on its own with {exited}:\n" + "\n".join(server.log[-30:]))
    crashes = [line for line in server.log if "Traceback" in line]
    assert not crashes, "the server logged an unhandled exception:\n" + "\n".join(server.log)


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Anonymous read-write access (auth optional), plus named users."""
    server = start_server(tmp_path_factory.mktemp("open"), anonymous=ANON_RW, users=(ALICE, READER, SMALL))
    (server.storage / ANON_HOME / EXISTING).write_bytes(EXISTING_DATA)
    (server.storage / ANON_HOME / "a").mkdir()
    (server.storage / OUTSIDE).write_bytes(OUTSIDE_DATA)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def closed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Anonymous access disabled (auth required)."""
    server = start_server(tmp_path_factory.mktemp("closed"), anonymous=ANON_OFF, users=(ALICE,))
    yield server
    stop_server(server)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers with particular limits for one test."""
    started: list[Server] = []

    def make(*, anonymous: dict[str, Any] = ANON_RW, users: tuple[User, ...] = (), **limits: Any) -> Server:
        server = start_server(tmp_path / f"server{len(started)}", anonymous=anonymous, users=users, **limits)
        started.append(server)
        return server

    yield make
    for server in started:
        stop_server(server)


@pytest.fixture
def clients() -> Iterator[Clients]:
    pool = Clients()
    yield pool
    pool.close_all()


@pytest.fixture
def client(open_server: Server, clients: Clients) -> RawClient:
    """An anonymous connection to the shared server."""
    return clients.connect(open_server)


@pytest.fixture
def area(open_server: Server, request: pytest.FixtureRequest) -> Area:
    name = "t_" + re.sub(r"\W", "_", request.node.name)
    local = open_server.storage / ANON_HOME / name
    local.mkdir()
    return Area(name, local)


# -- helpers -------------------------------------------------------------------


_SEEDS = itertools.count()


def payload(size: int) -> bytes:
    """Random bytes never returned before, so that no test's content is already on the server."""
    return random.Random(next(_SEEDS)).randbytes(size)


def expect_error(code: str, call: Callable[[], object], what: str = "") -> ServerError:
    """Run ``call``, which must fail with error ``code``; ``what`` names the call in failures."""
    try:
        call()
    except ServerError as error:
        assert error.code == code, f"{what}: expected {code}, got {error}"
        return error
    pytest.fail(f"{what}: succeeded, expected {code}")


def assert_usable(client: RawClient) -> None:
    """The connection still answers requests, in order."""
    assert client.stat("/")["type"] == "dir"


def names_in(client: RawClient, path: str | None = None) -> set[str]:
    names = [entry["name"] for entry in client.ls(path)]
    assert len(names) == len(set(names)), f"duplicate names in ls: {names}"
    assert not [name for name in names if name.startswith(TEMP_PREFIX)], f"ls lists temp files: {names}"
    return set(names)


def read_final_error_or_close(client: RawClient) -> Message | None:
    """The server is expected to end the connection, optionally after one error frame."""
    try:
        frame = client.read_response()
    except ConnectionError:
        return None
    assert frame["ok"] is False, frame
    client.expect_closed()
    return frame


def name_of_bytes(length: int) -> str:
    """A name of exactly ``length`` UTF-8 bytes, mostly two-byte characters."""
    return "é" * (length // 2) + "n" * (length % 2)


def start_partial_put(client: RawClient, path: str, data: bytes, sent: int) -> None:
    """Begin a fresh ``put`` of ``data`` and send only its first ``sent`` bytes."""
    assert client.put_start(path, len(data), md5_hex(data)) == 0
    client.send_raw(data[:sent])


# -- greeting, login, permissions, quit ----------------------------------------


def test_greeting_auth_optional_when_anonymous_allowed(client: RawClient) -> None:
    assert client.greeting["type"] == "hello"
    assert client.greeting["proto"] == 1
    assert client.greeting["auth"] == "optional"
    assert client.stat("/")["type"] == "dir"  # no login needed


def test_greeting_auth_required_when_anonymous_disabled(closed_server: Server, clients: Clients) -> None:
    assert clients.connect(closed_server).greeting["auth"] == "required"


def test_every_op_but_login_and_quit_needs_login(closed_server: Server, clients: Clients) -> None:
    client = clients.connect(closed_server)
    requests: list[Message] = [
        {"op": "ls"},
        {"op": "ls", "path": "/"},
        {"op": "stat", "path": "/"},
        {"op": "get", "path": "x"},
        {"op": "put", "path": "x", "size": 1, "md5": md5_hex(b"x")},
        {"op": "mkdir", "path": "d"},
        {"op": "rm", "path": "x"},
    ]
    for request in requests:
        expect_error("auth_required", lambda request=request: client.request(request))
    client.login(ALICE.name, ALICE.password)
    assert client.stat("/")["type"] == "dir"
    client.quit()
    clients.connect(closed_server).quit()  # quit works before login too


def test_auth_failed_reads_the_same_for_unknown_user_and_wrong_password(
    closed_server: Server, clients: Clients
) -> None:
    client = clients.connect(closed_server)
    wrong_password = expect_error("auth_failed", lambda: client.login(ALICE.name, "not-the-password"))
    unknown_user = expect_error("auth_failed", lambda: client.login("nobody", ALICE.password))
    assert wrong_password.response == unknown_user.response
    assert client.login(ALICE.name, ALICE.password)["permissions"] == "rw"  # still usable


def test_login_reports_permissions_and_uses_the_users_home(open_server: Server, clients: Clients) -> None:
    alice = clients.connect(open_server)
    assert alice.login(ALICE.name, ALICE.password)["permissions"] == "rw"
    alice.put("mine.txt", b"alice's")
    assert (open_server.storage / ALICE.home_dir / "mine.txt").read_bytes() == b"alice's"
    assert EXISTING not in names_in(alice)
    reader = clients.connect(open_server)
    assert reader.login(READER.name, READER.password)["permissions"] == "r"
    assert EXISTING in names_in(reader)


def test_read_only_user_cannot_write(open_server: Server, clients: Clients, area: Area) -> None:
    reader = clients.login(open_server, READER)
    (area.local / "dir").mkdir()
    expect_error("forbidden", lambda: reader.put(area.path("new.txt"), b"data"))
    expect_error("forbidden", lambda: reader.put(EXISTING, EXISTING_DATA))  # even an identical file
    expect_error("forbidden", lambda: reader.mkdir(area.path("newdir")))
    expect_error("forbidden", lambda: reader.rm(area.path("dir")))
    expect_error("forbidden", lambda: reader.rm(EXISTING))
    assert sorted(p.name for p in area.local.iterdir()) == ["dir"]
    assert reader.get(EXISTING).data == EXISTING_DATA  # reading is allowed


def test_max_failed_logins_closes_the_connection(closed_server: Server, clients: Clients) -> None:
    client = clients.connect(closed_server)
    for attempt in range(DEFAULT_LIMITS["max_failed_logins"]):
        client.send({"op": "login", "user": ALICE.name, "password": f"wrong{attempt}"})
        try:
            response = client.read_response()
        except ConnectionError:
            pytest.fail(f"closed after only {attempt} failed logins")
        assert response.get("error") == "auth_failed", response
    try:
        client.send({"op": "login", "user": ALICE.name, "password": ALICE.password})
    except OSError:
        return  # already closed
    read_final_error_or_close(client)  # no login once the cap is reached


def test_login_delay_after_failed_login(make_server: Callable[..., Server], clients: Clients) -> None:
    client = clients.connect(make_server(anonymous=ANON_OFF, users=(ALICE,), login_delay=1))
    started = time.monotonic()
    expect_error("auth_failed", lambda: client.login(ALICE.name, "wrong"))
    client.login(ALICE.name, ALICE.password)
    assert time.monotonic() - started >= 0.9


def test_quit_answers_ok_then_closes(client: RawClient) -> None:
    client.send({"op": "quit"})
    assert client.read_response()["ok"] is True
    client.expect_closed()


# -- ls ------------------------------------------------------------------------


def test_ls_pages_a_large_directory(client: RawClient, area: Area) -> None:
    expected = {f"f{index:05d}" for index in range(2 * MAX_LS_ENTRIES + 500)}
    (area.local / "many").mkdir()
    for name in expected:
        (area.local / "many" / name).touch()
    client.send({"op": "ls", "path": area.path("many")}, {"op": "stat", "path": area.path("many")})
    pages = client.read_ls_pages()
    assert len(pages) >= 3
    assert [page["more"] for page in pages] == [True] * (len(pages) - 1) + [False]
    assert all(len(page["entries"]) <= MAX_LS_ENTRIES for page in pages)
    listed = [entry["name"] for page in pages for entry in page["entries"]]
    assert sorted(listed) == sorted(expected)
    assert client.read_response()["name"] == "many"  # the next answer follows the last ls frame


def test_ls_describes_entries(client: RawClient, area: Area) -> None:
    (area.local / "sub").mkdir()
    (area.local / "f.bin").write_bytes(b"12345")
    entries = {entry["name"]: entry for entry in client.ls(area.remote)}
    assert set(entries) == {"sub", "f.bin"}
    assert entries["sub"]["type"] == "dir"
    assert (entries["f.bin"]["type"], entries["f.bin"]["size"]) == ("file", 5)
    assert abs(entries["f.bin"]["mtime"] - (area.local / "f.bin").stat().st_mtime) < 1
    [empty] = client.ls_pages(area.path("sub"))
    assert (empty["entries"], empty["more"]) == ([], False)


def test_ls_of_the_home(client: RawClient) -> None:
    home = names_in(client, "/")
    assert EXISTING in home
    assert names_in(client) == home  # path defaults to /
    assert names_in(client, "") == home  # empty is the home too


def test_ls_of_a_file_lists_that_file(client: RawClient, area: Area) -> None:
    (area.local / "one.txt").write_bytes(b"abc")
    [entry] = client.ls(area.path("one.txt"))
    assert (entry["name"], entry["type"], entry["size"]) == ("one.txt", "file", 3)


def test_ls_of_a_missing_path_is_not_found(client: RawClient, area: Area) -> None:
    expect_error("not_found", lambda: client.ls(area.path("missing")))
    assert_usable(client)


# -- stat ----------------------------------------------------------------------


def test_stat_file_and_dir(client: RawClient, area: Area) -> None:
    data = payload(4321)
    (area.local / "f.bin").write_bytes(data)
    (area.local / "d").mkdir()
    node = client.stat(area.path("f.bin"))
    assert (node["name"], node["type"], node["size"], node["md5"]) == ("f.bin", "file", 4321, md5_hex(data))
    assert abs(node["mtime"] - (area.local / "f.bin").stat().st_mtime) < 1
    directory = client.stat(area.path("d"))
    assert (directory["name"], directory["type"]) == ("d", "dir")
    expect_error("not_found", lambda: client.stat(area.path("missing")))


# -- get -----------------------------------------------------------------------


def test_get_whole_file(client: RawClient, area: Area) -> None:
    data = payload(300_000)
    (area.local / "f.bin").write_bytes(data)
    assert client.get(area.path("f.bin")) == Download(len(data), md5_hex(data), 0, data)
    assert client.get(area.path("f.bin"), held=b"").data == data  # explicit offset 0
    assert client.get(area.path("f.bin")).data == data  # the connection is ready again


@pytest.mark.parametrize("offset", [1, 123_456, 299_999, 300_000])
def test_get_from_an_offset(client: RawClient, area: Area, offset: int) -> None:
    data = payload(300_000)
    (area.local / "f.bin").write_bytes(data)
    download = client.get(area.path("f.bin"), held=data[:offset])
    assert (download.size, download.md5, download.offset) == (len(data), md5_hex(data), offset)
    assert download.data == data
    assert_usable(client)


def test_get_offset_beyond_size_is_bad_request(client: RawClient, area: Area) -> None:
    (area.local / "f.bin").write_bytes(b"0123456789")
    expect_error("bad_request", lambda: client.get(area.path("f.bin"), held=b"x" * 11))
    assert_usable(client)


def test_get_cancel_sends_nothing(client: RawClient, area: Area) -> None:
    data = payload(2_000_000)
    (area.local / "big.bin").write_bytes(data)
    cancelled = client.get(area.path("big.bin"), cancel=True)
    assert (cancelled.size, cancelled.md5, cancelled.data) == (len(data), md5_hex(data), None)
    assert client.stat(area.path("big.bin"))["md5"] == md5_hex(data)
    assert client.get(area.path("big.bin")).data == data


def test_get_of_a_directory_or_missing_file(client: RawClient, area: Area) -> None:
    expect_error("is_a_directory", lambda: client.get(area.remote))
    expect_error("not_found", lambda: client.get(area.path("missing")))
    assert_usable(client)


def test_get_serves_a_consistent_snapshot(
    open_server: Server, clients: Clients, client: RawClient, area: Area
) -> None:
    old, new = payload(16 << 20), payload(16 << 20)
    target = area.path("big.bin")
    client.put(target, old)
    client.send({"op": "get", "path": target})
    header = client.read_response()
    client.send({"op": "ack"})
    first = client.recv_exact(1 << 20)
    writer = clients.connect(open_server)
    replacing = threading.Thread(target=writer.put, args=(target, new), daemon=True)
    replacing.start()
    replacing.join(timeout=2)  # it may also wait for the get to finish
    rest = client.recv_exact(len(old) - len(first))
    replacing.join(timeout=15)
    assert not replacing.is_alive()
    assert header["md5"] == md5_hex(old)
    assert first + rest == old
    assert client.get(target).data == new


# -- put -----------------------------------------------------------------------


def test_put_new_file(client: RawClient, area: Area) -> None:
    data = payload(500_000)
    assert client.put(area.path("f.bin"), data) == Upload(0, len(data), md5_hex(data))
    assert (area.local / "f.bin").read_bytes() == data
    assert client.stat(area.path("f.bin"))["md5"] == md5_hex(data)
    assert names_in(client, area.remote) == {"f.bin"}


def test_put_of_an_identical_file_returns_offset_size(client: RawClient, area: Area) -> None:
    data = payload(100_000)
    client.put(area.path("f.bin"), data)
    assert client.put(area.path("f.bin"), data).offset == len(data)
    assert (area.local / "f.bin").read_bytes() == data
    assert_usable(client)


def test_put_of_an_empty_file(client: RawClient, area: Area) -> None:
    assert client.put(area.path("empty"), b"") == Upload(0, 0, md5_hex(b""))
    assert (area.local / "empty").read_bytes() == b""
    assert client.stat(area.path("empty"))["size"] == 0
    assert client.get(area.path("empty")).data == b""


def test_put_replaces_an_existing_file(client: RawClient, area: Area) -> None:
    (area.local / "f.txt").write_bytes(b"old content")
    client.put(area.path("f.txt"), b"new")
    assert client.get(area.path("f.txt")).data == b"new"
    client.put(area.path("f.txt"), b"newer", overwrite=True)
    assert (area.local / "f.txt").read_bytes() == b"newer"


def test_checksum_mismatch_keeps_the_destination(client: RawClient, area: Area) -> None:
    old, new = b"previous content\n", payload(200_000)
    (area.local / "f.bin").write_bytes(old)
    corrupted = bytearray(new)
    corrupted[100_000] ^= 0xFF
    expect_error(
        "checksum_mismatch",
        lambda: client.put(area.path("f.bin"), bytes(corrupted), declared_md5=md5_hex(new)),
    )
    assert (area.local / "f.bin").read_bytes() == old
    assert client.get(area.path("f.bin")).data == old
    assert names_in(client, area.remote) == {"f.bin"}
    client.put(area.path("f.bin"), new)  # the connection is usable and no bad bytes are resumed
    assert (area.local / "f.bin").read_bytes() == new


@pytest.mark.parametrize("name", ["resumed.bin", name_of_bytes(255)], ids=["short_name", "255_byte_name"])
def test_interrupted_put_resumes(
    open_server: Server, clients: Clients, client: RawClient, area: Area, name: str
) -> None:
    data, half = payload(600_000), 300_000
    uploader = clients.connect(open_server)
    start_partial_put(uploader, area.path(name), data, half)
    uploader.close()
    time.sleep(0.5)  # let the server notice the dropped connection
    expect_error("not_found", lambda: client.stat(area.path(name)))
    expect_error("not_found", lambda: client.get(area.path(name)))
    assert names_in(client, area.remote) == set()
    names_in(client)  # no temp files in the home either
    assert not (area.local / name).exists()
    offset = client.put_start(area.path(name), len(data), md5_hex(data))
    assert 0 < offset <= half
    client.send_raw(data[offset:])
    client.put_finish(len(data), md5_hex(data))
    assert (area.local / name).read_bytes() == data
    assert names_in(client, area.remote) == {name}


def test_content_held_elsewhere_in_the_home_is_materialised_without_data(
    client: RawClient, area: Area
) -> None:
    # sockftp's instant upload (docs/protocol.md, "Decisions"): when the home already holds
    # this size and md5, the server puts a copy in place *before* answering, so the
    # destination then holds exactly this file and K == S, as section 5.2 allows.
    data = payload(50_000)
    client.put(area.path("first.bin"), data)
    result = client.put(area.path("copy.bin"), data)
    assert result.offset == len(data)
    assert (area.local / "copy.bin").read_bytes() == data
    assert (area.local / "first.bin").read_bytes() == data


def test_resume_requires_the_same_file(
    open_server: Server, clients: Clients, client: RawClient, area: Area
) -> None:
    first, second = payload(400_000), payload(400_000)
    uploader = clients.connect(open_server)
    start_partial_put(uploader, area.path("f.bin"), first, 200_000)
    uploader.close()
    time.sleep(0.5)
    assert client.put(area.path("f.bin"), second).offset == 0  # same path and size, other md5
    assert (area.local / "f.bin").read_bytes() == second


def test_upload_in_progress_is_invisible(
    open_server: Server, clients: Clients, client: RawClient, area: Area
) -> None:
    old, new = b"the previous file\n", payload(400_000)
    (area.local / "f.bin").write_bytes(old)
    uploader = clients.connect(open_server)
    start_partial_put(uploader, area.path("f.bin"), new, 200_000)
    time.sleep(0.2)
    assert client.get(area.path("f.bin")).data == old
    assert client.stat(area.path("f.bin"))["md5"] == md5_hex(old)
    [entry] = client.ls(area.remote)
    assert (entry["name"], entry["size"]) == ("f.bin", len(old))
    assert (area.local / "f.bin").read_bytes() == old
    uploader.send_raw(new[200_000:])
    uploader.put_finish(len(new), md5_hex(new))
    assert client.get(area.path("f.bin")).data == new


def test_put_without_overwrite_on_an_existing_file_is_exists(client: RawClient, area: Area) -> None:
    (area.local / "f.txt").write_bytes(b"keep me")
    expect_error("exists", lambda: client.put(area.path("f.txt"), b"other", overwrite=False))
    assert (area.local / "f.txt").read_bytes() == b"keep me"
    assert_usable(client)
    client.put(area.path("new.txt"), b"fresh", overwrite=False)
    assert (area.local / "new.txt").read_bytes() == b"fresh"


def test_put_parents(client: RawClient, area: Area) -> None:
    expect_error("not_found", lambda: client.put(area.path("x/y/f.txt"), b"data"))
    expect_error("not_found", lambda: client.put(area.path("x/y/f.txt"), b"data", parents=False))
    assert not (area.local / "x").exists()
    client.put(area.path("x/y/f.txt"), b"data", parents=True)
    assert (area.local / "x" / "y" / "f.txt").read_bytes() == b"data"


def test_put_onto_a_directory_is_a_directory(client: RawClient, area: Area) -> None:
    (area.local / "d").mkdir()
    expect_error("is_a_directory", lambda: client.put(area.path("d"), b"data"))
    assert (area.local / "d").is_dir()


# -- mkdir, rm, file-versus-directory errors -----------------------------------


def test_mkdir(client: RawClient, area: Area) -> None:
    client.mkdir(area.path("d"))
    assert (area.local / "d").is_dir()
    expect_error("exists", lambda: client.mkdir(area.path("d")))
    expect_error("not_found", lambda: client.mkdir(area.path("p/q")))
    expect_error("not_found", lambda: client.mkdir(area.path("p/q"), parents=False))
    client.mkdir(area.path("p/q"), parents=True)
    assert (area.local / "p" / "q").is_dir()


def test_rm(client: RawClient, area: Area) -> None:
    (area.local / "f.txt").write_bytes(b"x")
    (area.local / "empty").mkdir()
    (area.local / "full").mkdir()
    (area.local / "full" / "inside").write_bytes(b"y")
    client.rm(area.path("f.txt"))
    client.rm(area.path("empty"))
    expect_error("not_empty", lambda: client.rm(area.path("full")))
    expect_error("not_found", lambda: client.rm(area.path("missing")))
    assert sorted(p.name for p in area.local.iterdir()) == ["full"]
    assert (area.local / "full" / "inside").exists()


def test_rm_of_the_home_is_refused(make_server: Callable[..., Server], clients: Clients) -> None:
    server = make_server()
    client = clients.connect(server)
    with pytest.raises(ServerError):
        client.rm("/")
    assert (server.storage / ANON_HOME).is_dir()
    assert_usable(client)


def test_not_a_directory(client: RawClient, area: Area) -> None:
    (area.local / "f.txt").write_bytes(b"x")
    expect_error("not_a_directory", lambda: client.mkdir(area.path("f.txt/d")))
    expect_error("not_a_directory", lambda: client.mkdir(area.path("f.txt/d/e"), parents=True))
    expect_error("not_a_directory", lambda: client.ls(area.path("f.txt/d")))
    expect_error("not_a_directory", lambda: client.put(area.path("f.txt/g"), b"data"))
    assert (area.local / "f.txt").read_bytes() == b"x"


# -- paths ---------------------------------------------------------------------


def expect_error_from_every_op(code: str, client: RawClient, path: str, *, skip_rm: bool = False) -> None:
    """Every op that takes a path (``rm`` optionally excepted) fails with ``code`` on ``path``."""
    calls: dict[str, Callable[[], object]] = {
        "ls": lambda: client.ls(path),
        "stat": lambda: client.stat(path),
        "get": lambda: client.get(path),
        "put": lambda: client.put(path, b"written"),
        "mkdir": lambda: client.mkdir(path),
        "rm": lambda: client.rm(path),
    }
    if skip_rm:
        del calls["rm"]
    for op, call in calls.items():
        expect_error(code, call, f"{op} {path!r}")


@pytest.mark.parametrize("path", [f"../{OUTSIDE}", f"a/../../{OUTSIDE}", f"/../{OUTSIDE}", "..", "a/../.."])
def test_climbing_above_the_home_is_forbidden(open_server: Server, client: RawClient, path: str) -> None:
    expect_error_from_every_op("forbidden", client, path)
    assert (open_server.storage / OUTSIDE).read_bytes() == OUTSIDE_DATA
    assert_usable(client)


def test_dot_segments_resolve_inside_the_home(client: RawClient, area: Area) -> None:
    (area.local / "f.txt").write_bytes(b"inside")
    assert client.get(f"./a/../{area.remote}/./f.txt").data == b"inside"
    assert client.stat(f"{area.remote}/..")["type"] == "dir"
    assert EXISTING in names_in(client, "a/..")


def test_symlink_out_of_the_home_is_forbidden(
    open_server: Server, client: RawClient, area: Area, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    (area.local / "to_dir").symlink_to(outside)
    (area.local / "to_file").symlink_to(outside / "secret.txt")
    (area.local / "to_alice").symlink_to(open_server.storage / ALICE.home_dir)
    for path in ["to_dir/secret.txt", "to_dir/new.txt", "to_dir/sub/", "to_alice/x"]:
        expect_error_from_every_op("forbidden", client, area.path(path))
    for path in ["to_dir", "to_file", "to_alice"]:
        expect_error_from_every_op("forbidden", client, area.path(path), skip_rm=True)
    for link in ["to_dir", "to_file", "to_alice"]:  # rm may refuse, or remove the link itself only
        with contextlib.suppress(ServerError):
            client.rm(area.path(link))
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"
    assert (open_server.storage / ALICE.home_dir).is_dir()


def test_absolute_path_names_a_file_in_the_home(open_server: Server, clients: Clients) -> None:
    alice = clients.login(open_server, ALICE)
    expect_error("not_found", lambda: alice.stat("/etc/passwd"))
    expect_error("not_found", lambda: alice.get("/etc/passwd"))
    etc = open_server.storage / ALICE.home_dir / "etc"
    etc.mkdir()
    (etc / "passwd").write_bytes(b"not the system file\n")
    assert alice.get("/etc/passwd").data == b"not the system file\n"


BAD_PATHS = {
    "nul": "a\x00b",
    "control": "a\x01b",
    "newline": "a\nb",
    "unit_separator": "a\x1fb",
    "delete": "a\x7fb",
    "backslash": "a\\b",
    "name_256_ascii": "n" * 256,
    "name_256_utf8": name_of_bytes(256),
    "path_over_4096": "/".join(["d" * 200] * 21),
}


@pytest.mark.parametrize("path", BAD_PATHS.values(), ids=BAD_PATHS.keys())
def test_bad_paths_are_bad_request(client: RawClient, area: Area, path: str) -> None:
    expect_error_from_every_op("bad_request", client, area.path(path))
    assert_usable(client)


def test_a_name_of_exactly_255_bytes_is_valid(client: RawClient, area: Area) -> None:
    name = name_of_bytes(255)
    assert len(name.encode()) == 255
    client.put(area.path(name), b"long name")
    assert names_in(client, area.remote) == {name}
    assert client.get(area.path(name)).data == b"long name"
    assert (area.local / name).read_bytes() == b"long name"


def test_names_are_not_unicode_normalised(client: RawClient, area: Area) -> None:
    composed, decomposed = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert composed != decomposed
    client.put(area.path(composed), b"NFC")
    client.put(area.path(decomposed), b"NFD")
    assert names_in(client, area.remote) == {composed, decomposed}
    assert client.get(area.path(composed)).data == b"NFC"
    assert client.get(area.path(decomposed)).data == b"NFD"
    assert (area.local / composed).read_bytes() == b"NFC"


def test_reserved_temp_names_are_forbidden(client: RawClient, area: Area) -> None:
    for path in [f"{TEMP_PREFIX}x", area.path(f"{TEMP_PREFIX}-upload"), f"{TEMP_PREFIX}/x"]:
        expect_error_from_every_op("forbidden", client, path)


# -- request fields ------------------------------------------------------------

MD5_X = md5_hex(b"x")
WRONG_TYPES: dict[str, Message] = {
    "overwrite_string": {"op": "put", "path": "n.txt", "size": 1, "md5": MD5_X, "overwrite": "no"},
    "parents_number": {"op": "put", "path": "n.txt", "size": 1, "md5": MD5_X, "parents": 1},
    "size_bool": {"op": "put", "path": "n.txt", "size": True, "md5": MD5_X},
    "size_string": {"op": "put", "path": "n.txt", "size": "1", "md5": MD5_X},
    "size_negative": {"op": "put", "path": "n.txt", "size": -1, "md5": MD5_X},
    "md5_number": {"op": "put", "path": "n.txt", "size": 1, "md5": 5},
    "md5_not_hex": {"op": "put", "path": "n.txt", "size": 1, "md5": "not an md5"},
    "path_number": {"op": "put", "path": 7, "size": 1, "md5": MD5_X},
    "offset_float": {"op": "get", "path": EXISTING, "offset": 1.5},
    "offset_string": {"op": "get", "path": EXISTING, "offset": "1"},
    "offset_negative": {"op": "get", "path": EXISTING, "offset": -1},
    "ls_path_list": {"op": "ls", "path": ["a"]},
    "ls_path_null": {"op": "ls", "path": None},
    "stat_path_object": {"op": "stat", "path": {"p": "a"}},
    "mkdir_parents_string": {"op": "mkdir", "path": "nd", "parents": "true"},
    "login_user_number": {"op": "login", "user": 1, "password": "x"},
    "login_password_null": {"op": "login", "user": "alice", "password": None},
    "op_number": {"op": 5},
}
MISSING_FIELDS: dict[str, Message] = {
    "op": {"path": EXISTING},
    "get_path": {"op": "get"},
    "stat_path": {"op": "stat"},
    "rm_path": {"op": "rm"},
    "mkdir_path": {"op": "mkdir"},
    "put_path": {"op": "put", "size": 1, "md5": MD5_X},
    "put_size": {"op": "put", "path": "n.txt", "md5": MD5_X},
    "put_md5": {"op": "put", "path": "n.txt", "size": 1},
    "login_user": {"op": "login", "password": "x"},
    "login_password": {"op": "login", "user": "alice"},
}


@pytest.mark.parametrize(
    "request_", [*WRONG_TYPES.values(), *MISSING_FIELDS.values()], ids=[*WRONG_TYPES, *MISSING_FIELDS]
)
def test_wrong_type_or_missing_field_is_bad_request(
    open_server: Server, client: RawClient, request_: Message
) -> None:
    expect_error("bad_request", lambda: client.request(request_))
    assert_usable(client)
    assert not (open_server.storage / ANON_HOME / "n.txt").exists()
    assert not (open_server.storage / ANON_HOME / "nd").exists()


def test_unknown_op(client: RawClient) -> None:
    expect_error("unknown_op", lambda: client.request({"op": "format_disk"}))
    assert_usable(client)


def test_unknown_fields_are_ignored(client: RawClient, area: Area) -> None:
    extra: Message = {"future": {"nested": [1, None]}, "x-flag": True}
    data = payload(100)
    assert client.request({"op": "stat", "path": EXISTING, **extra})["size"] == len(EXISTING_DATA)
    client.send({"op": "put", "path": area.path("f.bin"), "size": 100, "md5": md5_hex(data), **extra})
    assert client.read_response()["offset"] == 0
    client.send_raw(data)
    client.put_finish(100, md5_hex(data))
    client.send({"op": "get", "path": area.path("f.bin"), **extra})
    assert client.read_response()["size"] == 100
    client.send({"op": "ack", **extra})
    assert client.recv_exact(100) == data
    assert_usable(client)


# -- framing and pipelining -----------------------------------------------------


def test_pipelined_requests_are_answered_in_order(client: RawClient, area: Area) -> None:
    (area.local / "a.txt").write_bytes(b"AAA")
    (area.local / "b.txt").write_bytes(b"BBBB")
    client.send(  # several frames in one sendall
        {"op": "stat", "path": area.path("a.txt")},
        {"op": "stat", "path": area.path("missing")},
        {"op": "no_such_op"},
        {"op": "mkdir", "path": area.path("d")},
        {"op": "stat", "path": area.path("d")},
        {"op": "stat", "path": area.path("b.txt")},
        {"op": "get", "path": area.path("a.txt")},
    )
    answers = [client.read_response() for _ in range(6)]
    assert [answer.get("name") or answer.get("error") for answer in answers] == [
        "a.txt",
        "not_found",
        "unknown_op",
        None,
        "d",
        "b.txt",
    ]
    assert answers[3]["ok"] is True
    assert client.receive_get(client.read_response(), b"").data == b"AAA"
    assert_usable(client)


def test_frames_split_into_single_bytes(client: RawClient) -> None:
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    first = encode_frame({"op": "stat", "path": EXISTING})
    second = encode_frame({"op": "stat", "path": "/"})
    for byte in first:
        client.send_raw(bytes([byte]))
        time.sleep(0.002)
    assert client.read_response()["name"] == EXISTING
    client.send_raw(first + second[:3])  # one frame and a piece of the next
    time.sleep(0.05)
    client.send_raw(second[3:])
    assert client.read_response()["name"] == EXISTING
    assert client.read_response()["type"] == "dir"


def test_a_frame_of_exactly_the_maximum_size_is_accepted(client: RawClient) -> None:
    request: Message = {"op": "stat", "path": EXISTING, "pad": ""}
    request["pad"] = "p" * (MAX_FRAME - (len(encode_frame(request)) - 4))
    frame = encode_frame(request)
    assert len(frame) == 4 + MAX_FRAME
    client.send_raw(frame)
    assert client.read_response()["name"] == EXISTING


PROTOCOL_ERRORS = {
    "zero_length": (pack_frame(b""), "bad_request"),
    "too_large": ((MAX_FRAME + 1).to_bytes(4, "big"), "frame_too_large"),
    "huge_length": (b"\xff\xff\xff\xff", "frame_too_large"),
    "invalid_utf8": (pack_frame(b'{"op": "stat", "path": "\xff"}'), "bad_request"),
    "not_json": (pack_frame(b"stat /"), "bad_request"),
    "truncated_json": (pack_frame(b'{"op": "stat"'), "bad_request"),
    "json_array": (pack_frame(b'["op", "stat"]'), "bad_request"),
    "json_string": (pack_frame(b'"stat"'), "bad_request"),
    "json_null": (pack_frame(b"null"), "bad_request"),
}


@pytest.mark.parametrize("frame,code", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
def test_protocol_error_closes_only_that_connection(
    open_server: Server, clients: Clients, frame: bytes, code: str
) -> None:
    bystander = clients.connect(open_server)
    offender = clients.connect(open_server)
    offender.send_raw(frame)
    error = offender.read_response()
    assert (error["ok"], error["error"]) == (False, code)
    offender.expect_closed()
    assert_usable(bystander)
    assert_usable(clients.connect(open_server))


# -- limits --------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["max_connections", "max_connections_per_address"])
def test_busy_at_the_connection_limit(
    make_server: Callable[..., Server], clients: Clients, limit: str
) -> None:
    server = make_server(**{limit: 2})
    first, _second = clients.connect(server), clients.connect(server)
    refused = clients.connect(server, greet=False)
    expect_error("busy", refused.read_greeting)
    refused.expect_closed()
    first.close()
    for _ in range(50):  # the server may need a moment to see the closed connection
        try:
            assert_usable(clients.connect(server))
            return
        except ServerError as error:
            assert error.code == "busy", error
            time.sleep(0.1)
    pytest.fail("still busy after a connection closed")


def test_idle_timeout(make_server: Callable[..., Server], clients: Clients) -> None:
    client = clients.connect(make_server(idle_timeout=1))
    assert_usable(client)
    started = time.monotonic()
    final = read_final_error_or_close(client)
    assert final is None or final["error"] == "timeout"
    assert 0.9 <= time.monotonic() - started < SOCKET_TIMEOUT


def test_stall_timeout_keeps_the_partial_upload(make_server: Callable[..., Server], clients: Clients) -> None:
    server = make_server(stall_timeout=1)
    data, half = payload(200_000), 100_000
    staller = clients.connect(server)
    start_partial_put(staller, "f.bin", data, half)
    started = time.monotonic()
    final = read_final_error_or_close(staller)
    assert final is None or final["error"] == "timeout"
    assert 0.9 <= time.monotonic() - started < SOCKET_TIMEOUT
    resumed = clients.connect(server).put("f.bin", data)
    assert 0 < resumed.offset <= half
    assert (server.storage / ANON_HOME / "f.bin").read_bytes() == data


def test_max_file_size(make_server: Callable[..., Server], clients: Clients) -> None:
    server = make_server(max_file_size=1000)
    client = clients.connect(server)
    expect_error("too_large", lambda: client.put_start("big.bin", 1001, md5_hex(payload(1001))))
    assert_usable(client)
    client.put("ok.bin", payload(1000))
    assert not (server.storage / ANON_HOME / "big.bin").exists()


def test_quota(open_server: Server, clients: Clients) -> None:
    small = clients.login(open_server, SMALL)
    expect_error("quota_exceeded", lambda: small.put_start("big.bin", 1500, md5_hex(payload(1500))))
    assert_usable(small)
    small.put("first.bin", payload(600))
    expect_error("quota_exceeded", lambda: small.put_start("second.bin", 600, md5_hex(payload(600))))
    assert sorted(p.name for p in (open_server.storage / SMALL.home_dir).iterdir()) == ["first.bin"]


# -- extensions (docs/protocol.md section 16), each used only if the greeting offers it ---


def offered(client: RawClient) -> list[str]:
    """The greeting's `features`: optional, and when present a list of strings."""
    features = client.greeting.get("features", [])
    assert isinstance(features, list) and all(isinstance(f, str) for f in features), client.greeting
    return features


def test_greeting_features_are_a_list_of_names(client: RawClient) -> None:
    assert "usage" in offered(client)


def test_usage_reports_the_home_and_follows_puts(open_server: Server, clients: Clients) -> None:
    small = clients.login(open_server, SMALL)
    if "usage" not in offered(small):
        pytest.skip("the server does not offer usage")
    before = small.request({"op": "usage"})
    assert before["ok"] is True and before["quota"] == SMALL.quota
    for key in ("used", "disk_free"):
        assert isinstance(before[key], int) and not isinstance(before[key], bool) and before[key] >= 0, before
    assert before["free"] == max(0, SMALL.quota - before["used"])
    small.put("usage-probe.bin", payload(123))
    after = small.request({"op": "usage"})
    small.request({"op": "rm", "path": "usage-probe.bin"})  # the home is shared with other tests
    assert after["used"] == before["used"] + 123 and after["free"] == before["free"] - 123
    assert small.request({"op": "usage"})["used"] == before["used"]
    anonymous = clients.connect(open_server).request({"op": "usage"})
    assert anonymous["quota"] is None and anonymous["free"] is None


def test_usage_needs_login_where_the_server_requires_it(closed_server: Server, clients: Clients) -> None:
    client = clients.connect(closed_server)
    expect_error("auth_required", lambda: client.request({"op": "usage"}))
    client.login(ALICE.name, ALICE.password)
    assert client.request({"op": "usage"})["ok"] is True


def test_rename_within_the_home(client: RawClient, area: Area) -> None:
    if "rename" not in offered(client):
        pytest.skip("the server does not offer rename")
    client.put(area.path("a.txt"), b"first")
    client.put(area.path("b.txt"), b"second")
    rename = lambda src, dst, **more: client.request({"op": "rename", "path": src, "to": dst, **more})  # noqa: E731
    assert rename(area.path("a.txt"), area.path("c.txt")) == {"ok": True}
    assert (area.local / "c.txt").read_bytes() == b"first" and not (area.local / "a.txt").exists()
    expect_error(
        "exists", lambda: rename(area.path("c.txt"), area.path("b.txt"))
    )  # overwrite defaults to false
    assert (area.local / "b.txt").read_bytes() == b"second"
    assert rename(area.path("c.txt"), area.path("b.txt"), overwrite=True) == {"ok": True}
    assert sorted(p.name for p in area.local.iterdir()) == ["b.txt"]
    assert (area.local / "b.txt").read_bytes() == b"first"
    expect_error("not_found", lambda: rename(area.path("nothing"), area.path("x")))
    expect_error("forbidden", lambda: rename(area.path("b.txt"), "../escaped"))
    expect_error("bad_request", lambda: rename(area.path("b.txt"), area.path("x"), overwrite="yes"))
    expect_error("bad_request", lambda: client.request({"op": "rename", "path": area.path("b.txt")}))
    assert_usable(client)
    assert sorted(p.name for p in area.local.iterdir()) == ["b.txt"]


def test_recursive_rm(client: RawClient, area: Area) -> None:
    if "rm-recursive" not in offered(client):
        pytest.skip("the server does not offer rm-recursive")
    client.put(area.path("t/a/f1"), b"1", parents=True)
    client.put(area.path("t/f2"), b"2")
    client.mkdir(area.path("t/empty"))
    expect_error("not_empty", lambda: client.rm(area.path("t")))  # v1 rm is unchanged
    assert client.request({"op": "rm", "path": area.path("t"), "recursive": True}) == {"ok": True}
    assert list(area.local.iterdir()) == []
    expect_error("not_found", lambda: client.request({"op": "rm", "path": area.path("t"), "recursive": True}))
    expect_error("bad_request", lambda: client.request({"op": "rm", "path": area.path("x"), "recursive": 1}))


def test_extensions_that_write_are_forbidden_to_a_read_only_user(
    open_server: Server, clients: Clients, area: Area
) -> None:
    reader = clients.login(open_server, READER)
    (area.local / "d").mkdir()
    (area.local / "d" / "f").write_bytes(b"kept")
    expect_error(
        "forbidden", lambda: reader.request({"op": "rename", "path": area.path("d"), "to": area.path("e")})
    )
    expect_error("forbidden", lambda: reader.request({"op": "rm", "path": area.path("d"), "recursive": True}))
    assert (area.local / "d" / "f").read_bytes() == b"kept"


def test_attributes_travel_with_put_and_get(client: RawClient, area: Area) -> None:
    if "attributes" not in offered(client):
        pytest.skip("the server does not offer attributes")
    data = payload(2000)
    when = 1_500_000_000.5
    ack = client.request(
        {
            "op": "put",
            "path": area.path("run.sh"),
            "size": len(data),
            "md5": md5_hex(data),
            "mtime": when,
            "mode": 0o755,
        }
    )
    assert ack["ok"] and ack["offset"] == 0
    client.send_raw(data)
    assert client.recv_frame()["ok"] is True
    on_disk = (area.local / "run.sh").stat()
    assert abs(on_disk.st_mtime - when) < 1e-3 and on_disk.st_mode & 0o100
    node = client.stat(area.path("run.sh"))
    assert abs(node["mtime"] - when) < 1e-3 and node["mode"] & 0o100
    header = client.request({"op": "get", "path": area.path("run.sh"), "attributes": True})
    assert abs(header["mtime"] - when) < 1e-3 and header["mode"] == node["mode"]
    client.send({"op": "cancel"})
    plain = client.request({"op": "get", "path": area.path("run.sh")})
    assert "mtime" not in plain and "mode" not in plain  # a v1 get header is unchanged
    client.send({"op": "cancel"})
    assert_usable(client)
    for name, value in (("mtime", "yesterday"), ("mtime", True), ("mode", 0o10000), ("mode", -1)):
        request = {"op": "put", "path": area.path("x"), "size": 1, "md5": md5_hex(b"x"), name: value}
        expect_error("bad_request", lambda request=request: client.request(request), f"{name}={value!r}")
    assert_usable(client)


def eager_put_frames(path: str, data: bytes, **more: object) -> bytes:
    return (
        encode_frame(
            {"op": "put", "path": path, "size": len(data), "md5": md5_hex(data), "eager": True, **more}
        )
        + data
    )


def test_eager_puts_and_gets_pipelined_on_one_connection(client: RawClient, area: Area) -> None:
    if "eager" not in offered(client):
        pytest.skip("the server does not offer eager")
    files = {f"f{i}.bin": payload(1000 + 37 * i) for i in range(20)}
    # Every put with its data, all sent before reading a single answer.
    client.send_raw(b"".join(eager_put_frames(area.path(name), data) for name, data in files.items()))
    for name, data in files.items():  # the answer says how much the server held already: none
        answer = client.read_response()
        assert answer == {"ok": True, "size": len(data), "md5": md5_hex(data), "offset": 0}, name
    for name, data in files.items():
        assert (area.local / name).read_bytes() == data
    # Every get, sent ahead; each header is followed by its data with no ack.
    client.send(*({"op": "get", "path": area.path(name), "eager": True} for name in files))
    for data in files.values():
        header = client.read_response()
        assert header["ok"] and header["size"] == len(data) and header["md5"] == md5_hex(data)
        assert client.recv_exact(len(data)) == data
    assert_usable(client)


def test_a_refused_eager_put_is_drained_and_the_connection_stays_in_step(
    open_server: Server, clients: Clients, area: Area
) -> None:
    client = clients.connect(open_server)
    if "eager" not in offered(client):
        pytest.skip("the server does not offer eager")
    reader = clients.login(open_server, READER)
    (area.local / "d").mkdir()
    good, bad = payload(500), payload(700)
    # A refusal (a directory in the way; no write permission; a malformed md5) comes after
    # the server has read the put's data, and the next request is answered in order.
    for who, frames, code in [
        (client, eager_put_frames(area.path("d"), bad), "is_a_directory"),
        (reader, eager_put_frames(area.path("r.bin"), bad), "forbidden"),
        (client, eager_put_frames(area.path("m.bin"), bad, md5="nothex"), "bad_request"),
    ]:
        who.send_raw(frames + eager_put_frames(area.path(f"after-{code}.bin"), good))
        answer = who.read_response()
        assert answer["ok"] is False and answer["error"] == code, answer
        after = who.read_response()
        if who is client:
            assert after["ok"] is True and after["size"] == len(good) and after["md5"] == md5_hex(good)
        assert_usable(who)
    assert sorted(p.name for p in area.local.iterdir()) == [
        "after-bad_request.bin",
        "after-is_a_directory.bin",
        "d",
    ]


def test_answers_owed_for_whole_requests_come_while_the_next_one_is_unfinished(
    client: RawClient, area: Area
) -> None:
    """A client may stop in the middle of a request: the answers to the whole requests
    before it arrive without the rest (the server waits about 0.2 s for it, then answers)."""
    if "eager" not in offered(client):
        pytest.skip("the server does not offer eager")
    first, second = payload(2000), payload(3000)
    following = eager_put_frames(area.path("second.bin"), second)
    client.sock.settimeout(5)  # the server's idle_timeout is 300 s: the answer may not wait for it
    client.send_raw(eager_put_frames(area.path("first.bin"), first) + following[:-100])
    assert client.read_response() == {"ok": True, "size": len(first), "md5": md5_hex(first), "offset": 0}
    client.send_raw(following[-100:])
    assert client.read_response() == {"ok": True, "size": len(second), "md5": md5_hex(second), "offset": 0}
    assert (area.local / "second.bin").read_bytes() == second
    assert_usable(client)


def test_an_eager_put_too_big_to_drain_closes(client: RawClient, area: Area) -> None:
    if "eager" not in offered(client):
        pytest.skip("the server does not offer eager")
    big = 1_048_577
    client.send({"op": "put", "path": area.path("big"), "size": big, "md5": md5_hex(b"x"), "eager": True})
    answer = read_final_error_or_close(client)
    assert answer is None or answer["error"] == "bad_request"
    assert not (area.local / "big").exists()


def test_an_eager_get_of_a_missing_file_sends_no_data(client: RawClient, area: Area) -> None:
    if "eager" not in offered(client):
        pytest.skip("the server does not offer eager")
    client.put(area.path("there"), b"here")
    client.send(
        {"op": "get", "path": area.path("missing"), "eager": True},
        {"op": "get", "path": area.path("there"), "eager": True},
    )
    assert client.read_response()["error"] == "not_found"
    header = client.read_response()
    assert header["size"] == 4 and client.recv_exact(4) == b"here"
    assert_usable(client)


def test_ls_md5_lists_the_checksums_the_server_knows(client: RawClient, area: Area) -> None:
    if "ls-md5" not in offered(client):
        pytest.skip("the server does not offer ls-md5")
    stored = payload(3000)
    client.put(area.path("stored.bin"), stored)
    (area.local / "placed.bin").write_bytes(b"copied in on the server")  # never read by it yet
    (area.local / "sub").mkdir()

    def listing(**more: object) -> dict[str, Message]:
        client.send({"op": "ls", "path": area.remote, **more})
        return {entry["name"]: entry for page in client.read_ls_pages() for entry in page["entries"]}

    entries = listing(md5=True)
    assert set(entries) == {"stored.bin", "placed.bin", "sub"}
    assert "md5" not in entries["sub"]  # a directory has none
    for name, data in (("stored.bin", stored), ("placed.bin", b"copied in on the server")):
        # Optional (the server may not know it without reading the file); never wrong.
        assert entries[name].get("md5", md5_hex(data)) == md5_hex(data), name
    assert all("md5" not in entry for entry in listing().values())  # v1's listing, unchanged
    assert all("md5" not in entry for entry in listing(md5=False).values())
    assert client.stat(area.path("placed.bin"))["md5"] == md5_hex(b"copied in on the server")  # now read
    changed = b"COPIED IN ON THE SERVER"  # the same size
    before = (area.local / "placed.bin").stat()
    (area.local / "placed.bin").write_bytes(changed)
    os.utime(area.local / "placed.bin", ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    after = listing(md5=True)["placed.bin"]
    assert after.get("md5", md5_hex(changed)) == md5_hex(changed)  # never the old content's
    expect_error("bad_request", lambda: client.request({"op": "ls", "path": area.remote, "md5": "yes"}))
    assert_usable(client)
