"""The PROXY protocol (ftpserver/proxyproto.py): a trusted balancer names each client in a
header before the client's bytes, and the limits, the defender and the logs see that
client; from anyone else a header is nothing but bytes. The last test puts the real
HAProxy in front."""

from __future__ import annotations

import logging
import re
import socket
import struct
import threading
import time

import pytest
import trustme

from ftpproto import encode_frame
from ftpproto.io import FrameStream
from ftpserver.proxyproto import V2_SIGNATURE, ProxyHeaderError, parse_v1, parse_v2, read_header

from .conftest import wait_until

pytestmark = pytest.mark.timeout(60)


def v1(client: str, port: int = 51234) -> bytes:
    family = "TCP6" if ":" in client else "TCP4"
    server = "::1" if ":" in client else "127.0.0.1"
    return f"PROXY {family} {client} {server} {port} 9999\r\n".encode()


def v2(client: str | None, port: int = 51234, command: int = 1, tlvs: bytes = b"") -> bytes:
    if client is None:
        body, family = b"", 0x00
    elif ":" in client:
        body = socket.inet_pton(socket.AF_INET6, client) + socket.inet_pton(socket.AF_INET6, "::1")
        body, family = body + struct.pack("!HH", port, 9999), 0x21
    else:
        body = socket.inet_aton(client) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port, 9999)
        family = 0x11
    body += tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


def test_v1_lines_name_the_client():
    assert parse_v1(v1("192.0.2.7")) == ("192.0.2.7", 51234)
    assert parse_v1(v1("2001:db8::7", 1)) == ("2001:db8::7", 1)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 2001:db8::7 127.0.0.1 1 2\r\n",  # the family and the address disagree
        b"PROXY TCP4 192.0.2.7 127.0.0.1 65536 2\r\n",
        b"PROXY TCP4 192.0.2.7 127.0.0.1 0123 2\r\n",
        b"PROXY TCP4 192.0.2.7 127.0.0.1 -1 2\r\n",
        b"PROXY TCP4 192.0.2.7 127.0.0.1 1\r\n",
        b"PROXY TCP4  192.0.2.7 127.0.0.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.700 127.0.0.1 1 2\r\n",
        b"PROXY UDP4 192.0.2.7 127.0.0.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\n",
        b"PROXY TCP4 " + b"1" * 100 + b"\r\n",
        b"PROXY TCP4 192.0.2.7 ::1 1 2\r\n",  # the destination disagrees
        b"PROXY TCP6 2001:db8::7%\x1b[31mX ::1 1 2\r\n",  # a scope: control bytes for the logs
        b"PROXY UNKNOWN\r\n",  # no client named: nobody to judge
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    ],
)
def test_a_malformed_or_anonymous_v1_line_is_refused(line):
    with pytest.raises(ProxyHeaderError):
        parse_v1(line)


def test_v2_headers_name_the_client_and_local_names_none():
    assert parse_v2(v2("192.0.2.7")) == ("192.0.2.7", 51234)
    assert parse_v2(v2("2001:db8::7", 7)) == ("2001:db8::7", 7)
    assert parse_v2(v2("192.0.2.7", tlvs=b"\x04\x00\x01x")) == ("192.0.2.7", 51234)  # TLVs skipped
    assert parse_v2(v2("192.0.2.7", command=0)) is None  # LOCAL: a health check
    assert parse_v2(v2(None, command=0)) is None


@pytest.mark.parametrize(
    "header",
    [
        v2("192.0.2.7")[:-1],  # shorter than it says
        v2("192.0.2.7") + b"x",
        V2_SIGNATURE + struct.pack("!BBH", 0x31, 0x11, 12) + bytes(12),  # version 3
        V2_SIGNATURE + struct.pack("!BBH", 0x22, 0x11, 12) + bytes(12),  # command 2
        V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 8) + bytes(8),  # too short for IPv4
        b"\r\n\r\n\x00\r\nQUIX\n" + v2("192.0.2.7")[12:],
        v2(None),  # PROXY for an unspecified family: no client named
        V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x12, 12) + bytes(12),  # UDP over IPv4
        V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x31, 216) + bytes(216),  # a UNIX socket
        V2_SIGNATURE + struct.pack("!BBH", 0x21, 0xFF, 12) + bytes(12),
    ],
)
def test_a_malformed_v2_header_is_refused(header):
    with pytest.raises(ProxyHeaderError):
        parse_v2(header)


