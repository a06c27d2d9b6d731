"""Server configuration: YAML files in, frozen dataclasses out.

`load_config()` reads the main config and the users file it points to, checks
every key and value, and raises `ConfigError` naming the file and the key at
fault. Relative paths are relative to the file that holds them, so the server
starts the same from any working directory.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftpproto.paths import RESERVED_PREFIX
from ftpproto.units import host_of, parse_size

from .defender import DEFAULT_SCORES, DefenderConfig, Network
from .hooks import EVENTS, Hook

__all__ = [
    "Account",
    "ConfigError",
    "Limits",
    "S3Settings",
    "ServerConfig",
    "load_config",
    "load_users",
    "parse_users",
    "read_user_entries",
    "save_users",
]

PERMISSIONS = ("r", "rw")
_USER_NAME = re.compile(r"[A-Za-z0-9_@-][A-Za-z0-9._@-]{0,63}")


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class Account:
    """Who a session acts as: a named user, or `None` for anonymous."""

    name: str | None
    home: Path
    permissions: str
    quota: int | None = None
    password_hash: str = field(default="", repr=False)
    bandwidth: int | None = None  # bytes per second, shared by all of the account's sessions
    max_sessions: int | None = None  # sessions logged in as this user at once

    @property
    def can_write(self) -> bool:
        return self.permissions == "rw"


@dataclass(frozen=True)
class Limits:
    max_connections: int = 100
    max_connections_per_address: int = 20
    idle_timeout: float = 300.0
    stall_timeout: float = 60.0
    login_delay: float = 1.0
    max_failed_logins: int = 3
    max_file_size: int | None = None
    shutdown_grace: float = 30.0
    partial_max_age: float = 7 * 24 * 3600.0


@dataclass(frozen=True)
class S3Settings:
    """`storage: {backend: s3, ...}`: where the objects live and how to reach them.

    Holds no secret: the keys come from the environment (boto3's usual chain) or
    from `credentials_file`, read when the storage opens."""

    bucket: str
    prefix: str = ""  # every key starts with it: "" or "some/folder/"
    endpoint: str | None = None  # an S3-compatible store's URL; None: AWS
    region: str | None = None
    credentials_file: Path | None = None  # INI, as ~/.aws/credentials
    profile: str = "default"  # its section
    ca_bundle: Path | None = None  # trust this CA for an https endpoint instead of the system's
    part_size: int = 8 * 1024 * 1024
    upload_concurrency: int = 2  # parts of one upload in flight at once
    usage_refresh: float = 60.0  # seconds between recounts of each quota'd home
    max_rename_objects: int = 1000  # a directory rename copies each object: refused above this


@dataclass(frozen=True)
class ServerConfig:
    path: Path
    host: str
    port: int
    storage_root: Path
    users_file: Path
    users: dict[str, Account]
    anonymous: Account | None
    limits: Limits
    log_level: str = "info"
    log_format: str = "text"
    metrics: tuple[str, int] | None = None  # where the Prometheus listener is, if any
    hooks: tuple[Hook, ...] = ()
    storage_backend: str = "local"
    s3: S3Settings | None = None  # with storage_backend "s3"; storage_root then holds per-node state
    defender: DefenderConfig = field(default_factory=DefenderConfig)
    tls: ssl.SSLContext | None = field(default=None, repr=False)
    proxies: tuple[Network, ...] = ()  # balancers whose connections begin with a PROXY header


class _Section:
    """Reads one mapping of a YAML file, naming `file: key` in every error."""

    def __init__(self, file: Path, prefix: str, data: Any) -> None:
        self.file, self.prefix = file, prefix
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.error("", "must be a mapping")
        self.data = data

    def error(self, key: str, problem: str) -> ConfigError:
        name = ".".join(p for p in (self.prefix, key) if p) or "top level"
        return ConfigError(f"{self.file}: {name}: {problem}")

    def only(self, *allowed: str) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.error(str(key), f"unknown key (expected one of: {', '.join(allowed)})")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.data.get(key, default)
        if value is None:
            return default
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(key, f"must be {_kind_name(kind)}, not {value!r}")
        if not isinstance(value, kind):
            raise self.error(key, f"must be {_kind_name(kind)}, not {value!r}")
        return value

    def number(self, key: str, default: float, minimum: float = 0) -> float:
        value = self.get(key, (int, float), default)
        if not math.isfinite(value):
            raise self.error(key, f"must be a finite number, not {value!r}")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}")
        return value

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.number(key, default, minimum)
        if value != int(value):
            raise self.error(key, f"must be a whole number, not {value!r}")
        return int(value)

    def size(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        try:
            return parse_size(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def section(self, key: str) -> _Section:
        return _Section(self.file, ".".join(p for p in (self.prefix, key) if p), self.data.get(key))

    def home(self, key: str, root: Path) -> Path:
        """A home directory: relative to the storage root, and inside it."""
        value = self.get(key, str, "/")
        home = (root / value.lstrip("/")).resolve()
        if home != root and root not in home.parents:
            raise self.error(key, f"{value!r} is outside the storage root")
        if any(part.startswith(RESERVED_PREFIX) for part in home.relative_to(root).parts):
            raise self.error(key, f"{value!r} is inside the server's own {RESERVED_PREFIX} folder")
        return home

    def permissions(self, key: str, default: str) -> str:
        value = self.get(key, str, default)
        if value not in PERMISSIONS:
            raise self.error(key, f"must be 'r' or 'rw', not {value!r}")
        return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        str: "a string",
        int: "a number",
        float: "a number",
        dict: "a mapping",
        bool: "true or false",
        list: "a list",
    }
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def _read_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as file:
            return yaml.safe_load(file)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


def load_config(path: str | Path) -> ServerConfig:
    """Read and check the main config and its users file."""
    path = Path(path).absolute()
    top = _Section(path, "", _read_yaml(path))
    top.only(
        "listen",
        "storage",
        "users_file",
        "anonymous",
        "limits",
        "log_level",
        "log_format",
        "tls",
        "defender",
        "metrics",
        "hooks",
    )
    base = path.parent

    listen = top.section("listen")
    listen.only("host", "port", "proxies")
    host = host_of(listen.get("host", str, "127.0.0.1"))
    proxies = _networks(listen, "proxies")
    port = int(listen.number("port", 9999))
    if port > 65535:
        raise listen.error("port", "must be at most 65535")

    backend, root, s3 = _storage(top, base)

    anon = top.section("anonymous")
    anon.only("enabled", "home", "permissions", "quota", "bandwidth")
    anonymous = None
    if anon.get("enabled", bool, False):
        anonymous = Account(
            None,
            anon.home("home", root),
            anon.permissions("permissions", "r"),
            anon.size("quota"),
            bandwidth=anon.size("bandwidth"),
        )

    lim = top.section("limits")
    lim.only(*Limits.__dataclass_fields__)
    limits = Limits(
        max_connections=int(lim.number("max_connections", Limits.max_connections, 1)),
        max_connections_per_address=int(
            lim.number("max_connections_per_address", Limits.max_connections_per_address, 1)
        ),
        idle_timeout=lim.number("idle_timeout", Limits.idle_timeout, 0.1),
        stall_timeout=lim.number("stall_timeout", Limits.stall_timeout, 0.1),
        login_delay=lim.number("login_delay", Limits.login_delay),
        max_failed_logins=int(lim.number("max_failed_logins", Limits.max_failed_logins, 1)),
        max_file_size=lim.size("max_file_size"),
        shutdown_grace=lim.number("shutdown_grace", Limits.shutdown_grace),
        partial_max_age=lim.number("partial_max_age", Limits.partial_max_age, 1),
    )

    log_level = top.get("log_level", str, "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise top.error("log_level", "must be debug, info, warning or error")

    log_format = top.get("log_format", str, "text").lower()
    if log_format not in ("text", "json"):
        raise top.error("log_format", "must be text or json")

    users_file = (base / top.get("users_file", str, "users.yaml")).absolute()
    return ServerConfig(
        path=path,
        host=host,
        port=port,
        storage_root=root,
        users_file=users_file,
        users=load_users(users_file, root),
        anonymous=anonymous,
        limits=limits,
        log_level=log_level,
        log_format=log_format,
        metrics=_metrics(top),
        hooks=_hooks(top),
        storage_backend=backend,
        s3=s3,
        defender=_defender(top, proxies),
        proxies=proxies,
        tls=_tls_context(top.section("tls"), base) if top.data.get("tls") is not None else None,
    )


def _hooks(top: _Section) -> tuple[Hook, ...]:
    """`hooks`: a list of {events, command (argument list) and/or url, timeout}."""
    entries = top.get("hooks", list, [])
    hooks = []
    for number, data in enumerate(entries):
        section = _Section(top.file, f"hooks[{number}]", data)
        section.only("events", "command", "url", "timeout")
        events = section.get("events", list, [])
        unknown = [e for e in events if e not in EVENTS]
        if not events or unknown:
            raise section.error("events", f"must list some of: {', '.join(EVENTS)}")
        command = section.get("command", list, [])
        if not all(isinstance(arg, str) for arg in command):
            raise section.error("command", "must be a list of strings (the program, then its arguments)")
        url = section.get("url", str)
        if not command and not url:
            raise section.error("", "needs a command or a url")
        if url is not None and not url.startswith(("http://", "https://")):
            raise section.error("url", "must start with http:// or https://")
        hooks.append(Hook(tuple(events), tuple(command), url, section.number("timeout", 10.0, 0.1)))
    return tuple(hooks)


def _metrics(top: _Section) -> tuple[str, int] | None:
    """`metrics: {host, port}`: the Prometheus listener; off when the section is absent."""
    if top.data.get("metrics") is None:
        return None
    section = top.section("metrics")
    section.only("host", "port")
    port = section.integer("port", 9100, 0)
    if port > 65535:
        raise section.error("port", "must be at most 65535")
    return section.get("host", str, "127.0.0.1"), port


def _networks(section: _Section, key: str) -> tuple[Network, ...]:
    """A list of addresses and networks (`10.0.0.5`, `10.0.0.0/24`, `2001:db8::/32`). An
    IPv4-mapped one (`::ffff:10.0.0.5`) is taken as the IPv4 it maps: that is how the
    server sees an IPv4 peer, on a dual-stack listener too."""
    networks: list[Network] = []
    for entry in section.get(key, list, []):
        try:
            net = ipaddress.ip_network(str(entry), strict=False)
        except ValueError as exc:
            raise section.error(key, str(exc)) from None
        mapped = net.network_address.ipv4_mapped if isinstance(net, ipaddress.IPv6Network) else None
        if mapped is not None and net.prefixlen >= 96:
            net = ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}")
        networks.append(net)
    return tuple(networks)


def _defender(top: _Section, proxies: tuple[Network, ...]) -> DefenderConfig:
    """`defender: false`, or a mapping of the defender's settings (see defender.py). The
    trusted proxies join its safelist: what comes from them as their own is a health check."""
    if top.data.get("defender") is False:
        return DefenderConfig(enabled=False)
    section = top.section("defender")
    section.only("enabled", *(f for f in DefenderConfig.__dataclass_fields__ if f != "enabled"))
    default = DefenderConfig()
    scores = section.section("scores")
    scores.only(*DEFAULT_SCORES)
    networks = _networks(section, "safelist") + proxies  # a balancer's own connections: health checks
    return DefenderConfig(
        enabled=section.get("enabled", bool, True),
        threshold=section.integer("threshold", default.threshold, 1),
        observation_time=section.number("observation_time", default.observation_time, 1),
        ban_time=section.number("ban_time", default.ban_time, 1),
        ban_growth=section.number("ban_growth", default.ban_growth, 1),
        max_ban_time=section.number("max_ban_time", default.max_ban_time, 1),
        forget_after=section.number("forget_after", default.forget_after, 0),
        safelist=networks,
        scores={name: scores.integer(name, value) for name, value in DEFAULT_SCORES.items()},
    )


def _storage(top: _Section, base: Path) -> tuple[str, Path, S3Settings | None]:
    """`storage: PATH` (the local backend's shorthand), `storage: {backend: local, root: PATH}`
    or `storage: {backend: s3, state: PATH, bucket: ..., ...}`. For s3 the local folder
    `state` takes the place of the root: it holds this node's own state (bans), and
    homes are named relative to it as on disk, each becoming a key prefix."""
    s3 = None
    if isinstance(top.data.get("storage"), dict):
        section = top.section("storage")
        backend = section.get("backend", str, "local")
        if backend == "s3":
            section.only("backend", "state", *(f for f in S3Settings.__dataclass_fields__))
            s3 = _s3_settings(section, base)
            where, key, name = section.get("state", str, "storage"), section, "state"
        elif backend == "local":
            section.only("backend", "root")
            where, key, name = section.get("root", str, "storage"), section, "root"
        else:
            raise section.error("backend", f"unknown backend {backend!r} (expected: local, s3)")
    else:
        backend, where, key, name = "local", top.get("storage", str, "storage"), top, "storage"
    root = (base / where).resolve()
    if not root.is_dir():
        raise key.error(name, f"{root} is not a directory")
    return backend, root, s3


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _s3_settings(section: _Section, base: Path) -> S3Settings:
    default = S3Settings("bucket")
    bucket = section.get("bucket", str, "")
    if not _BUCKET.fullmatch(bucket):
        raise section.error("bucket", f"must be a bucket name (3-63 of a-z, 0-9, '.', '-'), not {bucket!r}")
    prefix = "/".join(part for part in section.get("prefix", str, "").split("/") if part)
    if any(part in (".", "..") or part.startswith(RESERVED_PREFIX) for part in prefix.split("/")):
        raise section.error("prefix", f"{prefix!r} may not hold '.', '..' or {RESERVED_PREFIX!r} names")
    endpoint = section.get("endpoint", str)
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise section.error("endpoint", "must start with http:// or https://")
    part_size = section.size("part_size") or default.part_size
    if not 5 * 1024 * 1024 <= part_size <= 5 * 1024**3:
        raise section.error("part_size", "must be between 5MiB and 5GiB (the S3 limits of a part)")
    files: dict[str, Path | None] = {}
    for name in ("credentials_file", "ca_bundle"):
        value = section.get(name, str)
        where = None if value is None else (base / value).absolute()
        if where is not None and not where.is_file():
            raise section.error(name, f"{where} is not a file")
        files[name] = where
    return S3Settings(
        bucket=bucket,
        prefix=f"{prefix}/" if prefix else "",
        endpoint=endpoint,
        region=section.get("region", str),
        credentials_file=files["credentials_file"],
        profile=section.get("profile", str, default.profile),
        ca_bundle=files["ca_bundle"],
        part_size=part_size,
        upload_concurrency=section.integer("upload_concurrency", default.upload_concurrency, 1),
        usage_refresh=section.number("usage_refresh", default.usage_refresh, 1),
        max_rename_objects=section.integer("max_rename_objects", default.max_rename_objects, 1),
    )


def _tls_context(section: _Section, base: Path) -> ssl.SSLContext:
    """A server-side TLS context from `tls: {cert, key}` (PEM files)."""
    section.only("cert", "key")
    cert = section.get("cert", str)
    if not cert:
        raise section.error("cert", "is required when tls is set")
    key = section.get("key", str)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(base / cert, base / key if key else None)
    except (OSError, ssl.SSLError) as exc:
        raise section.error("cert", f"cannot load certificate and key: {exc}") from None
    return context


def load_users(path: Path, root: Path) -> dict[str, Account]:
    """Read the users file; a file that does not exist yet holds no users."""
    if not path.exists():
        return {}
    return parse_users(_read_yaml(path), path, root)


def parse_users(data: Any, path: Path, root: Path) -> dict[str, Account]:
    """Check the users file's data (as read from `path`) and return the accounts."""
    top = _Section(path, "", data)
    top.only("users")
    users = top.section("users")
    accounts = {}
    for name in users.data:
        if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
            raise users.error(
                str(name), "a user name is letters, digits, '.', '_', '-' or '@', not starting with '.'"
            )
        entry = users.section(str(name))
        entry.only("password", "home", "permissions", "quota", "bandwidth", "max_sessions")
        password_hash = entry.get("password", str, "")
        if not password_hash:
            raise entry.error("password", "is missing (set it with `ftpserver adduser`)")
        entry.data.setdefault("home", str(name))
        accounts[str(name)] = Account(
            name=str(name),
            home=entry.home("home", root),
            permissions=entry.permissions("permissions", "rw"),
            quota=entry.size("quota"),
            password_hash=password_hash,
            bandwidth=entry.size("bandwidth"),
            max_sessions=None
            if entry.data.get("max_sessions") is None
            else entry.integer("max_sessions", 1, 1),
        )
    return accounts


def read_user_entries(path: Path) -> dict[str, dict]:
    """The users file as plain data, for `adduser` to change and `save_users()` to write."""
    if not path.exists():
        return {}
    data = _read_yaml(path) or {}
    users = data.get("users") if isinstance(data, dict) else None
    return dict(users) if isinstance(users, dict) else {}


def save_users(path: Path, entries: dict[str, dict]) -> None:
    """Write the users file atomically (temp file, fsync, rename)."""
    text = (
        "# sockftp users; written by `ftpserver users`. Homes are relative to the storage root.\n"
        + yaml.safe_dump({"users": entries}, sort_keys=True, allow_unicode=True)
    )
    tmp = path.with_name(f".{path.name}.tmp")
    # 0600: password hashes are nobody else's business. Written by root (an admin's
    # `sudo ftpserver adduser`), the file goes to its folder's owner, the server's user,
    # which must still read it on the next reload or start.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    with open(os.open(tmp, flags, 0o600), "w", encoding="utf-8") as file:
        folder = os.stat(path.parent)
        if os.geteuid() == 0 and folder.st_uid != 0:
            os.fchown(file.fileno(), folder.st_uid, folder.st_gid)
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    tmp.replace(path)
