"""`ftpserver users list|add|del|passwd`, run in-process against a config in tmp_path,
then checked by logging in to a real server started from the same files."""

from __future__ import annotations

import io
import json

import pytest
import yaml

from ftpclient import Client
from ftpproto import AuthFailedError
from ftpserver.__main__ import main
from ftpserver.config import load_config

from .conftest import write_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def run(monkeypatch, capsys):
    def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path)


def users_file(config) -> dict:
    return yaml.safe_load((config.parent / "users.yaml").read_text())["users"]


def test_list_shows_every_user_and_never_a_hash(run, config):
    code, out, _ = run("users", "list", "--config", str(config))
    assert code == 0
    assert [line.split("\t")[:2] for line in out.splitlines()] == [
        ["alice", "rw"],
        ["bob", "r"],
        ["carol", "rw"],
    ]
    assert "quota 1000 bytes" in out and "scrypt" not in out
    code, out, _ = run("users", "list", "--json", "--config", str(config))
    records = [json.loads(line) for line in out.splitlines()]
    assert records[2] == {
        "name": "carol",
        "permissions": "rw",
        "home": "carol",
        "quota": 1000,
        "max_sessions": None,
    }


def test_add_then_log_in_and_add_again_is_refused(run, config, serve):
    code, _, err = run(
        "users", "add", "dave", "--quota", "5MB", "--config", str(config), "--password-stdin", stdin="d-pw\n"
    )
    assert code == 0 and "saved" in err
    assert users_file(config)["dave"]["quota"] == 5_000_000
    code, _, err = run("users", "add", "dave", "--config", str(config), "--password-stdin", stdin="other\n")
    assert code == 1 and "exists already" in err and "users passwd" in err
    server = serve(load_config(config))
    with Client("127.0.0.1", server.port, "dave", "d-pw", timeout=10) as client:
        assert client.usage().quota == 5_000_000


def test_passwd_changes_only_the_password(run, config, serve):
    before = users_file(config)["bob"]
    code, _, err = run(
        "users", "passwd", "bob", "--config", str(config), "--password-stdin", stdin="new-bob\n"
    )
    assert code == 0 and "changed" in err
    after = users_file(config)["bob"]
    assert after["password"] != before["password"] and {**after, "password": None} == {
        **before,
        "password": None,
    }
    server = serve(load_config(config))
    Client("127.0.0.1", server.port, "bob", "new-bob", timeout=10).close()
    with pytest.raises(AuthFailedError):
        Client("127.0.0.1", server.port, "bob", "bob-pw", timeout=10)
    code, _, err = run("users", "passwd", "nobody", "--config", str(config), "--password-stdin", stdin="x\n")
    assert code == 1 and "no user 'nobody'" in err
    code, _, err = run("users", "passwd", "bob", "--config", str(config), "--password-stdin", stdin="\n")
    assert code == 1 and "empty password" in err
    assert users_file(config)["bob"] == after


def test_del_removes_the_user_and_keeps_its_files(run, config, tmp_path, serve):
    home = tmp_path / "storage" / "carol"
    home.mkdir()
    (home / "kept.txt").write_text("carol's")
    code, _, err = run("users", "del", "carol", "--config", str(config))
    assert code == 0 and "its files stay in" in err
    assert sorted(users_file(config)) == ["alice", "bob"] and (home / "kept.txt").read_text() == "carol's"
    code, _, err = run("users", "del", "carol", "--config", str(config))
    assert code == 1 and "no user 'carol'" in err
    server = serve(load_config(config))
    with pytest.raises(AuthFailedError):
        Client("127.0.0.1", server.port, "carol", "carol-pw", timeout=10)


def test_usage_errors_and_help(run, config):
    with pytest.raises(SystemExit) as exited:
        run("users", "--config", str(config))  # no action
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        run("users", "add", "--help")
    assert exited.value.code == 0
    code, _, err = run(
        "users", "add", "eve", "--quota", "lots", "--config", str(config), "--password-stdin", stdin="x\n"
    )
    assert code == 2 and "--quota" in err and "eve" not in users_file(config)


def test_adduser_still_adds_or_updates(run, config):
    code, _, _ = run(
        "adduser", "alice", "--permissions", "r", "--config", str(config), "--password-stdin", stdin="a2\n"
    )
    assert code == 0 and users_file(config)["alice"]["permissions"] == "r"