def test_the_header_is_read_exactly_and_the_bytes_after_it_stay(tmp_path):
    for header in (v1("192.0.2.7"), v2("192.0.2.7")):
        ours, theirs = socket.socketpair()
        with ours, theirs:
            theirs.sendall(header + b"the client's first bytes")
            assert read_header(ours, 5) == ("192.0.2.7", 51234)
            assert ours.recv(100) == b"the client's first bytes"
    ours, theirs = socket.socketpair()
    with ours, theirs:  # a v1 line in pieces: read whole once the rest comes
        theirs.sendall(b"PROXY TCP4 192.0")
        threading.Timer(0.2, theirs.sendall, [b".2.7 127.0.0.1 1 2"]).start()
        threading.Timer(0.4, theirs.sendall, [b"\r\nafter"]).start()
        assert read_header(ours, 5) == ("192.0.2.7", 1)
        assert ours.recv(100) == b"after"
    ours, theirs = socket.socketpair()
    with ours, theirs:  # ... or not in time
        theirs.sendall(b"PROXY TCP4 192.0.2.7")
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no complete PROXY protocol header within 0\.3 s"):
            read_header(ours, 0.3)
        assert time.monotonic() - started < 2
    for short in (b"PROXY UNKNOWN\r\n", b"hello\r\n"):  # refused at once, not after the time-out
        ours, theirs = socket.socketpair()
        with ours, theirs:
            theirs.sendall(short)
            started = time.monotonic()
            with pytest.raises(ProxyHeaderError):
                read_header(ours, 5)
            assert time.monotonic() - started < 1
    ours, theirs = socket.socketpair()
    with ours, theirs:  # a peer that closes half way is not waited for
        theirs.sendall(b"PROXY TCP4 192.0.2.7 127")
        theirs.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        with pytest.raises(ProxyHeaderError, match="closed"):
            read_header(ours, 5)
        assert time.monotonic() - started < 1
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"HELLO there, not a header\r\n")
        with pytest.raises(ProxyHeaderError):
            read_header(ours, 1)


# -- the server behind a balancer ---------------------------------------------------------------


def behind_proxy(make_config, serve, **sections):
    """A server that trusts 127.0.0.1 (this test) as its balancer."""
    return serve(make_config(listen={"host": "127.0.0.1", "port": 0, "proxies": ["127.0.0.1"]}, **sections))


def through(running, header: bytes, first: bytes = b"") -> FrameStream:
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
    sock.sendall(header + first)
    return FrameStream(sock)


def test_the_named_client_is_who_the_logs_and_the_session_see(make_config, serve, caplog):
    caplog.set_level(logging.INFO, logger="ftpserver")
    running = behind_proxy(make_config, serve)
    for header, client in ((v1("192.0.2.7"), "192.0.2.7:51234"), (v2("2001:db8::7"), "[2001:db8::7]:51234")):
        # The header, then a request at once: the server reads exactly the header.
        stream = through(running, header, encode_frame({"op": "ls", "path": "/"}))
        with stream.sock:
            assert stream.recv()["type"] == "hello"
            assert stream.recv()["ok"] is True
        assert f"connect {client}" in caplog.text
    assert not re.search(r"connect 127\.0\.0\.1:", caplog.text)


