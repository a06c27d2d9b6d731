"""The server driven by hand-built frames over a real loopback socket.

Not through our own client, so a bug shared by both sides cannot hide. One
test per op and per error code of the protocol (docs/protocol.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import struct
import time

import pytest

from ftpclient import Client
from ftpproto import BusyError, encode_frame
from ftpproto.units import host_of
from ftpserver.server import address_family, peer_address

from .conftest import run_cli_subprocess, wait_until

pytestmark = pytest.mark.timeout(30)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def put(stream, path: str, data: bytes, **fields) -> tuple[dict, dict | None]:
    """A whole put exchange: (ack, result); result is None if the ack was an error."""
    ack = stream.request("put", path=path, size=len(data), md5=md5(data), **fields)
    if not ack["ok"]:
        return ack, None
    stream.sock.sendall(data[ack["offset"] :])
    return ack, stream.recv()


def get(stream, path: str, offset: int = 0) -> tuple[dict, bytes]:
    header = stream.request("get", path=path, offset=offset)
    if not header["ok"]:
        return header, b""
    stream.send({"op": "ack"})
    received = bytearray()
    stream.recv_data(header["size"] - offset, received.extend)
    return header, bytes(received)


def names_in(directory) -> list[str]:
    """What a directory holds, temp files included, less the server's metadata folder."""
    return sorted(name for name in os.listdir(directory) if name != ".sockftp")


def assert_error(answer: dict, code: str) -> None:
    assert answer["ok"] is False, answer
    assert answer["error"] == code, answer
    assert isinstance(answer["message"], str) and answer["message"]


def assert_closed(stream) -> None:
    stream.sock.settimeout(5)
    assert stream.sock.recv(1) == b""


# -- session -------------------------------------------------------------------------


def test_greeting_announces_protocol_and_auth(raw, make_config, serve):
    greeting = raw().greeting
    assert greeting["type"] == "hello" and greeting["proto"] == 1
    assert greeting["server"].startswith("sockftp/") and greeting["auth"] == "optional"
    closed = serve(make_config(anonymous={"enabled": False}))
    assert raw(closed).greeting["auth"] == "required"


def test_login_and_permissions(raw):
    stream = raw()
    assert stream.request("login", user="alice", password="alice-pw") == {
        "ok": True,
        "user": "alice",
        "permissions": "rw",
    }
    assert stream.request("login", user="bob", password="bob-pw")["permissions"] == "r"


def test_auth_failed_reads_the_same_for_unknown_user_and_wrong_password(raw):
    stream = raw()
    wrong_password = stream.request("login", user="alice", password="nope")
    unknown_user = stream.request("login", user="mallory", password="nope")
    assert_error(wrong_password, "auth_failed")
    assert wrong_password == unknown_user


def test_too_many_failed_logins_close_the_connection(raw):
    stream = raw()
    for _ in range(3):
        assert_error(stream.request("login", user="alice", password="x"), "auth_failed")
    assert_closed(stream)


def test_failed_login_is_delayed(make_config, serve, raw):
    slow = serve(make_config(limits={"login_delay": 0.3}))
    stream = raw(slow)
    started = time.monotonic()
    assert_error(stream.request("login", user="alice", password="x"), "auth_failed")
    assert time.monotonic() - started >= 0.3


def test_auth_required_before_login_when_anonymous_is_off(make_config, serve, raw):
    stream = raw(serve(make_config(anonymous={"enabled": False})))
    for op, fields in [("ls", {}), ("stat", {"path": "x"}), ("get", {"path": "x"}), ("mkdir", {"path": "d"})]:
        assert_error(stream.request(op, **fields), "auth_required")
    assert stream.request("login", user="alice", password="alice-pw")["ok"]
    assert stream.request("ls")["ok"]


def test_password_is_never_logged(raw, caplog):
    stream = raw()
    stream.request("login", user="alice", password="hunter2-secret")
    stream.request("login", user="alice", password="alice-pw")
    assert "login failed" in caplog.text and "hunter2-secret" not in caplog.text
    assert "alice-pw" not in caplog.text


def test_quit_answers_then_closes(raw):
    stream = raw()
    assert stream.request("quit") == {"ok": True}
    assert_closed(stream)


