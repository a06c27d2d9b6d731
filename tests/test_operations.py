"""Running it in production (issue 14): reloading with SIGHUP, JSON logs, metrics, hooks."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ftpclient import Client
from ftpproto import AuthFailedError, BusyError, ProtocolError, encode_frame
from ftpproto.io import FrameStream
from ftpserver.config import ConfigError, load_config

from .conftest import wait_until, write_config

pytestmark = pytest.mark.timeout(60)


def adduser(config, name: str, password: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ftpserver", "adduser", name, "--config", str(config), "--password-stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )


def logs_in(port: int, user: str, password: str) -> bool:
    try:
        with Client("127.0.0.1", port, user=user, password=password, timeout=10) as client:
            return client.ls("/") is not None
    except AuthFailedError:
        return False


def reloaded(server, times: int) -> bool:
    """The server logged its `times`-th reload (or a refusal to reload)."""
    return sum("reload" in line for line in server.log) >= times


def test_sighup_takes_a_new_user_and_keeps_running_sessions(tmp_path, server_process):
    config = write_config(tmp_path)
    server = server_process(config)
    with Client("127.0.0.1", server.port, user="alice", password="alice-pw", timeout=10) as alice:
        added = adduser(config, "dave", "dave-pw")
        assert added.returncode == 0 and "SIGHUP" in added.stderr
        assert not logs_in(server.port, "dave", "dave-pw")  # not before the reload
        server.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: reloaded(server, 1), 10), server.log
        assert logs_in(server.port, "dave", "dave-pw")
        assert alice.ls("/") is not None  # a session from before goes on
    assert server.process.poll() is None


def test_a_changed_password_takes_effect_at_the_reload_though_the_old_one_was_remembered(
    tmp_path, server_process
):
    """A password that passed is remembered for 5 minutes (auth.py), beside the stored hash
    it matched: a new hash after SIGHUP does not match it, so the old password fails at once."""
    config = write_config(tmp_path)
    server = server_process(config)
    assert logs_in(server.port, "alice", "alice-pw")  # checked by scrypt, then remembered
    assert logs_in(server.port, "alice", "alice-pw")  # from memory
    changed = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftpserver",
            "users",
            "passwd",
            "alice",
            "--config",
            str(config),
            "--password-stdin",
        ],
        input="a new secret\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert changed.returncode == 0, changed.stderr
    assert logs_in(server.port, "alice", "alice-pw")  # the server still has the old users
    server.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: reloaded(server, 1), 10), server.log
    assert not logs_in(server.port, "alice", "alice-pw")
    assert logs_in(server.port, "alice", "a new secret")


def test_systemd_hears_when_the_server_is_ready_reloading_and_stopping(tmp_path, server_process):
    """conf/sockftp.service is Type=notify: systemd counts the start done at READY=1 (sent
    once the server listens), and follows reloads and the stop (sd_notify(3))."""
    address = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(address))
        systemd.settimeout(10)
        server = server_process(write_config(tmp_path), env={**os.environ, "NOTIFY_SOCKET": str(address)})
        ready = systemd.recv(4096).decode().split("\n")
        assert ready == ["READY=1", f"STATUS=listening on 127.0.0.1:{server.port}"]
        assert logs_in(server.port, "alice", "alice-pw")  # ready means serving
        server.process.send_signal(signal.SIGHUP)
        reloading = dict(line.split("=", 1) for line in systemd.recv(4096).decode().split("\n"))
        assert reloading["RELOADING"] == "1"
        assert abs(int(reloading["MONOTONIC_USEC"]) / 1e6 - time.monotonic()) < 10  # the same clock
        assert systemd.recv(4096) == b"READY=1"  # reloaded
        server.process.send_signal(signal.SIGTERM)
        assert systemd.recv(4096) == b"STOPPING=1"
        assert server.process.wait(10) == 0


def test_without_systemd_nothing_is_sent_and_a_dead_socket_is_only_a_warning(tmp_path, monkeypatch, caplog):
    from ftpserver import systemd

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert systemd.notify("READY=1") is False
    assert "cannot notify systemd" in caplog.text
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0sockftp-test-" + tmp_path.name)  # the abstract namespace, written @name
        monkeypatch.setenv("NOTIFY_SOCKET", "@sockftp-test-" + tmp_path.name)
        assert systemd.notify("STATUS=x") is True
        assert manager.recv(100) == b"STATUS=x"


def test_a_broken_users_file_is_refused_and_the_old_users_stay(tmp_path, server_process):
    config = write_config(tmp_path)
    server = server_process(config)
    (tmp_path / "users.yaml").write_text("users: [this is: not, a mapping")
    server.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: reloaded(server, 1), 10), server.log
    assert any("reload refused" in line and "users.yaml" in line for line in server.log)
    assert server.process.poll() is None
    assert logs_in(server.port, "alice", "alice-pw")


def test_sighup_changes_limits_but_not_what_needs_a_restart(tmp_path, server_process):
    config = write_config(tmp_path)
    server = server_process(config)
    write_config(tmp_path, limits={"max_connections_per_address": 1}, listen={"host": "127.0.0.2"})
    server.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: reloaded(server, 2), 10), server.log  # reloaded, and the warning
    assert any("need a restart" in line and "listen" in line for line in server.log)
    first = Client("127.0.0.1", server.port, timeout=10)  # still where it listened
    with first, pytest.raises(BusyError, match="too many connections"):
        Client("127.0.0.1", server.port, timeout=10).__enter__()


def test_json_logs_parse_line_by_line_and_carry_the_event_fields(tmp_path, server_process):
    config = write_config(tmp_path, log_format="json")
    server = server_process(config)
    (tmp_path / "f").write_bytes(b"x" * 1000)
    with Client("127.0.0.1", server.port, user="alice", password="alice-pw", timeout=10) as alice:
        alice.put(tmp_path / "f", "/f")
        alice.get("/f", tmp_path / "back")
    assert not logs_in(server.port, "alice", "wrong")
    assert server.stop() == 0
    lines = [json.loads(line) for line in server.log]  # every line, or this raises
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert any("tls off" in line["message"] for line in lines)
    transfers = {line["op"]: line for line in lines if line.get("event") == "transfer"}
    assert transfers["put"]["bytes"] == transfers["get"]["bytes"] == 1000
    assert transfers["put"]["user"] == "alice" and transfers["put"]["path"] == "/f"
    assert transfers["put"]["result"] == "ok" and isinstance(transfers["put"]["seconds"], float)
    assert [line["user"] for line in lines if line.get("event") == "login_failed"] == ["alice"]
    assert {"connect", "login", "disconnect"} <= {line.get("event") for line in lines}


def test_an_interrupted_put_logs_the_bytes_it_received_and_kept(tmp_path, server_process):
    config = write_config(tmp_path, log_format="json")
    server = server_process(config)
    data = b"y" * 100_000
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        stream = FrameStream(sock)
        assert stream.recv()["type"] == "hello"
        stream.send({"op": "put", "path": "big", "size": len(data), "md5": hashlib.md5(data).hexdigest()})
        assert stream.recv()["ok"]
        sock.sendall(data[:40_000])

    def interrupted() -> list[dict]:
        lines = [json.loads(line) for line in server.log]
        return [line for line in lines if line.get("event") == "transfer" and line["result"] != "ok"]

    assert wait_until(lambda: interrupted(), 10)
    line = interrupted()[0]
    assert line["op"] == "put" and line["bytes"] == line["kept"] == 40_000


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """The metrics page over real HTTP, as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_move_with_real_transfers_logins_errors_and_bans(make_config, serve, tmp_path):
    running = serve(make_config(metrics={"host": "127.0.0.1", "port": 0}, defender={"safelist": []}))
    port = running.server.metrics._http.server_address[1]
    before = scrape(port)
    assert before[("sockftp_active_sessions", ())] == 0
    (tmp_path / "f").write_bytes(b"z" * 3000)
    with Client("127.0.0.1", running.port, user="alice", password="alice-pw", timeout=10) as alice:
        alice.put(tmp_path / "f", "/f")
        alice.get("/f", tmp_path / "back")
        alice.stat("/f")
        with pytest.raises(ProtocolError):
            alice.stat("/missing")
        during = scrape(port)
        assert during[("sockftp_turn_giveups_total", ())] == 0
        turn = running.server.turn
        if turn is not None:  # held by the test: a session with a run of requests gives up waiting
            turn.patience = 0.05
            assert turn.take()
            try:
                run = FrameStream(running.connect())
                run.recv()
                run.sock.sendall(encode_frame({"op": "stat", "path": "/"}) * 3)  # in one write
                assert all(run.recv()["ok"] for _ in range(3))
                run.close()
            finally:
                turn.give()
    assert during[("sockftp_active_sessions", ())] == 1
    for _ in range(15):  # the defender's threshold with the default scores: a ban
        logs_in(running.port, "alice", "wrong")
    after = scrape(port)
    assert after[("sockftp_transfers_total", (("op", "put"), ("result", "ok")))] == 1
    assert after[("sockftp_transfers_total", (("op", "get"), ("result", "ok")))] == 1
    assert after[("sockftp_transfer_bytes_total", (("op", "put"),))] == 3000
    assert after[("sockftp_transfer_seconds_count", (("op", "get"),))] == 1
    assert after[("sockftp_logins_total", (("result", "ok"),))] == 1
    assert after[("sockftp_logins_total", (("result", "failed"),))] == 15
    assert after[("sockftp_errors_total", (("code", "not_found"),))] == 1
    assert after[("sockftp_bans_total", ())] == 1
    assert after[("sockftp_checksum_cache_lookups_total", (("result", "hit"),))] >= 2  # get and stat
    assert after[("sockftp_turn_giveups_total", ())] >= (1 if running.server.turn else 0)