def test_limits_and_bans_judge_the_named_client_not_the_balancer(make_config, serve):
    running = behind_proxy(
        make_config,
        serve,
        limits={"max_connections_per_address": 1},
        defender={"threshold": 3, "safelist": []},
    )
    first = through(running, v1("192.0.2.7"))
    assert first.recv()["type"] == "hello"
    second = through(running, v1("192.0.2.7", 2))
    answer = second.recv()
    assert answer["error"] == "busy" and "too many connections" in answer["message"]
    other = through(running, v1("192.0.2.8"))
    assert other.recv()["type"] == "hello"  # another client through the same balancer
    for stream in (first, second, other):
        stream.sock.close()
    guesser = through(running, v2("192.0.2.66"))
    assert guesser.recv()["type"] == "hello"
    for _ in range(3):
        guesser.send({"op": "login", "user": "alice", "password": "wrong"})
        assert guesser.recv()["error"] == "auth_failed"
    guesser.sock.close()
    banned = through(running, v2("192.0.2.66"))
    answer = banned.recv()
    assert answer["error"] == "busy" and "banned" in answer["message"], answer
    welcome = through(running, v2("192.0.2.67"))
    assert welcome.recv()["type"] == "hello"  # the balancer itself is not banned
    assert running.server.defender.banned("127.0.0.1") is None
    banned.sock.close()
    welcome.sock.close()
    # Each connection was counted under the balancer, then under its client: none is left.
    wait_until(lambda: running.server.session_count == 0 and not running.server._per_address, 5)
    assert running.server.session_count == 0 and not running.server._per_address, running.server._per_address


def test_a_health_check_names_no_client_and_gets_the_greeting(make_config, serve):
    running = behind_proxy(make_config, serve)
    stream = through(running, v2("192.0.2.7", command=0))  # LOCAL, as HAProxy's v2 checks send
    with stream.sock:
        assert stream.recv()["type"] == "hello"


@pytest.mark.parametrize(
    "opening",
    [b"", b"HELLO, not a header\r\n", b"PROXY TCP4 nonsense here\r\n", V2_SIGNATURE + b"\x21", v2(None)],
)
def test_a_balancer_connection_without_a_sound_header_is_dropped_unanswered(
    make_config, serve, opening, caplog
):
    running = behind_proxy(make_config, serve, limits={"idle_timeout": 1})
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
    with sock:
        sock.sendall(opening)
        started = time.monotonic()
        assert sock.recv(100) == b""  # no greeting: closed
        assert time.monotonic() - started < 3
    assert "dropped 127.0.0.1" in caplog.text
    assert running.server.session_count == 0
    stream = through(running, v1("192.0.2.7"))  # and it goes on serving
    with stream.sock:
        assert stream.recv()["type"] == "hello"


def test_a_header_from_an_untrusted_address_is_only_bytes(make_config, serve, caplog):
    """Only the configured balancers may name a client: anyone else's header is not read as
    one (the greeting comes first), and is then garbage where a frame should be."""
    caplog.set_level(logging.INFO, logger="ftpserver")
    running = serve(make_config(listen={"host": "127.0.0.1", "port": 0, "proxies": ["127.0.0.2"]}))
    stream = through(running, v1("192.0.2.7"))
    with stream.sock:
        assert stream.recv()["type"] == "hello"
        assert stream.recv()["ok"] is False
    assert "connect 127.0.0.1:" in caplog.text and "192.0.2.7" not in caplog.text


def test_over_tls_the_header_comes_before_the_handshake(tmp_path, make_config, serve, caplog):
    caplog.set_level(logging.INFO, logger="ftpserver")
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    running = behind_proxy(make_config, serve, tls={"cert": "server.pem"})
    context = ssl_context(ca)
    raw = socket.create_connection(("127.0.0.1", running.port), timeout=5)
    raw.sendall(v2("192.0.2.7"))
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        stream = FrameStream(sock)
        assert stream.recv()["type"] == "hello"
        stream.send({"op": "ls", "path": "/"})
        assert stream.recv()["ok"] is True
    assert "connect 192.0.2.7:51234" in caplog.text


