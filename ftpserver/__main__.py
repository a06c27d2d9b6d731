"""The `ftpserver` command: serve a config, manage its users and bans.

ftpserver --config conf/server.yaml [--host H] [--port P]
ftpserver users list|add|del|passwd [NAME] --config conf/server.yaml
ftpserver adduser NAME --config conf/server.yaml [--password-stdin]   (add, or update)
ftpserver bans --config conf/server.yaml
ftpserver unban ADDRESS --config conf/server.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import getpass
import json
import logging
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ftpproto.units import endpoint, host_of, parse_size

from . import systemd
from .auth import hash_password
from .config import (
    PERMISSIONS,
    ConfigError,
    ServerConfig,
    load_config,
    parse_users,
    read_user_entries,
    save_users,
)
from .defender import Defender
from .logfmt import JsonFormatter
from .server import FileServer, version

__all__ = ["main"]

log = logging.getLogger("ftpserver")
M_ARENA_MAX = -8  # glibc's mallopt parameter number


def build_parser() -> argparse.ArgumentParser:
    config_help = "the server's YAML config (e.g. conf/server.yaml)"
    parser = argparse.ArgumentParser(
        prog="ftpserver",
        description="Serve files over the sockftp protocol.",
        epilog="Run `ftpserver users --help` to manage users.",
    )
    parser.add_argument("--config", metavar="FILE", help=config_help)
    parser.add_argument("--host", help="listen on this address instead of the config's")
    parser.add_argument("--port", type=int, help="listen on this port instead of the config's (0: any)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def user_command(
        group: argparse._SubParsersAction, name: str, help: str, example: str
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(
            name,
            help=help,
            description=f"{help[0].upper()}{help[1:]}.",
            epilog=f"example: {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=config_help)
        return sub

    def settings(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("name", metavar="NAME")
        sub.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        sub.add_argument("--home", help="home directory, relative to the storage root (default: NAME)")
        sub.add_argument("--permissions", choices=PERMISSIONS, help="r or rw (default: rw)")
        sub.add_argument("--quota", help="bytes the user may store, e.g. 10GB (default: no quota)")

    users = commands.add_parser(
        "users",
        help="list, add, remove users, or change a password",
        description="Manage the users file of the config. A running server takes changes on SIGHUP.",
    )
    actions = users.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = user_command(
        actions, "list", "list the users", "ftpserver users list --config conf/server.yaml"
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per user")
    settings(
        user_command(
            actions,
            "add",
            "add a user (refused if it exists)",
            "ftpserver users add alice --quota 10GB --config conf/server.yaml",
        )
    )
    user_command(
        actions,
        "del",
        "remove a user (its files stay)",
        "ftpserver users del alice --config conf/server.yaml",
    ).add_argument("name", metavar="NAME")
    passwd = user_command(
        actions,
        "passwd",
        "change a user's password",
        "echo 'new secret' | ftpserver users passwd alice --password-stdin --config conf/server.yaml",
    )
    passwd.add_argument("name", metavar="NAME")
    passwd.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    settings(
        user_command(
            commands,
            "adduser",
            "add a user, or change a user's password and settings",
            "ftpserver adduser alice --config conf/server.yaml",
        )
    )
    bans = commands.add_parser(
        "bans", help="list banned addresses", description="List the addresses the defender has banned."
    )
    bans.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=config_help)
    unban = commands.add_parser(
        "unban",
        help="lift a ban",
        description="Lift the defender's ban on an address (a running server obeys at once).",
    )
    unban.add_argument("address", metavar="ADDRESS")
    unban.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=config_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("--config FILE is required")
    try:
        if args.command == "adduser":
            return add_user(args)
        if args.command == "users":
            return USER_ACTIONS[args.action](args)
        if args.command in ("bans", "unban"):
            return manage_bans(args)
        return serve(args)
    except ConfigError as exc:
        print(f"ftpserver: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def limit_malloc_arenas(arenas: int = 4) -> None:
    """glibc gives threads malloc arenas of their own (up to 8 per core), each keeping
    the memory freed in it; a server of many short-lived session threads stays
    much smaller with a few. Measured here: 100 clients at once, 52 -> 29 MiB.
    Elsewhere (no glibc) this does nothing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas)


def raise_descriptor_limit() -> None:
    """Each session holds a few descriptors (socket, a directory or two, a file): take
    the hard limit's room rather than the soft 1024 a shell usually hands down."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def serve(args: argparse.Namespace) -> int:
    limit_malloc_arenas()
    raise_descriptor_limit()
    config = load_config(args.config)
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = host_of(args.host)
    if args.port is not None:
        overrides["port"] = args.port
    config = dataclasses.replace(config, **overrides)
    logging.basicConfig(
        level=(args.log_level or config.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.logProcesses = False  # no format shows the process id: not a getpid() per line
    if config.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    reload = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: reload.set())  # before the start: a HUP then waits for it
    try:
        server = FileServer(config)
    except OSError as exc:
        print(
            f"ftpserver: cannot listen on {endpoint(config.host, config.port)}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    log.info(
        "listening on %s, storage %s, tls %s",
        endpoint(*server.address),
        config.storage_root,
        "on" if config.tls else "off",
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    systemd.notify("READY=1", f"STATUS=listening on {endpoint(*server.address)}")
    while not stop.wait(0.25):
        if reload.is_set():  # SIGHUP: read the config and users again, keep serving
            reload.clear()
            systemd.reloading()
            server.reload(overrides)
            systemd.notify("READY=1")
    log.info("stopping: no new connections; running transfers get %gs", config.limits.shutdown_grace)
    systemd.notify("STOPPING=1")
    server.stop()
    log.info("stopped")
    return 0


def defender_of(config: ServerConfig) -> Defender:
    """The defender's ban list of a config, as a running server keeps it."""
    metadata = config.storage_root / ".sockftp"
    if not metadata.exists():
        metadata.mkdir(mode=0o700)
        owner = config.storage_root.stat()
        if os.geteuid() == 0 and owner.st_uid != 0:  # root's `bans` before the first start
            os.chown(metadata, owner.st_uid, owner.st_gid)
    return Defender(config.defender, Path(metadata, "bans.json"))