def test_requests_may_be_pipelined_and_are_answered_in_order(raw, server):
    (server.root / "f").write_bytes(b"abc")
    stream = raw()
    stream.sock.sendall(
        encode_frame({"op": "stat", "path": "f"})
        + encode_frame({"op": "stat", "path": "missing"})
        + encode_frame({"op": "mkdir", "path": "d"})
        + encode_frame({"op": "ls"})
    )
    assert stream.recv()["size"] == 3
    assert_error(stream.recv(), "not_found")
    assert stream.recv() == {"ok": True}
    assert [e["name"] for e in stream.recv()["entries"]] == ["d", "f"]


def test_a_frame_sent_one_byte_at_a_time(raw):
    stream = raw()
    for byte in encode_frame({"op": "ls"}):
        stream.sock.sendall(bytes([byte]))
    assert stream.recv()["ok"]


# -- ls, stat ------------------------------------------------------------------------


def test_ls_lists_files_and_dirs_sorted_without_temp_files(raw, server):
    (server.root / "b.txt").write_bytes(b"12345")
    (server.root / "a").mkdir()
    (server.root / ".sockftp.part.0123").write_bytes(b"partial")
    answer = raw().request("ls", path="/")
    assert answer["path"] == "/" and answer["more"] is False
    assert [(e["name"], e["type"], e["size"]) for e in answer["entries"]] == [
        ("a", "dir", 0),
        ("b.txt", "file", 5),
    ]
    assert all(isinstance(e["mtime"], float) for e in answer["entries"])


def test_ls_of_a_file_lists_that_file(raw, server):
    (server.root / "f").write_bytes(b"xy")
    answer = raw().request("ls", path="f")
    assert [(e["name"], e["size"]) for e in answer["entries"]] == [("f", 2)]


def test_ls_pages_of_at_most_1000_entries(raw, server):
    big = server.root / "many"
    big.mkdir()
    for i in range(2345):
        (big / f"{i:05}").touch()
    stream = raw()
    stream.send({"op": "ls", "path": "many"})
    pages = [stream.recv()]
    while pages[-1]["more"]:
        pages.append(stream.recv())
    assert [len(p["entries"]) for p in pages] == [1000, 1000, 345]
    names = [e["name"] for p in pages for e in p["entries"]]
    assert names == [f"{i:05}" for i in range(2345)]
    assert stream.request("ls", path="/")["ok"]  # still in step


def test_ls_of_an_empty_directory_is_one_frame(raw, server):
    (server.root / "empty").mkdir()
    assert raw().request("ls", path="empty") == {"ok": True, "path": "/empty", "entries": [], "more": False}


def test_stat_of_file_and_dir(raw, server):
    (server.root / "d").mkdir()
    (server.root / "d" / "f").write_bytes(b"hello")
    stream = raw()
    answer = stream.request("stat", path="d/f")
    assert answer["name"] == "f" and answer["type"] == "file" and answer["size"] == 5
    assert answer["md5"] == md5(b"hello")
    assert answer["mtime"] == pytest.approx(os.stat(server.root / "d" / "f").st_mtime)
    directory = stream.request("stat", path="d")
    assert directory["type"] == "dir" and "md5" not in directory


# -- get -----------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 1, 5000, 9999, 10000])
def test_get_from_offset_sends_the_rest_and_the_whole_files_md5(raw, server, offset):
    data = os.urandom(10000)
    (server.root / "f.bin").write_bytes(data)
    header, body = get(raw(), "f.bin", offset)
    assert header == {"ok": True, "size": 10000, "md5": md5(data), "offset": offset}
    assert body == data[offset:]


def test_get_offset_past_the_end_is_bad_request(raw, server):
    (server.root / "f").write_bytes(b"abc")
    stream = raw()
    assert_error(stream.request("get", path="f", offset=4), "bad_request")
    assert stream.request("ls")["ok"]


def test_get_cancel_sends_nothing_and_the_connection_goes_on(raw, server):
    (server.root / "f").write_bytes(b"x" * 100_000)
    stream = raw()
    assert stream.request("get", path="f")["ok"]
    stream.send({"op": "cancel"})
    assert stream.request("stat", path="f")["size"] == 100_000


