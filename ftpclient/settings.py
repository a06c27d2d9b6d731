"""Where the client connects, and as whom: flags, then environment, then a profile.

A profile is a named set of connection settings in the client config file,
`$XDG_CONFIG_HOME/sockftp/client.yaml` (`~/.config/sockftp/client.yaml` by
default, `--config` to choose another):

    default: work            # the profile used when none is named
    profiles:
      work:
        host: files.example.com
        port: 9999
        user: alice
        tls: true
        cafile: ~/work-ca.pem
        password_file: ~/.config/sockftp/work.password

For each setting the first of these that is given wins: a command-line flag,
a `SOCKFTP_*` environment variable, the profile, the built-in default. A
password comes from `SOCKFTP_PASSWORD`, `--password-file`, the profile's
`password_file` or a terminal prompt, in that order; never from a flag.
The variables (`HOME` for `~` too) are read from the mapping handed in, never
from `os.environ` itself: the command line passes its `Environment`'s.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftpproto.units import host_of

from .environment import config_dir_of, expand_home

__all__ = ["Settings", "SettingsError", "config_path", "resolve_settings"]

DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT = "127.0.0.1", 9999, 30.0
PROFILE_KEYS: dict[str, type | tuple[type, ...]] = {
    "host": str,
    "port": int,
    "user": str,
    "tls": bool,
    "cafile": str,
    "password_file": str,
    "timeout": (int, float),
}


class SettingsError(Exception):
    """Settings that cannot be used: a usage error."""


@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    user: str | None = None
    password: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    tls: bool = False
    cafile: str | None = None


def config_path(env: Mapping[str, str]) -> Path:
    return config_dir_of(env) / "client.yaml"


def load_profile(path: Path, name: str | None, explicit: bool) -> dict[str, Any]:
    """The named profile (or the file's default one); `{}` when there is none to use."""
    if not path.exists():
        if explicit or name:
            raise SettingsError(
                f"{path}: no such file" + (f" (looking for profile {name!r})" if name else "")
            )
        return {}
    import yaml  # here: most runs have no settings file, and yaml is a tenth of the start-up

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SettingsError(f"{path}: cannot read: {one_line(exc)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("profiles", {}), dict):
        raise SettingsError(f"{path}: expected a mapping with a 'profiles' mapping")
    profiles = data.get("profiles") or {}
    name = name or data.get("default")
    if name is None:
        return {}
    profile = profiles.get(name)
    if not isinstance(profile, dict):
        known = ", ".join(sorted(map(str, profiles))) or "none"
        raise SettingsError(f"{path}: no profile {name!r} (profiles: {known})")
    for key, value in profile.items():
        kind = PROFILE_KEYS.get(key)
        if kind is None:
            raise SettingsError(f"{path}: profiles.{name}.{key}: unknown key")
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise SettingsError(f"{path}: profiles.{name}.{key}: wrong type {value!r}")
    return profile


def _env_flag(value: str | None) -> bool | None:
    if value is None or value == "":
        return None
    return value.lower() in ("1", "true", "yes", "on")


def _env_port(env: Mapping[str, str]) -> int | None:
    raw = env.get("SOCKFTP_PORT")
    if not raw:
        return None
    if not raw.isdigit():
        raise SettingsError(f"SOCKFTP_PORT must be a port number, not {raw!r}")
    return int(raw)


def one_line(exc: BaseException) -> str:
    """An error message folded onto one line (YAML errors span several)."""
    return " ".join(str(exc).split())


def first(*values: Any) -> Any:
    """The first value that is not None."""
    return next((v for v in values if v is not None), None)


def resolve_settings(
    env: Mapping[str, str],
    *,
    host: str | None = None,
    port: int | None = None,
    user: str | None = None,
    tls: bool | None = None,
    cafile: str | None = None,
    timeout: float | None = None,
    password_file: str | None = None,
    profile: str | None = None,
    config: str | None = None,
    config_dir: Path | None = None,
    interactive: bool | None = None,
    ask_password: Callable[[str], str] = getpass.getpass,
) -> Settings:
    """Combine flags (the keyword arguments), environment and profile into `Settings`.

    The profile is read from `config`, else `config_dir`/client.yaml, else the
    file the XDG variables in `env` name. A password the settings do not give
    is asked with `ask_password(prompt)` when `interactive` (default: stdin is a
    terminal)."""
    if config:
        path = Path(expand_home(config, env))
    else:
        path = (config_dir / "client.yaml") if config_dir is not None else config_path(env)
    prof = load_profile(path, profile or env.get("SOCKFTP_PROFILE") or None, explicit=config is not None)
    port = first(port, _env_port(env), prof.get("port"), DEFAULT_PORT)
    if not 0 < port < 65536:
        raise SettingsError(f"port {port} is out of range")
    user = first(user, env.get("SOCKFTP_USER") or None, prof.get("user"))
    cafile = first(cafile, env.get("SOCKFTP_CAFILE") or None, prof.get("cafile"))
    tls = (
        bool(first(tls or None, _env_flag(env.get("SOCKFTP_TLS")), prof.get("tls"), False))
        or cafile is not None
    )
    if cafile is not None and not os.path.isfile(expand_home(cafile, env)):
        raise SettingsError(f"CA file {cafile}: no such file")
    if password_file and not user:
        raise SettingsError("--password-file needs a user (--user, SOCKFTP_USER or the profile)")
    password = None
    if user:
        password = _password(env, password_file or prof.get("password_file"), user, interactive, ask_password)
    return Settings(
        host=host_of(first(host, env.get("SOCKFTP_HOST") or None, prof.get("host"), DEFAULT_HOST)),
        port=port,
        user=user,
        password=password,
        timeout=float(first(timeout, prof.get("timeout"), DEFAULT_TIMEOUT)),
        tls=tls,
        cafile=expand_home(cafile, env) if cafile else None,
    )


def _password(
    env: Mapping[str, str],
    password_file: str | None,
    user: str,
    interactive: bool | None,
    ask_password: Callable[[str], str],
) -> str:
    if env.get("SOCKFTP_PASSWORD") is not None:
        return env["SOCKFTP_PASSWORD"]
    if password_file:
        path = Path(expand_home(password_file, env))
        try:
            return path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
        except OSError as exc:
            raise SettingsError(f"password file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SettingsError(f"password file {path}: not UTF-8 text") from None
    if interactive is None:
        interactive = sys.stdin.isatty()
    if not interactive:
        raise SettingsError(
            f"no password for {user!r}: set SOCKFTP_PASSWORD, use --password-file, or run on a terminal"
        )
    return ask_password(f"Password for {user}: ")
