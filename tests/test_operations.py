"""Running it in production (issue 14): reloading users and limits with SIGHUP."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from ftpclient import Client
from ftpproto import AuthFailedError, BusyError

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