def test_anything_but_ack_or_cancel_after_a_get_header_closes(raw, server):
    (server.root / "f").write_bytes(b"abc")
    stream = raw()
    assert stream.request("get", path="f")["ok"]
    assert_error(stream.request("ls"), "bad_request")
    assert_closed(stream)


def test_get_of_a_directory_or_missing_file(raw, server):
    (server.root / "d").mkdir()
    stream = raw()
    assert_error(stream.request("get", path="d"), "is_a_directory")
    assert_error(stream.request("get", path="nope"), "not_found")


def test_get_of_a_fifo_is_refused_without_hanging(raw, server):
    os.mkfifo(server.root / "pipe")
    assert_error(raw().request("get", path="pipe"), "forbidden")


# -- put -----------------------------------------------------------------------------


def test_put_stores_the_file_atomically_and_answers_size_and_md5(raw, server):
    data = os.urandom(300_000)
    ack, result = put(raw(), "up.bin", data)
    assert ack == {"ok": True, "offset": 0}
    assert result == {"ok": True, "size": len(data), "md5": md5(data)}
    assert (server.root / "up.bin").read_bytes() == data
    assert names_in(server.root) == ["up.bin"]  # no temp file left behind


def test_put_of_an_empty_file(raw, server):
    _ack, result = put(raw(), "empty", b"")
    assert result["size"] == 0 and (server.root / "empty").read_bytes() == b""


def test_put_of_the_file_already_there_sends_nothing(raw, server):
    (server.root / "same").write_bytes(b"same bytes")
    stream = raw()
    ack, result = put(stream, "same", b"same bytes", overwrite=False)
    assert ack["offset"] == 10 and result["ok"]


def test_put_with_overwrite_false_on_a_different_file_is_exists(raw, server):
    (server.root / "f").write_bytes(b"old")
    ack, _ = put(raw(), "f", b"new", overwrite=False)
    assert_error(ack, "exists")
    assert (server.root / "f").read_bytes() == b"old"


def test_put_replaces_a_file_by_default(raw, server):
    (server.root / "f").write_bytes(b"old")
    put(raw(), "f", b"newer")
    assert (server.root / "f").read_bytes() == b"newer"


def test_put_with_wrong_bytes_is_checksum_mismatch_and_keeps_the_old_file(raw, server):
    (server.root / "f").write_bytes(b"old content")
    stream = raw()
    ack = stream.request("put", path="f", size=5, md5=md5(b"right"))
    stream.sock.sendall(b"wrong")
    assert_error(stream.recv(), "checksum_mismatch")
    assert (server.root / "f").read_bytes() == b"old content"
    assert names_in(server.root) == ["f"]
    assert ack["ok"] and stream.request("ls")["ok"]


def test_put_parents(raw, server):
    stream = raw()
    ack, _ = put(stream, "a/b/c.txt", b"x")
    assert_error(ack, "not_found")
    ack, result = put(stream, "a/b/c.txt", b"x", parents=True)
    assert result["ok"] and (server.root / "a" / "b" / "c.txt").read_bytes() == b"x"


def test_put_through_a_file_is_not_a_directory(raw, server):
    (server.root / "file").write_bytes(b"x")
    stream = raw()
    assert_error(put(stream, "file/child", b"y")[0], "not_a_directory")
    assert_error(put(stream, "file/child", b"y", parents=True)[0], "not_a_directory")


def test_put_onto_a_directory_is_is_a_directory(raw, server):
    (server.root / "d").mkdir()
    stream = raw()
    assert_error(put(stream, "d", b"x")[0], "is_a_directory")
    assert_error(put(stream, "/", b"x")[0], "is_a_directory")


def test_interrupted_put_is_invisible_and_resumes(raw, server):
    data = os.urandom(1_000_000)
    (server.root / "f").write_bytes(b"previous")
    first = raw()
    assert first.request("put", path="f", size=len(data), md5=md5(data))["offset"] == 0
    first.sock.sendall(data[:400_000])
    first.close()
    assert wait_until(lambda: server.server.storage.uploads_running == 0)
    second = raw()
    # The partial upload is neither listed nor served, and the old file is intact.
    assert [e["name"] for e in second.request("ls")["entries"]] == ["f"]
    assert get(second, "f")[1] == b"previous"
    ack = second.request("put", path="f", size=len(data), md5=md5(data))
    assert ack["offset"] == 400_000
    second.sock.sendall(data[ack["offset"] :])
    assert second.recv()["ok"]
    assert (server.root / "f").read_bytes() == data
    assert names_in(server.root) == ["f"]