def ssl_context(ca: trustme.CA):
    import ssl

    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_the_proxies_setting_is_checked(make_config):
    from ftpserver.config import ConfigError

    with pytest.raises(ConfigError, match="proxies"):
        make_config(listen={"host": "127.0.0.1", "port": 0, "proxies": ["not-an-address"]})
    config = make_config(listen={"host": "127.0.0.1", "port": 0, "proxies": ["10.0.0.0/24", "2001:db8::1"]})
    assert [str(net) for net in config.proxies] == ["10.0.0.0/24", "2001:db8::1/128"]
    assert set(config.proxies) <= set(config.defender.safelist)  # their own connections: health checks


def test_behind_a_real_haproxy_the_server_sees_the_client_it_names(make_config, serve, balancer, caplog):
    """HAProxy (send-proxy-v2, with its health checks too) in front; the client connects from
    127.0.0.3, HAProxy from 127.0.0.1: the session is 127.0.0.3's."""
    caplog.set_level(logging.INFO, logger="ftpserver")
    running = behind_proxy(make_config, serve)
    front = balancer([running.port], send_proxy=True)
    assert wait_until(lambda: front.stats()["ftp/s0"]["status"] == "UP", 10)  # its checks are greeted
    sock = socket.socket()
    sock.bind(("127.0.0.3", 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", front.port))
    with sock:
        stream = FrameStream(sock)
        assert stream.recv()["type"] == "hello"
        stream.send({"op": "ls", "path": "/"})
        assert stream.recv()["ok"] is True
    assert re.search(r"connect 127\.0\.0\.3:\d+", caplog.text), caplog.text
    assert "dropped" not in caplog.text


def test_clients_refused_through_the_balancer_leave_room_for_the_others(make_config, serve):
    """A client over its per-address limit is refused after its header, no longer counted:
    a flood of them cannot fill max_connections for everyone else."""
    running = behind_proxy(
        make_config, serve, limits={"max_connections": 3, "max_connections_per_address": 1}
    )
    held = through(running, v1("192.0.2.66"))
    assert held.recv()["type"] == "hello"
    for attempt in range(6):
        refused = through(running, v1("192.0.2.66", 1000 + attempt))
        with refused.sock:
            assert "too many connections" in refused.recv()["message"]
    other = through(running, v1("192.0.2.9"))
    with other.sock, held.sock:
        assert other.recv()["type"] == "hello"
        assert running.server._per_address == {"192.0.2.66": 1, "192.0.2.9": 1}


def test_a_stop_drops_a_connection_still_waiting_for_its_header(make_config, serve):
    running = behind_proxy(make_config, serve, limits={"idle_timeout": 30, "shutdown_grace": 2})
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
    with sock:
        sock.sendall(b"PROXY TCP4 192.0")  # and nothing more
        assert wait_until(lambda: running.server._awaiting_header, 5)
        started = time.monotonic()
        running.server.stop()
        assert time.monotonic() - started < 2  # not held by the header's 10 s
        assert sock.recv(100) == b""  # closed, never greeted
    assert running.server.session_count == 0 and not running.server._per_address


def test_an_ipv4_mapped_proxies_entry_means_the_ipv4_address(make_config):
    config = make_config(
        listen={"host": "::", "port": 0, "proxies": ["::ffff:10.0.0.5", "::ffff:10.1.0.0/112"]}
    )
    assert [str(net) for net in config.proxies] == ["10.0.0.5/32", "10.1.0.0/16"]


def test_the_balancers_own_health_checks_never_get_it_banned(make_config, serve):
    """Checks that greet and hang up without a login score against the balancer's own
    address (where logins are required): the `proxies` join the safelist, or the fourth
    check would find the balancer banned, and with it everyone."""
    running = behind_proxy(
        make_config, serve, anonymous={"enabled": False}, defender={"threshold": 3, "safelist": []}
    )
    for _ in range(6):
        check = through(running, v2(None, command=0))  # LOCAL, as HAProxy's checks send
        with check.sock:
            assert check.recv()["type"] == "hello"
        assert wait_until(lambda: running.server.session_count == 0, 5)
    assert running.server.defender.banned("127.0.0.1") is None
