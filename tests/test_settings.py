"""Client settings: flags > environment > profile > defaults; passwords never from a flag."""

from __future__ import annotations

import pytest
import yaml

from ftpclient.settings import Settings, SettingsError, config_path, resolve_settings

from .conftest import run_cli


def write_profiles(directory, data) -> None:
    path = directory / "sockftp" / "client.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(data))


def test_defaults_without_anything():
    assert resolve_settings({"XDG_CONFIG_HOME": "/nonexistent"}) == Settings()


def test_precedence_flag_then_env_then_profile(tmp_path):
    write_profiles(
        tmp_path, {"default": "work", "profiles": {"work": {"host": "10.9.9.9", "port": 1111, "user": "p"}}}
    )
    env = {"XDG_CONFIG_HOME": str(tmp_path), "SOCKFTP_PASSWORD": "pw"}
    profile_only = resolve_settings(env)
    assert (profile_only.host, profile_only.port, profile_only.user) == ("10.9.9.9", 1111, "p")
    with_env = resolve_settings({**env, "SOCKFTP_PORT": "2222", "SOCKFTP_USER": "e"})
    assert (with_env.host, with_env.port, with_env.user) == ("10.9.9.9", 2222, "e")
    with_flag = resolve_settings({**env, "SOCKFTP_PORT": "2222"}, port=3333, host="127.0.0.2")
    assert (with_flag.host, with_flag.port) == ("127.0.0.2", 3333)


def test_profile_chosen_by_flag_or_env(tmp_path):
    write_profiles(tmp_path, {"profiles": {"a": {"port": 1}, "b": {"port": 2}}})
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert resolve_settings(env).port == 9999  # no default profile named
    assert resolve_settings(env, profile="b").port == 2
    assert resolve_settings({**env, "SOCKFTP_PROFILE": "a"}).port == 1
    with pytest.raises(SettingsError, match="no profile 'c'"):
        resolve_settings(env, profile="c")


def test_tls_and_cafile_from_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ca.pem").write_text("a CA bundle")
    write_profiles(tmp_path, {"default": "s", "profiles": {"s": {"cafile": "~/ca.pem"}}})
    settings = resolve_settings({"XDG_CONFIG_HOME": str(tmp_path)})
    assert settings.tls and settings.cafile.endswith("/ca.pem") and "~" not in settings.cafile


def test_password_sources(tmp_path):
    (tmp_path / "pw").write_text("from-file\n")
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert (
        resolve_settings(
            {**env, "SOCKFTP_PASSWORD": "from-env"}, user="u", password_file=str(tmp_path / "pw")
        ).password
        == "from-env"
    )
    assert resolve_settings(env, user="u", password_file=str(tmp_path / "pw")).password == "from-file"
    write_profiles(
        tmp_path, {"default": "x", "profiles": {"x": {"user": "u", "password_file": str(tmp_path / "pw")}}}
    )
    assert resolve_settings(env).password == "from-file"
    with pytest.raises(SettingsError, match="no password"):
        resolve_settings({"XDG_CONFIG_HOME": "/nonexistent"}, user="u", interactive=False)
    with pytest.raises(SettingsError, match="password file"):
        resolve_settings({"XDG_CONFIG_HOME": "/nonexistent"}, user="u", password_file=str(tmp_path / "nope"))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"profiles": {"x": {"hots": "typo"}}}, "profiles.x.hots: unknown key"),
        ({"profiles": {"x": {"port": "high"}}}, "profiles.x.port: wrong type"),
        ({"profiles": {"x": {"tls": "yes"}}}, "profiles.x.tls: wrong type"),
        (["not", "a", "mapping"], "expected a mapping"),
    ],
)
def test_bad_profiles_are_named(tmp_path, data, message):
    write_profiles(tmp_path, data)
    with pytest.raises(SettingsError, match=message):
        resolve_settings({"XDG_CONFIG_HOME": str(tmp_path)}, profile="x")


def test_config_path_follows_xdg():
    assert str(config_path({"XDG_CONFIG_HOME": "/cfg"})) == "/cfg/sockftp/client.yaml"


def test_cli_with_a_profile_and_a_password_file(tmp_path, make_config, serve):
    port = serve(make_config()).port
    (tmp_path / "pw").write_text("alice-pw\n")
    config = tmp_path / "client.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "profiles": {
                    "local": {
                        "host": "127.0.0.1",
                        "port": port,
                        "user": "alice",
                        "password_file": str(tmp_path / "pw"),
                    }
                }
            }
        )
    )
    (tmp_path / "f").write_text("via profile")
    result = run_cli(
        "--config",
        str(config),
        "--profile",
        "local",
        "put",
        "f",
        port=1,
        cwd=tmp_path,
        env={"SOCKFTP_PORT": ""},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "storage" / "alice" / "f").read_text() == "via profile"
    missing = run_cli("--config", str(tmp_path / "nope.yaml"), "ls", port=port)
    assert missing.returncode == 2 and "nope.yaml: no such file" in missing.stderr


def test_there_is_no_password_flag():
    result = run_cli("--password", "x", "ls", port=1)
    assert result.returncode == 2


def test_a_password_file_without_a_user_is_an_error(tmp_path):
    (tmp_path / "pw").write_text("secret")
    with pytest.raises(SettingsError, match="needs a user"):
        resolve_settings({"XDG_CONFIG_HOME": "/nonexistent"}, password_file=str(tmp_path / "pw"))