def test_a_retry_waits_for_the_broken_attempt_to_let_go_of_its_partial(raw, server):
    data = os.urandom(100_000)
    first = raw()
    first.request("put", path="f", size=len(data), md5=md5(data))
    first.sock.sendall(data[:30_000])
    second = raw()
    second.send({"op": "put", "path": "f", "size": len(data), "md5": md5(data)})
    time.sleep(0.3)
    first.close()  # the broken attempt ends while the retry waits
    assert second.recv()["offset"] == 30_000
    second.sock.sendall(data[30_000:])
    assert second.recv()["ok"] and (server.root / "f").read_bytes() == data


def test_two_simultaneous_uploads_of_one_file_do_not_share_a_partial(raw, server):
    server.server.storage.claim_wait = 0.2
    data = os.urandom(100_000)
    first, second = raw(), raw()
    assert first.request("put", path="f", size=len(data), md5=md5(data))["offset"] == 0
    first.sock.sendall(data[:10_000])
    assert second.request("put", path="f", size=len(data), md5=md5(data))["offset"] == 0
    second.sock.sendall(data)
    assert second.recv()["ok"]
    first.sock.sendall(data[10_000:])
    assert first.recv()["ok"]
    assert (server.root / "f").read_bytes() == data
    assert names_in(server.root) == ["f"]


def test_a_different_upload_to_the_same_name_does_not_resume_the_partial(raw, server):
    data = os.urandom(100_000)
    first = raw()
    first.request("put", path="f", size=len(data), md5=md5(data))
    first.sock.sendall(data[:50_000])
    first.close()
    assert wait_until(lambda: server.server.storage.uploads_running == 0)
    other = os.urandom(100_000)
    ack, result = put(raw(), "f", other)
    assert ack["offset"] == 0 and result["ok"]
    assert (server.root / "f").read_bytes() == other


def test_put_that_sends_more_than_announced_keeps_the_stream_in_step(raw, server):
    stream = raw()
    ack = stream.request("put", path="f", size=3, md5=md5(b"abc"))
    stream.sock.sendall(b"abc" + encode_frame({"op": "stat", "path": "f"}))
    assert stream.recv()["ok"] and ack["ok"]
    assert stream.recv()["md5"] == md5(b"abc")


def test_read_only_user_cannot_write(raw, server):
    (server.root / "bob").mkdir()
    (server.root / "bob" / "f").write_bytes(b"x")
    stream = raw(user="bob")
    assert_error(put(stream, "new", b"x")[0], "forbidden")
    assert_error(stream.request("mkdir", path="d"), "forbidden")
    assert_error(stream.request("rm", path="f"), "forbidden")
    assert get(stream, "f")[1] == b"x"


def test_users_see_only_their_home(raw, server):
    stream = raw(user="alice")
    put(stream, "mine", b"alice's")
    assert (server.root / "alice" / "mine").read_bytes() == b"alice's"
    assert [e["name"] for e in stream.request("ls")["entries"]] == ["mine"]


def test_quota_is_checked_before_any_data(raw, server):
    stream = raw(user="carol")
    assert put(stream, "a", b"x" * 600)[1]["ok"]
    assert_error(put(stream, "b", b"x" * 500)[0], "quota_exceeded")
    assert put(stream, "a", b"y" * 900)[1]["ok"]  # replacing counts the difference only
    assert not (server.root / "carol" / "b").exists()


def test_partial_uploads_count_against_the_quota(raw, server):
    stream = raw(user="carol")
    stream.request("put", path="a", size=900, md5=md5(b"z" * 900))
    stream.sock.sendall(b"z" * 800)
    stream.close()
    assert wait_until(lambda: server.server.storage.uploads_running == 0)
    assert_error(put(raw(user="carol"), "b", b"x" * 300)[0], "quota_exceeded")


def test_file_size_limit(make_config, serve, raw):
    limited = serve(make_config(limits={"max_file_size": "1KB"}))
    stream = raw(limited)
    assert_error(put(stream, "big", b"x" * 1001)[0], "too_large")
    assert put(stream, "ok", b"x" * 1000)[1]["ok"]


