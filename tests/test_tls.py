"""TLS with a throwaway CA made in the test (trustme)."""

from __future__ import annotations

import hashlib
import socket
import ssl
import time

import pytest
import trustme

from ftpclient import Client, HandshakeError
from ftpproto.io import FrameStream
from ftpserver import handler

from .conftest import eager_put, run_cli, wait_until, write_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(tmp_path, ca):
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return tmp_path / "server.pem", tmp_path / "ca.pem"


@pytest.fixture
def tls_server(tmp_path, tls_files, make_config, serve):
    return serve(make_config(tls={"cert": "server.pem"}, limits={"idle_timeout": 1}))


def test_files_move_over_tls(tls_server, tls_files, tmp_path):
    data = b"secret payload " * 100_000
    (tmp_path / "f").write_bytes(data)
    with Client(
        "127.0.0.1", tls_server.port, user="alice", password="alice-pw", tls=True, cafile=tls_files[1]
    ) as c:
        assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert c.put(tmp_path / "f", "/f").sent == len(data)
        c.rm("/f")
        c.put(tmp_path / "f", "/f")
        c.get("/f", tmp_path / "back")
        assert c.get("/f", tmp_path / "back").skipped
    assert (tmp_path / "back").read_bytes() == data


def test_a_tls_session_takes_no_turn_and_a_plain_one_does(tls_server, tls_files, server):
    sessions: list = []
    for running in (tls_server, server):
        original = running.server.session_started
        running.server.session_started = lambda s, o=original: (sessions.append(s), o(s))  # type: ignore[method-assign]
    with Client("127.0.0.1", tls_server.port, tls=True, cafile=tls_files[1]) as client:
        client.ls("/")  # its stream waits in every call: a turn would only be handed to and fro
    with Client("127.0.0.1", server.port) as client:
        client.ls("/")
    if server.server.turn is None:
        pytest.skip("the storage is not on a local disk's filesystem: no turns")
    assert [session.turn for session in sessions] == [None, server.server.turn]


def test_an_untrusted_certificate_is_refused(tls_server, tmp_path):
    other_ca = trustme.CA()
    other_ca.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    with pytest.raises(HandshakeError, match="not trusted"):
        Client("127.0.0.1", tls_server.port, tls=True, cafile=tmp_path / "other.pem", timeout=5)


def test_a_plain_client_is_refused_cleanly_and_the_server_goes_on(tls_server, tls_files):
    with pytest.raises(HandshakeError, match="TLS"):
        Client("127.0.0.1", tls_server.port, timeout=5)
    with Client("127.0.0.1", tls_server.port, tls=True, cafile=tls_files[1]) as c:
        assert c.ls("/") == []


def test_a_tls_client_against_a_plain_server_is_refused_cleanly(server, tls_files):
    with pytest.raises(HandshakeError, match="does the server use TLS"):
        Client("127.0.0.1", server.port, tls=True, cafile=tls_files[1], timeout=5)
    with Client("127.0.0.1", server.port) as c:
        assert c.ls("/") == []


def test_plain_bytes_to_a_tls_server_get_no_greeting(tls_server):
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as sock:
        sock.sendall(b"\x00\x00\x00\x0e" + b'{"op": "quit"}')
        stream = FrameStream(sock)
        with pytest.raises(ConnectionError):
            stream.recv()


def test_cli_over_tls_with_flags_and_environment(tls_server, tls_files, tmp_path):
    (tmp_path / "f").write_text("over tls")
    flags = run_cli("--cafile", str(tls_files[1]), "put", "f", port=tls_server.port, cwd=tmp_path)
    assert flags.returncode == 0, flags.stderr
    env = {"SOCKFTP_TLS": "1", "SOCKFTP_CAFILE": str(tls_files[1])}
    assert run_cli("ls", port=tls_server.port, env=env).stdout == "f\n"
    plain = run_cli("ls", port=tls_server.port)
    assert plain.returncode == 1 and "connect with TLS" in plain.stderr and "Traceback" not in plain.stderr


def test_a_bad_certificate_path_is_a_config_error(tmp_path):
    from ftpserver.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"tls\.cert: cannot load"):
        load_config(write_config(tmp_path, tls={"cert": "missing.pem"}))


def test_a_silent_peer_is_dropped_at_the_handshake_timeout_not_the_idle_one(
    tls_files, make_config, serve, monkeypatch
):
    """The handshake has a time-out of its own, shorter than a session's idle one: the
    stream must give it to the socket before the handshake waits (time-outs are lazy)."""
    monkeypatch.setattr(handler, "HANDSHAKE_TIMEOUT", 0.3)
    running = serve(make_config(tls={"cert": "server.pem"}, limits={"idle_timeout": 30}))
    with socket.create_connection(("127.0.0.1", running.port), timeout=5):
        assert wait_until(lambda: running.server.session_count == 1, 5)
        started = time.monotonic()
        assert wait_until(lambda: running.server.session_count == 0, 10)
        assert time.monotonic() - started < 5


def test_a_tls_peer_that_stops_inside_a_request_still_gets_the_groups_answers(tls_files, make_config, serve):
    """A TLS stream reads without the direct path's waits: it too answers the group once
    the rest of a begun request is late (idle_timeout is 30 s, the client waits 5)."""
    running = serve(make_config(tls={"cert": "server.pem"}, limits={"idle_timeout": 30}))
    context = ssl.create_default_context(cafile=str(tls_files[1]))
    sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", running.port), timeout=5), server_hostname="127.0.0.1"
    )
    with sock:
        stream = FrameStream(sock)
        assert "eager" in stream.recv()["features"]
        first, second = b"a first file" * 100, b"a second file" * 100
        following = eager_put("second", second)
        sock.sendall(eager_put("first", first) + following[:-50])
        assert stream.recv() == {
            "ok": True,
            "size": len(first),
            "md5": hashlib.md5(first).hexdigest(),
            "offset": 0,
        }
        sock.sendall(following[-50:])
        assert stream.recv()["md5"] == hashlib.md5(second).hexdigest()
    assert (running.root / "second").read_bytes() == second
