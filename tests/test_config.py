"""Config loading: defaults, relative paths, and errors that name the file and key."""

from __future__ import annotations

import pytest
import yaml

from ftpproto.units import parse_size
from ftpserver.auth import hash_password, verify_password
from ftpserver.config import ConfigError, load_config

from .conftest import write_config


def test_shipped_config_loads_and_matches_the_quick_start():
    from pathlib import Path

    config = load_config(Path(__file__).parent.parent / "conf" / "server.yaml")
    assert (config.host, config.port) == ("127.0.0.1", 9999)
    assert config.storage_root.name == "storage" and config.storage_root.parent.name != "conf"
    assert config.anonymous is not None and config.anonymous.can_write


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    path = write_config(tmp_path)
    monkeypatch.chdir("/")
    config = load_config(path)
    assert config.storage_root == (tmp_path / "storage").resolve()
    assert config.users["alice"].home == (tmp_path / "storage" / "alice").resolve()
    assert config.users["carol"].quota == 1000


def test_storage_as_a_mapping_names_the_backend(tmp_path):
    config = load_config(write_config(tmp_path, storage={"backend": "local", "root": "storage"}))
    assert config.storage_backend == "local" and config.storage_root == (tmp_path / "storage").resolve()
    assert load_config(write_config(tmp_path, storage={"root": "storage"})).storage_backend == "local"


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"listen": {"port": "high"}}, "listen.port: must be a number"),
        ({"listen": {"port": 70000}}, "listen.port: must be at most 65535"),
        ({"limits": {"idle_timout": 3}}, "limits.idle_timout: unknown key"),
        ({"limits": {"max_file_size": "lots"}}, "limits.max_file_size: 'lots' is not a size"),
        ({"limits": {"max_connections": 0}}, "limits.max_connections: must be at least 1"),
        ({"anonymous": {"enabled": "yes"}}, "anonymous.enabled: must be true or false"),
        (
            {"anonymous": {"enabled": True, "permissions": "rwx"}},
            "anonymous.permissions: must be 'r' or 'rw'",
        ),
        ({"anonymous": {"enabled": True, "home": "../../etc"}}, "anonymous.home: '../../etc' is outside"),
        ({"storage": "nowhere"}, "storage: "),
        ({"defender": {"threshold": 2.5}}, "defender.threshold: must be a whole number"),
        ({"defender": {"ban_time": float("nan")}}, "defender.ban_time: must be a finite number"),
        ({"defender": {"threshold": float("inf")}}, "defender.threshold: must be a finite number"),
        ({"defender": {"scores": {"login_failed": 0.5}}}, "defender.scores.login_failed: must be a whole"),
        ({"defender": {"safelist": ["not a network"]}}, "defender.safelist: "),
        ({"defender": True}, "defender: must be a mapping"),
        ({"storage": {"backend": "local", "root": "nowhere"}}, "storage.root: "),
        ({"storage": {"backend": "ftp"}}, "storage.backend: unknown backend 'ftp'"),
        ({"storage": {"root": "storage", "bucket": "b"}}, "storage.bucket: unknown key"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"log_level": "loud"}, "log_level: must be"),
    ],
)
def test_bad_values_name_the_key(tmp_path, sections, message):
    path = write_config(tmp_path, **sections)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_bad_users_file_names_the_user(tmp_path):
    path = write_config(tmp_path)
    (tmp_path / "users.yaml").write_text(yaml.safe_dump({"users": {"zed": {"home": "z"}}}))
    with pytest.raises(ConfigError, match=r"users\.zed\.password: is missing"):
        load_config(path)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("listen: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_a_missing_users_file_means_no_users(tmp_path):
    path = write_config(tmp_path)
    (tmp_path / "users.yaml").unlink()
    assert load_config(path).users == {}


@pytest.mark.parametrize(
    "text, size",
    [
        (0, 0),
        (1234, 1234),
        ("10GB", 10 * 10**9),
        ("512MiB", 512 * 2**20),
        ("1.5k", 1500),
        ("7 b", 7),
        ("2TiB", 2 * 2**40),
    ],
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["-1", "ten", "5 XB", True, -3, 1.5])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_password_hashes_are_salted_and_verified():
    first, second = hash_password("pw"), hash_password("pw")
    assert first != second
    assert "correct-horse" not in hash_password("correct-horse")  # base64 may hold "pw" by chance
    assert verify_password("pw", first) and not verify_password("wrong", first)
    assert not verify_password("pw", None) and not verify_password("pw", "garbage")


def counting_scrypt(monkeypatch) -> list[str]:
    from ftpserver import auth

    calls: list[str] = []
    real = auth._scrypt

    def counted(password: str, *args: object) -> bytes:
        calls.append(password)
        return real(password, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(auth, "_scrypt", counted)
    return calls


def test_a_password_that_passed_is_remembered_and_a_guess_still_costs_a_full_check(monkeypatch):
    stored, other = hash_password("pw"), hash_password("pw")
    calls = counting_scrypt(monkeypatch)
    assert verify_password("pw", stored) and calls == ["pw"]
    assert verify_password("pw", stored) and calls == ["pw"]  # remembered: no scrypt
    assert not verify_password("wrong", stored) and calls == ["pw", "wrong"]
    assert not verify_password("pw\ud800", stored)  # not even encodable: no match
    assert verify_password("pw", other) and calls[-1] == "pw" and len(calls) == 4  # another hash: checked


def test_a_remembered_password_is_forgotten_after_its_time_and_beyond_the_limit(monkeypatch):
    from ftpserver import auth

    hashes = [hash_password("pw") for _ in range(3)]
    calls = counting_scrypt(monkeypatch)
    monkeypatch.setattr(auth, "REMEMBER", -1.0)  # expired as soon as remembered
    assert verify_password("pw", hashes[0]) and verify_password("pw", hashes[0])
    assert len(calls) == 2
    monkeypatch.setattr(auth, "REMEMBER", 300.0)
    monkeypatch.setattr(auth, "REMEMBERED_MAX", 2)
    for stored in hashes:
        assert verify_password("pw", stored)
    assert len(calls) == 5
    assert verify_password("pw", hashes[2]) and verify_password("pw", hashes[1]) and len(calls) == 5
    assert verify_password("pw", hashes[0]) and len(calls) == 6  # the least recently used went first