# -- mkdir, rm -------------------------------------------------------------------------


def test_mkdir(raw, server):
    stream = raw()
    assert stream.request("mkdir", path="d") == {"ok": True}
    assert (server.root / "d").is_dir()
    assert_error(stream.request("mkdir", path="d"), "exists")
    assert stream.request("mkdir", path="d", parents=True)["ok"]
    assert_error(stream.request("mkdir", path="x/y"), "not_found")
    assert stream.request("mkdir", path="x/y", parents=True)["ok"]
    (server.root / "f").touch()
    assert_error(stream.request("mkdir", path="f"), "exists")
    assert_error(stream.request("mkdir", path="f/sub"), "not_a_directory")


def test_rm(raw, server):
    (server.root / "f").write_bytes(b"x")
    (server.root / "full").mkdir()
    (server.root / "full" / "g").touch()
    (server.root / "empty").mkdir()
    stream = raw()
    assert stream.request("rm", path="f") == {"ok": True}
    assert not (server.root / "f").exists()
    assert_error(stream.request("rm", path="f"), "not_found")
    assert_error(stream.request("rm", path="full"), "not_empty")
    assert stream.request("rm", path="empty")["ok"]
    assert_error(stream.request("rm", path="/"), "forbidden")
    assert names_in(server.root) == ["full"]


def test_rm_of_a_symlink_removes_the_link_not_its_target(raw, server):
    (server.root / "target").write_bytes(b"keep")
    (server.root / "link").symlink_to(server.root / "target")
    assert raw().request("rm", path="link")["ok"]
    assert (server.root / "target").read_bytes() == b"keep"


# -- paths -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/../x", ".."])
def test_traversal_is_forbidden_for_every_op(raw, path):
    stream = raw()
    for op, fields in [("ls", {}), ("stat", {}), ("get", {}), ("mkdir", {}), ("rm", {})]:
        assert_error(stream.request(op, path=path, **fields), "forbidden")
    assert_error(put(stream, path, b"x")[0], "forbidden")


def test_absolute_path_names_a_file_inside_the_home(raw, server):
    stream = raw()
    assert_error(stream.request("stat", path="/etc/passwd"), "not_found")
    put(stream, "/etc/passwd", b"mine", parents=True)
    assert (server.root / "etc" / "passwd").read_bytes() == b"mine"