def manage_bans(args: argparse.Namespace) -> int:
    """`bans`: one line per active ban. `unban ADDRESS`: lift it; 1 if it was not banned."""
    defender = defender_of(load_config(args.config))
    if args.command == "unban":
        if not defender.unban(args.address):
            print(f"ftpserver: {args.address} is not banned", file=sys.stderr)
            return 1
        print(f"ftpserver: ban on {args.address} lifted", file=sys.stderr)
        return 0
    for ban in defender.bans():
        until = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ban.until))
        print(f"{ban.source}\tuntil {until}\t{ban.until - time.time():.0f}s left\toffence {ban.offences}")
    return 0


def add_user(args: argparse.Namespace, new_only: bool = False) -> int:
    """Add or update a user: check everything, then ask for the password, then write.
    With `new_only` (`users add`), an existing user is refused."""
    config = load_config(args.config)
    try:
        quota = parse_size(args.quota) if args.quota is not None else None
    except ValueError as exc:
        print(f"ftpserver: --quota: {exc}", file=sys.stderr)
        return 2
    entries = read_user_entries(config.users_file)
    if new_only and args.name in entries:
        print(
            f"ftpserver: user {args.name!r} exists already; `users passwd` changes its password",
            file=sys.stderr,
        )
        return 1
    entry = {"home": args.name, "permissions": "rw", **entries.get(args.name, {}), "password": "unset"}
    for key, value in (("home", args.home), ("permissions", args.permissions), ("quota", quota)):
        if value is not None:
            entry[key] = value
    entries[args.name] = entry
    parse_users({"users": entries}, config.users_file, config.storage_root)  # raises ConfigError
    password = read_password(args.password_stdin)
    if password is None:
        return 1
    entry["password"] = hash_password(password)
    save_users(config.users_file, entries)
    print(
        f"ftpserver: user {args.name!r} saved in {config.users_file}; "
        "a running server takes it on SIGHUP (kill -HUP PID)",
        file=sys.stderr,
    )
    return 0


def list_users(args: argparse.Namespace) -> int:
    """One line per user (never its password hash), or one JSON object with `--json`."""
    config = load_config(args.config)
    for name, account in sorted(config.users.items()):
        home = (
            str(account.home.relative_to(config.storage_root)) if account.home != config.storage_root else "/"
        )
        record = {
            "name": name,
            "permissions": account.permissions,
            "home": home,
            "quota": account.quota,
            "max_sessions": account.max_sessions,
        }
        if args.json:
            print(json.dumps(record, ensure_ascii=False))
        else:
            quota = "no quota" if account.quota is None else f"quota {account.quota} bytes"
            print(f"{name}\t{account.permissions}\thome {home}\t{quota}")
    return 0


def existing_user(args: argparse.Namespace) -> tuple[ServerConfig, dict[str, dict]] | None:
    """The config and the users file's entries, if `args.name` is one of them (else say so)."""
    config = load_config(args.config)
    entries = read_user_entries(config.users_file)
    if args.name not in entries:
        print(f"ftpserver: no user {args.name!r} in {config.users_file}", file=sys.stderr)
        return None
    return config, entries


def delete_user(args: argparse.Namespace) -> int:
    """Remove a user from the users file; its home and files stay where they are."""
    found = existing_user(args)
    if found is None:
        return 1
    config, entries = found
    home = config.users[args.name].home if args.name in config.users else None
    del entries[args.name]
    save_users(config.users_file, entries)
    kept = f"; its files stay in {home}" if home is not None else ""
    print(f"ftpserver: user {args.name!r} removed from {config.users_file}{kept}", file=sys.stderr)
    return 0


def change_password(args: argparse.Namespace) -> int:
    found = existing_user(args)
    if found is None:
        return 1
    config, entries = found
    password = read_password(args.password_stdin)
    if password is None:
        return 1
    entries[args.name]["password"] = hash_password(password)
    save_users(config.users_file, entries)
    print(
        f"ftpserver: password of {args.name!r} changed; a running server takes it on SIGHUP", file=sys.stderr
    )
    return 0


USER_ACTIONS = {
    "list": list_users,
    "add": lambda args: add_user(args, new_only=True),
    "del": delete_user,
    "passwd": change_password,
}


def read_password(from_stdin: bool) -> str | None:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            print("ftpserver: no terminal to ask for a password; use --password-stdin", file=sys.stderr)
            return None
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            print("ftpserver: the passwords differ; nothing changed", file=sys.stderr)
            return None
    if not password:
        print("ftpserver: empty password; nothing changed", file=sys.stderr)
        return None
    return password


if __name__ == "__main__":
    sys.exit(main())