def test_no_metrics_section_means_no_listener(server):
    assert not hasattr(server.server.metrics, "_http")


RECORDER = r"""
import json, os, sys
fields = {k[len("SOCKFTP_"):].lower(): v for k, v in os.environ.items() if k.startswith("SOCKFTP_")}
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(fields) + "\n")
"""


class Collector(http.server.BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        Collector.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector():
    Collector.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", Collector.bodies
    server.shutdown()
    server.server_close()


def test_hooks_get_the_fields_of_every_event_by_command_and_by_post(make_config, serve, tmp_path, collector):
    url, posted = collector
    record = tmp_path / "events.jsonl"
    everything = ["upload", "download", "delete", "rename", "mkdir", "login_failed", "ban"]
    running = serve(
        make_config(
            defender={"safelist": [], "threshold": 2},
            hooks=[
                {"events": everything, "command": [sys.executable, "-c", RECORDER, str(record)]},
                {"events": ["upload"], "url": url},
            ],
        )
    )
    data = b"hooked" * 100
    (tmp_path / "f").write_bytes(data)
    with Client("127.0.0.1", running.port, user="alice", password="alice-pw", timeout=10) as alice:
        alice.mkdir("/in")
        alice.put(tmp_path / "f", "in/f")
        alice.get("/in/f", tmp_path / "back")
        alice.rm("/in/f")
        alice.put(tmp_path / "f", "in/g")
        alice.rename("/in/g", "in/h")
        alice.rm("/in", recursive=True)
    logs_in(running.port, "alice", "wrong")
    logs_in(running.port, "alice", "wrong")  # the second failure bans 127.0.0.1

    def seen() -> list[dict]:
        return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []

    assert wait_until(lambda: len(seen()) >= 10, 15), seen()
    by_event = {}
    for fields in seen():
        by_event.setdefault(fields["event"], fields)
    digest = hashlib.md5(data).hexdigest()
    assert by_event["mkdir"] == {"event": "mkdir", "user": "alice", "path": "/in", "address": "127.0.0.1"}
    assert by_event["upload"] == {
        **by_event["mkdir"],
        "event": "upload",
        "path": "/in/f",
        "size": "600",
        "md5": digest,
    }
    assert by_event["download"] == {**by_event["upload"], "event": "download"}
    assert by_event["delete"] == {**by_event["mkdir"], "event": "delete", "path": "/in/f"}
    assert by_event["rename"] == {**by_event["mkdir"], "event": "rename", "path": "/in/g", "to": "/in/h"}
    tree_removed = [fields for fields in seen() if fields["event"] == "delete"][1]
    assert tree_removed == {**by_event["mkdir"], "event": "delete", "path": "/in", "recursive": "True"}
    assert by_event["login_failed"] == {"event": "login_failed", "user": "alice", "address": "127.0.0.1"}
    assert by_event["ban"] == {"event": "ban", "address": "127.0.0.1"}
    assert wait_until(lambda: len(posted) == 2, 10)  # two uploads: in/f, then in/g
    assert posted[0] == {
        "event": "upload",
        "user": "alice",
        "path": "/in/f",
        "address": "127.0.0.1",
        "size": 600,
        "md5": digest,
    }


def test_a_hook_that_hangs_never_slows_a_transfer(make_config, serve, tmp_path, caplog):
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    running = serve(make_config(hooks=[{"events": ["upload"], "command": sleeper, "timeout": 2}]))
    (tmp_path / "f").write_bytes(b"quick")
    started = time.monotonic()
    with Client("127.0.0.1", running.port, timeout=10) as client:
        for i in range(5):
            client.put(tmp_path / "f", f"/f{i}")
    assert time.monotonic() - started < 2  # five uploads while the first hook still sleeps
    assert wait_until(lambda: any("killed after 2s" in r.message for r in caplog.records), 10)


def test_hook_config_errors_name_the_key(tmp_path):
    for hooks, message in [
        ([{"events": ["upload"]}], "hooks[0]: needs a command or a url"),
        ([{"events": ["uploaded"], "command": ["true"]}], "hooks[0].events: must list some of"),
        ([{"events": ["upload"], "command": "rm -rf /"}], "hooks[0].command: must be a list"),
        ([{"events": ["upload"], "url": "ftp://x"}], "hooks[0].url: must start with http"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(write_config(tmp_path, hooks=hooks))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_adduser_run_as_root_leaves_the_users_file_to_its_folders_owner(tmp_path):
    """`sudo ftpserver adduser` must not leave a file the server's own user cannot read."""
    folder = tmp_path / "etc"
    folder.mkdir()
    config = write_config(folder)
    (folder / "users.yaml").unlink()
    os.chown(folder, 65534, 65534)
    assert adduser(config, "dave", "dave-pw").returncode == 0
    written = (folder / "users.yaml").stat()
    assert (written.st_uid, written.st_gid, written.st_mode & 0o777) == (65534, 65534, 0o600)


def test_a_metrics_port_in_use_is_a_config_error_naming_it(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, metrics={"host": "127.0.0.1", "port": port})
        done = subprocess.run(
            [sys.executable, "-m", "ftpserver", "--config", str(config), "--port", "0"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2
    assert f"metrics: cannot listen on ('127.0.0.1', {port})" in done.stderr