def test_symlinks_out_of_the_home_are_forbidden_and_unlisted(raw, server, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (server.root / "escape").symlink_to(outside)
    (server.root / "escape_file").symlink_to(outside / "secret")
    stream = raw()
    assert_error(stream.request("get", path="escape/secret"), "forbidden")
    assert_error(stream.request("get", path="escape_file"), "forbidden")
    assert_error(put(stream, "escape/new", b"x")[0], "forbidden")
    assert stream.request("ls")["entries"] == []
    assert not (outside / "new").exists()


def test_symlink_inside_the_home_is_followed(raw, server):
    (server.root / "real").write_bytes(b"data")
    (server.root / "alias").symlink_to("real")
    assert get(raw(), "alias")[1] == b"data"


@pytest.mark.parametrize("path", ["a\x00b", "a\\b", "x" * 256, "line\nbreak"])
def test_malformed_paths_are_bad_request(raw, path):
    assert_error(raw().request("stat", path=path), "bad_request")


def test_reserved_names_are_forbidden(raw):
    stream = raw()
    assert_error(stream.request("stat", path=".sockftp.part.x"), "forbidden")
    assert_error(put(stream, ".sockftp", b"x")[0], "forbidden")


def test_a_255_byte_name_is_storable(raw, server):
    name = "é" * 127 + "x"  # 255 bytes of UTF-8
    _ack, result = put(raw(), name, b"long name")
    assert result["ok"] and (server.root / name).read_bytes() == b"long name"


def test_names_are_stored_as_given_not_normalised(raw, server):
    stream = raw()
    put(stream, "\u00e9", b"composed")
    put(stream, "e\u0301", b"decomposed")
    assert get(stream, "\u00e9")[1] == b"composed"
    assert get(stream, "e\u0301")[1] == b"decomposed"


# -- protocol errors ---------------------------------------------------------------------


def test_field_type_errors_keep_the_connection(raw):
    stream = raw()
    assert_error(stream.request("get", path="f", offset=1.5), "bad_request")
    assert_error(stream.request("put", path="f", size=True, md5="0" * 32), "bad_request")
    assert_error(stream.request("put", path="f", size=1, md5="0" * 32, overwrite="no"), "bad_request")
    assert_error(stream.request("stat"), "bad_request")
    assert_error(stream.request("chmod", path="f"), "unknown_op")
    assert_error(stream.request("ack"), "bad_request")
    assert stream.request("ls", future_field=[1])["ok"]


@pytest.mark.parametrize(
    "frame, code",
    [
        (struct.pack("!I", 0), "bad_request"),
        (struct.pack("!I", 0xFFFFFFFF), "frame_too_large"),
        (struct.pack("!I", 1_048_577), "frame_too_large"),
        (struct.pack("!I", 2) + b"\xff\xfe", "bad_request"),
        (struct.pack("!I", 5) + b"hello", "bad_request"),
        (struct.pack("!I", 6) + b"[1, 2]", "bad_request"),
        (struct.pack("!I", 22) + b'{"op": "ls", "x": NaN}', "bad_request"),
    ],
)
def test_broken_frames_get_an_error_and_close_and_others_are_untouched(raw, frame, code):
    bystander = raw()
    stream = raw()
    stream.sock.sendall(frame)
    assert_error(stream.recv(), code)
    assert_closed(stream)
    assert bystander.request("ls")["ok"]
    assert raw().request("ls")["ok"]


def test_random_bytes_do_not_hurt_the_server(raw):
    stream = raw()
    stream.sock.sendall(os.urandom(4096))
    stream.sock.settimeout(5)
    try:
        while stream.sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    assert raw().request("ls")["ok"]


def test_internal_errors_carry_no_path_or_traceback(raw, server, monkeypatch):
    def broken(*args):
        raise RuntimeError(f"boom in {server.root}/secret")

    monkeypatch.setattr(server.server.storage, "stat", broken)
    stream = raw()
    answer = stream.request("stat", path="f")
    assert_error(answer, "internal")
    assert str(server.root) not in answer["message"] and "Traceback" not in answer["message"]
    assert stream.request("ls")["ok"]  # outside a transfer, the connection stays usable


# -- limits --------------------------------------------------------------------------------


def test_idle_connection_gets_timeout_then_closes(make_config, serve, raw):
    stream = raw(serve(make_config(limits={"idle_timeout": 0.3})))
    stream.sock.settimeout(5)
    assert_error(stream.recv(), "timeout")
    assert_closed(stream)


def test_stalled_upload_times_out_and_keeps_the_partial(make_config, serve, raw):
    running = serve(make_config(limits={"stall_timeout": 0.3}))
    stream = raw(running)
    data = b"s" * 1000
    stream.request("put", path="f", size=1000, md5=md5(data))
    stream.sock.sendall(data[:400])
    stream.sock.settimeout(5)
    assert_error(stream.recv(), "timeout")
    ack, result = put(raw(running), "f", data)
    assert ack["offset"] == 400 and result["ok"]


@pytest.mark.parametrize(
    "limits", [{"max_connections": 2}, {"max_connections_per_address": 2, "max_connections": 50}]
)
def test_over_the_connection_limit_is_busy(make_config, serve, raw, limits):
    running = serve(make_config(limits=limits))
    first, second = raw(running), raw(running)
    extra = running.connect()
    with extra:
        stream = type(first)(extra)
        assert_error(stream.recv(), "busy")
        assert_closed(stream)
    assert first.request("ls")["ok"] and second.request("ls")["ok"]
    first.request("quit")
    first.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the slot frees once the session ends
        with running.connect() as sock:
            reply = type(first)(sock).recv()
        if reply.get("type") == "hello":
            break
        time.sleep(0.05)
    assert reply.get("type") == "hello"


def test_server_keeps_serving_while_a_client_vanishes_mid_get(raw, server):
    (server.root / "big").write_bytes(os.urandom(20_000_000))
    stream = raw()
    assert stream.request("get", path="big")["ok"]
    stream.send({"op": "ack"})
    stream.sock.recv(1000)
    stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.close()  # RST, mid-transfer
    assert raw().request("stat", path="big")["size"] == 20_000_000


def test_waiting_too_long_for_ack_is_timeout(make_config, serve, raw):
    running = serve(make_config(limits={"idle_timeout": 0.3}))
    (running.root / "f").write_bytes(b"abc")
    stream = raw(running)
    stream.send({"op": "get", "path": "f"})
    assert stream.recv()["ok"]
    assert_error(stream.recv(), "timeout")
    assert_closed(stream)


def test_stat_through_a_symlink_names_the_link(raw, server):
    (server.root / "target.txt").write_bytes(b"x")
    (server.root / "alias.txt").symlink_to("target.txt")
    stream = raw()
    assert stream.request("stat", path="alias.txt")["name"] == "alias.txt"
    assert [e["name"] for e in stream.request("ls", path="alias.txt")["entries"]] == ["alias.txt"]


def test_a_refused_put_creates_no_directories(raw, server):
    stream = raw(user="carol")
    assert_error(put(stream, "new/deep/f", b"x" * 2000, parents=True)[0], "quota_exceeded")
    assert names_in(server.root / "carol") == []


def test_rm_of_a_directory_with_an_upload_running_into_it_is_refused(raw, server):
    (server.root / "d").mkdir()
    stream = raw()
    stream.request("put", path="d/f", size=10, md5=md5(b"0123456789"))
    stream.sock.sendall(b"01234")
    assert_error(raw().request("rm", path="d"), "not_empty")
    stream.sock.sendall(b"56789")
    assert stream.recv()["ok"] and (server.root / "d" / "f").read_bytes() == b"0123456789"


def test_names_that_are_not_utf8_are_skipped_by_ls(raw, server):
    os.close(os.open(os.path.join(os.fsencode(server.root), b"bad\xff"), os.O_CREAT | os.O_WRONLY))
    (server.root / "good").write_bytes(b"x")
    stream = raw()
    assert [e["name"] for e in stream.request("ls")["entries"]] == ["good"]
    assert stream.request("ls")["ok"]


def test_an_instant_upload_answers_size_then_its_result_and_leaves_no_temp_file(raw, server):
    data = os.urandom(5000)
    (server.root / "a").write_bytes(data)
    (server.root / "b").write_bytes(b"previous b")
    stream = raw()
    assert stream.request("stat", path="a")["md5"] == md5(data)  # now remembered
    ack, result = put(stream, "b", data)
    assert ack == {"ok": True, "offset": len(data)}
    assert result == {"ok": True, "size": len(data), "md5": md5(data)}
    assert (server.root / "b").read_bytes() == data and (server.root / "a").read_bytes() == data
    assert names_in(server.root) == ["a", "b"]


def test_two_no_overwrite_puts_of_one_new_name_cannot_both_win(raw, server):
    first, second = raw(), raw()
    assert first.request("put", path="f", size=5, md5=md5(b"first"), overwrite=False)["ok"]
    assert second.request("put", path="f", size=6, md5=md5(b"second"), overwrite=False)["ok"]
    first.sock.sendall(b"first")
    assert first.recv()["ok"]
    second.sock.sendall(b"second")
    assert_error(second.recv(), "exists")  # checked again at the rename, atomically
    assert (server.root / "f").read_bytes() == b"first"


def test_uploads_running_at_once_cannot_pass_the_quota_together(raw, server):
    streams = [raw(user="carol") for _ in range(3)]
    acks = [s.request("put", path=f"f{i}", size=900, md5=md5(b"q" * 900)) for i, s in enumerate(streams)]
    assert [a["ok"] for a in acks] == [True, False, False]
    assert all(a["error"] == "quota_exceeded" for a in acks[1:])
    streams[0].sock.sendall(b"q" * 900)
    assert streams[0].recv()["ok"]


def test_the_checksum_recorded_is_of_the_file_renamed_not_of_what_replaced_it(raw, server, monkeypatch):
    import ftpserver.storage.local as storage_module

    real_fsync_dir = storage_module._fsync_dir
    intruder = server.root / "intruder"
    intruder.write_bytes(b"another upload's bytes")

    def another_upload_lands_first(dir_fd):  # a second rename onto the name, just after ours
        if intruder.exists():
            os.replace(intruder, server.root / "f")
        real_fsync_dir(dir_fd)

    monkeypatch.setattr(storage_module, "_fsync_dir", another_upload_lands_first)
    stream = raw()
    put(stream, "f", b"our bytes")
    assert stream.request("stat", path="f")["md5"] == md5(b"another upload's bytes")


def test_ls_of_one_file_does_not_hash_it(raw, server):
    (server.root / "f").write_bytes(b"abc")
    stream = raw()
    assert stream.request("ls", path="f")["entries"][0]["size"] == 3
    before = os.stat(server.root / "f")
    with open(server.root / "f", "r+b") as file:
        file.write(b"xyz")
    os.utime(server.root / "f", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert stream.request("stat", path="f")["md5"] == md5(b"xyz")  # nothing remembered by ls


def test_an_error_inside_a_gets_data_phase_sends_no_frame_into_the_data(raw, server, monkeypatch):
    (server.root / "f").write_bytes(b"D" * 100_000)

    def breaks_half_way(self, file, offset, count, *args):
        self.sock.sendall(b"D" * 10)
        raise RuntimeError("disk trouble")

    monkeypatch.setattr("ftpproto.io.stream.FrameStream.send_file", breaks_half_way)
    stream = raw()
    assert stream.request("get", path="f")["ok"]
    stream.send({"op": "ack"})
    received = b""
    stream.sock.settimeout(5)
    while chunk := stream.sock.recv(65536):
        received += chunk
    assert received == b"D" * 10  # then the connection closes: no error frame in the data


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")


def test_the_address_family_follows_the_listen_host():
    assert address_family("::") == address_family("::1") == address_family("fe80::1%lo") == socket.AF_INET6
    for host in ("127.0.0.1", "0.0.0.0", "localhost", "", "no-such-host.invalid"):
        assert address_family(host) == socket.AF_INET, host  # a bad name: the bind says what is wrong
    assert peer_address(("::ffff:192.0.2.7", 5, 0, 0)) == ("192.0.2.7", 5)
    assert peer_address(("2001:db8::7", 5, 0, 0)) == ("2001:db8::7", 5)
    assert peer_address(("192.0.2.7", 5)) == ("192.0.2.7", 5)
    assert host_of("[::1]") == "::1" and host_of("::1") == "::1" and host_of("example.org") == "example.org"


@needs_ipv6
def test_a_server_on_ipv6_loopback_serves_the_cli_and_logs_the_peer_in_brackets(
    make_config, serve, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="ftpserver")
    running = serve(make_config(listen={"host": "::1"}))
    assert running.server.address[0] == "::1"
    (tmp_path / "f.txt").write_bytes(b"over IPv6")
    put = run_cli_subprocess(
        "--host", "[::1]", "put", str(tmp_path / "f.txt"), port=running.port
    )  # as in URLs
    assert put.returncode == 0, put.stderr
    assert (running.root / "f.txt").read_bytes() == b"over IPv6"
    assert re.search(r"connect \[::1\]:\d+", caplog.text)
    with pytest.raises(OSError):  # IPv6 only: nothing listens on 127.0.0.1 at that port
        socket.create_connection(("127.0.0.1", running.port), timeout=5).close()


@needs_ipv6
def test_a_server_on_every_interface_takes_ipv4_clients_as_ipv4_addresses(make_config, serve, caplog):
    """`::` is dual-stack: an IPv4 client is 127.0.0.1, not ::ffff:127.0.0.1, to the
    per-address limit, the defender and the logs."""
    caplog.set_level(logging.INFO, logger="ftpserver")
    running = serve(make_config(listen={"host": "::"}, limits={"max_connections_per_address": 1}))
    with (
        Client("::1", running.port, timeout=5) as over_six,
        Client("127.0.0.1", running.port, timeout=5) as over_four,
    ):
        assert over_six.ls("/") == over_four.ls("/")
        with pytest.raises(BusyError, match="too many connections from your address"):
            Client("127.0.0.1", running.port, timeout=5).__enter__()
    assert re.search(r"connect 127\.0\.0\.1:\d+", caplog.text) and "::ffff:" not in caplog.text
