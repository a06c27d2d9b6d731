"""Protocol extensions through the client library: what the greeting offers, and a
clean refusal (before anything is sent) against a server that offers less."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from ftpclient import Client, ProtocolMismatchError
from ftpproto import FEATURES, ExistsError, NotEmptyError, UnknownOpError, UnsupportedError
from ftpproto.io import FrameStream, PeerClosedError

from .conftest import PASSWORDS

pytestmark = pytest.mark.timeout(30)

V1_GREETING = {"type": "hello", "proto": 1, "server": "plain-v1/1.0", "auth": "optional"}


class ScriptedServer:
    """One connection served by `answer(message) -> reply | None` on a thread; every
    frame it received is kept, and a failure on its thread fails the test."""

    def __init__(self, greeting: dict, answer: Callable[[dict], dict | None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.received: list[dict] = []
        self.error: BaseException | None = None
        self._greeting, self._answer = greeting, answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                stream = FrameStream(conn)
                stream.set_timeout(10)
                stream.send(self._greeting)
                while True:
                    try:
                        message = stream.recv()
                    except PeerClosedError:
                        return
                    self.received.append(message)
                    reply = {"ok": True} if message.get("op") == "quit" else self._answer(message)
                    if reply is not None:
                        stream.send(reply)
                    if message.get("op") == "quit":
                        return
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self) -> None:
        self.thread.join(10)
        self.listener.close()
        assert not self.thread.is_alive(), "the scripted server did not finish"
        if self.error is not None:
            raise self.error


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    made: list[ScriptedServer] = []

    def make(greeting: dict, answer: Callable[[dict], dict | None]) -> ScriptedServer:
        made.append(ScriptedServer(greeting, answer))
        return made[-1]

    yield make
    for server in made:
        server.join()


def test_our_server_offers_its_features_and_usage_follows_the_home(server):
    assert "usage" in FEATURES
    with Client("127.0.0.1", server.port, "carol", PASSWORDS["carol"], timeout=10) as client:
        assert client.features == set(FEATURES)
        before = client.usage()
        assert (before.used, before.quota, before.free) == (0, 1000, 1000)
        assert before.disk_free is not None and before.disk_free > 0
        (server.root / "probe").write_bytes(b"")  # a local file to upload
        client.put(server.root / "probe", "/empty")
        data = server.root / "data"
        data.write_bytes(b"x" * 400)
        client.put(data, "/data.bin")
        after = client.usage()
        assert (after.used, after.free) == (400, 600)


def test_against_a_plain_v1_server_an_extension_is_refused_before_sending(scripted):
    v1 = scripted(
        V1_GREETING, lambda message: {"ok": True, "type": "dir", "name": "box", "size": 0, "mtime": 0}
    )
    with Client("127.0.0.1", v1.port, timeout=10) as client:
        assert client.features == frozenset()
        with pytest.raises(UnsupportedError) as raised:
            client.usage()
        assert isinstance(raised.value, UnknownOpError) and raised.value.code == "unknown_op"
        assert "does not offer 'usage'" in raised.value.message
        with pytest.raises(UnsupportedError, match="'rename'"):
            client.rename("/a", "/b")
        with pytest.raises(UnsupportedError, match="'rm-recursive'"):
            client.rm("/box", recursive=True)
        assert not client.closed and client.stat("/box").type == "dir"  # the connection goes on
    v1.join()
    assert [m["op"] for m in v1.received] == ["stat", "quit"]  # nothing was sent for usage


def test_a_malformed_usage_answer_is_the_servers_fault(scripted):
    liar = scripted(
        {**V1_GREETING, "features": ["usage", 7, "later"]}, lambda message: {"ok": True, "used": "lots"}
    )
    with Client("127.0.0.1", liar.port, timeout=10) as client:
        assert client.features == {"usage", "later"}  # names that are not strings are ignored
        with pytest.raises(ProtocolMismatchError, match="malformed usage answer"):
            client.usage()


def test_rename_and_recursive_rm_through_the_client(server, tmp_path):
    source = tmp_path / "f"
    source.write_bytes(b"moved bytes")
    with Client("127.0.0.1", server.port, "alice", PASSWORDS["alice"], timeout=10) as client:
        client.put(source, "/d/sub/f", parents=True)
        client.rename("/d/sub/f", "/d/g")
        assert [e.name for e in client.ls("/d")] == ["g", "sub"]
        client.put(source, "/d/sub/other")
        with pytest.raises(ExistsError):
            client.rename("/d/sub/other", "/d/g")
        client.rename("/d/sub/other", "/d/g", overwrite=True)
        with pytest.raises(NotEmptyError):
            client.rm("/d")
        client.rm("/d", recursive=True)
        assert client.ls("/") == []
    assert not (server.root / "alice" / "d").exists()


def test_attributes_round_trip_with_preserve(server, tmp_path):
    when = 1_600_000_000.125
    tool = tmp_path / "tool.sh"
    tool.write_bytes(b"#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    os.utime(tool, (when, when))
    with Client("127.0.0.1", server.port, "alice", PASSWORDS["alice"], timeout=10) as client:
        client.put(tool, "/bin/tool.sh", parents=True, preserve=True)
        entry = client.stat("/bin/tool.sh")
        assert entry.mtime == pytest.approx(when, abs=1e-6) and entry.mode is not None and entry.mode & 0o100
        back = tmp_path / "back.sh"
        client.get("/bin/tool.sh", back, preserve=True)
        assert back.stat().st_mtime == pytest.approx(when, abs=1e-6) and back.stat().st_mode & 0o100
        plain = tmp_path / "plain.sh"
        client.get("/bin/tool.sh", plain)  # without preserve: a new file, as before
        assert abs(plain.stat().st_mtime - time.time()) < 60 and not plain.stat().st_mode & 0o111
        os.utime(back, (0, 0))
        back.chmod(0o644)
        client.get("/bin/tool.sh", back, preserve=True)  # identical: nothing sent, attributes set
        assert back.stat().st_mtime == pytest.approx(when, abs=1e-6) and back.stat().st_mode & 0o100


def test_preserve_against_a_plain_v1_server_is_refused_before_sending(scripted, tmp_path):
    v1 = scripted(V1_GREETING, lambda message: None)
    (tmp_path / "f").write_bytes(b"x")
    with Client("127.0.0.1", v1.port, timeout=10) as client:
        with pytest.raises(UnsupportedError, match="'attributes'"):
            client.put(tmp_path / "f", "/f", preserve=True)
        with pytest.raises(UnsupportedError, match="'attributes'"):
            client.get("/f", tmp_path / "g", preserve=True)
        assert not client.closed
    v1.join()
    assert [m["op"] for m in v1.received] == ["quit"]
    assert not (tmp_path / "g").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
