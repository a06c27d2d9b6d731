"""The `ftpclient` command line: argparse subcommands over `Client`.

Results go to stdout (one line each, or one JSON object per line with
`--json`); progress bars and errors go to stderr, errors as one line without
a traceback (`--debug` shows it). Exit status: 0 all went well, 1 something
failed, 2 the command line was wrong.
"""

from __future__ import annotations

import argparse
import enum
import getpass
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ftpproto import ProtocolError

from .client import Client, Entry, HandshakeError, Transfer
from .progress import progress_bar

__all__ = ["ExitStatus", "main"]

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 9999


class ExitStatus(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2


class UsageError(Exception):
    """A problem with what the user typed: exit status 2."""


class ConnectFailedError(Exception):
    """No connection could be made: nothing more can succeed in this run."""


# -- command line ----------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser, top: bool) -> None:
    """Connection and output options, accepted before or after the subcommand."""
    default = None if top else argparse.SUPPRESS
    flag = False if top else argparse.SUPPRESS
    group = parser.add_argument_group("connection and output")
    group.add_argument("--host", default=default, help=f"server address (env SOCKFTP_HOST; {DEFAULT_HOST})")
    group.add_argument(
        "--port", type=int, default=default, help=f"server port (env SOCKFTP_PORT; {DEFAULT_PORT})"
    )
    group.add_argument("--user", default=default, help="log in as USER (env SOCKFTP_USER); else anonymous")
    group.add_argument(
        "--tls", action="store_true", default=flag, help="connect with TLS (env SOCKFTP_TLS=1)"
    )
    group.add_argument("--cafile", default=default, help="trust this CA bundle for TLS (env SOCKFTP_CAFILE)")
    group.add_argument(
        "--timeout", type=float, default=30.0 if top else argparse.SUPPRESS, help="socket timeout"
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", default=flag, help="no progress bars or result lines"
    )
    group.add_argument(
        "--json", action="store_true", default=flag, help="results as one JSON object per line"
    )
    group.add_argument("--debug", action="store_true", default=flag, help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftpclient",
        description="Move files to and from a sockftp server, verified by MD5.",
        epilog="The password comes from SOCKFTP_PASSWORD, or is asked for on a terminal.",
    )
    _add_common(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        _add_common(sub, top=False)
        return sub

    get = command("get", "download files")
    get.add_argument("remote", nargs="+", metavar="REMOTE")
    get.add_argument("-o", "--output", metavar="LOCAL", help="file name, or directory for several files")
    put = command("put", "upload files")
    put.add_argument("local", nargs="+", metavar="LOCAL")
    put.add_argument("-d", "--dir", default="/", metavar="REMOTE_DIR", help="remote directory (default /)")
    put.add_argument("-p", "--parents", action="store_true", help="create missing remote directories")
    put.add_argument("-n", "--no-clobber", action="store_true", help="never replace a different remote file")
    ls = command("ls", "list a remote directory")
    ls.add_argument("path", nargs="?", default="/", metavar="PATH")
    ls.add_argument("-l", "--long", action="store_true", help="type, size and time of each entry")
    stat = command("stat", "show a remote file's size, time and md5")
    stat.add_argument("path", nargs="+", metavar="PATH")
    mkdir = command("mkdir", "create remote directories")
    mkdir.add_argument("path", nargs="+", metavar="PATH")
    mkdir.add_argument("-p", "--parents", action="store_true", help="create parents; no error if it exists")
    rm = command("rm", "remove remote files or empty directories")
    rm.add_argument("path", nargs="+", metavar="PATH")
    return parser


# -- connection ------------------------------------------------------------------


@dataclass
class Settings:
    host: str
    port: int
    user: str | None
    password: str | None
    timeout: float
    tls: bool = False
    cafile: str | None = None


def resolve_settings(args: argparse.Namespace, env: dict[str, str]) -> Settings:
    """Flags win over environment variables, which win over defaults."""
    port = args.port
    if port is None:
        raw = env.get("SOCKFTP_PORT", str(DEFAULT_PORT))
        if not raw.isdigit():
            raise UsageError(f"SOCKFTP_PORT must be a port number, not {raw!r}")
        port = int(raw)
    if not 0 < port < 65536:
        raise UsageError(f"port {port} is out of range")
    user = args.user or env.get("SOCKFTP_USER") or None
    password = env.get("SOCKFTP_PASSWORD")
    if user and password is None:
        if not sys.stdin.isatty():
            raise UsageError(f"no password for {user!r}: set SOCKFTP_PASSWORD or run on a terminal")
        password = getpass.getpass(f"Password for {user}: ")
    host = args.host or env.get("SOCKFTP_HOST") or DEFAULT_HOST
    cafile = args.cafile or env.get("SOCKFTP_CAFILE") or None
    tls = args.tls or env.get("SOCKFTP_TLS", "").lower() in ("1", "true", "yes") or cafile is not None
    return Settings(host, port, user, password, args.timeout, tls, cafile)


class Connection:
    """Opens the client on first use, and again after the link broke."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None or self._client.closed:
            s = self.settings
            try:
                self._client = Client(s.host, s.port, s.user, s.password, s.timeout, s.tls, s.cafile)
            except HandshakeError as exc:
                raise ConnectFailedError(str(exc)) from exc
            except OSError as exc:
                reason = exc.strerror or str(exc) or exc.__class__.__name__
                raise ConnectFailedError(f"cannot connect to {s.host}:{s.port}: {reason}") from exc
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# -- output ----------------------------------------------------------------------


class Output:
    def __init__(self, args: argparse.Namespace) -> None:
        self.json, self.quiet, self.debug = args.json, args.quiet, args.debug

    def result(self, text: str, record: dict) -> None:
        if self.json:
            print(json.dumps(record, ensure_ascii=False), flush=True)
        elif not self.quiet:
            print(text, flush=True)

    def listing(self, text: str, record: dict) -> None:
        """A line that is the answer itself (ls, stat): printed even with -q."""
        print(json.dumps(record, ensure_ascii=False) if self.json else text, flush=True)

    def error(self, what: str, exc: BaseException, record: dict | None = None) -> None:
        code = getattr(exc, "code", None) if isinstance(exc, ProtocolError) else None
        if isinstance(exc, ProtocolError):
            reason = f"{exc.code}: {exc.message}"
        elif isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        else:
            reason = str(exc) or exc.__class__.__name__
        print(f"ftpclient: {what}: {reason}", file=sys.stderr, flush=True)
        if self.json and record is not None:
            print(json.dumps({**record, "result": "failed", "error": code, "message": reason}), flush=True)


def _human_size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _transfer_record(op: str, transfer: Transfer) -> dict:
    return {
        "op": op,
        "remote": transfer.remote,
        "local": transfer.local,
        "size": transfer.size,
        "md5": transfer.md5,
        "sent": transfer.sent,
        "seconds": round(transfer.seconds, 6),
        "result": "skipped" if transfer.skipped else "ok",
    }


def _transfer_line(op: str, transfer: Transfer) -> str:
    arrow = (
        f"{transfer.remote} -> {transfer.local}" if op == "get" else f"{transfer.local} -> {transfer.remote}"
    )
    if transfer.skipped or (transfer.sent == 0 and transfer.size):
        return f"{op}: {arrow}: identical file already there, nothing sent"
    resumed = (
        f", resumed after {_human_size(transfer.size - transfer.sent)}"
        if transfer.sent < transfer.size
        else ""
    )
    return f"{op}: {arrow}: {_human_size(transfer.size)}, md5 {transfer.md5}{resumed}"


# -- commands --------------------------------------------------------------------


def each(items: list[str], conn: Connection, out: Output, op: str, run: Callable[[str], None]) -> bool:
    """Run `run` on every item, reporting each failure and carrying on; True if all succeeded."""
    ok = True
    for item in items:
        try:
            run(item)
        except ConnectFailedError:
            raise
        except (ProtocolError, OSError) as exc:
            ok = False
            if out.debug:
                raise
            out.error(f"{op} {item}", exc, {"op": op, "path": item})
    return ok


def cmd_get(args: argparse.Namespace, conn: Connection, out: Output) -> bool:
    target = Path(args.output) if args.output else None
    several = len(args.remote) > 1
    if several and target is not None and not target.is_dir():
        raise UsageError(f"-o {args.output}: with several files, -o must be an existing directory")

    def get(remote: str) -> None:
        name = PurePosixPath(remote).name
        if target is None or target.is_dir():
            if not name or name in (".", ".."):
                raise UsageError(f"get {remote}: not a file name; use -o to name the local file")
            local = (target or Path()) / name
        else:
            local = target
        bar = progress_bar(name, not out.quiet and not out.json)
        try:
            transfer = conn.client.get(remote, local, progress=bar)
        finally:
            bar.close()
        out.result(_transfer_line("get", transfer), _transfer_record("get", transfer))

    return each(args.remote, conn, out, "get", get)


def cmd_put(args: argparse.Namespace, conn: Connection, out: Output) -> bool:
    def put(local: str) -> None:
        path = Path(local)
        if path.is_dir():
            raise IsADirectoryError(21, "is a directory (directory trees come with a later release)")
        remote = str(PurePosixPath("/", args.dir.lstrip("/"), path.name))
        bar = progress_bar(path.name, not out.quiet and not out.json)
        try:
            transfer = conn.client.put(
                path, remote, overwrite=not args.no_clobber, parents=args.parents, progress=bar
            )
        finally:
            bar.close()
        out.result(_transfer_line("put", transfer), _transfer_record("put", transfer))

    return each(args.local, conn, out, "put", put)


def _entry_record(path: str, entry: Entry) -> dict:
    record = {"path": path, "name": entry.name, "type": entry.type, "size": entry.size, "mtime": entry.mtime}
    if entry.md5 is not None:
        record["md5"] = entry.md5
    return record


def _long_line(entry: Entry) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.mtime))
    size = "-" if entry.type == "dir" else str(entry.size)
    name = entry.name + ("/" if entry.type == "dir" else "")
    return f"{entry.type[0]} {size:>12}  {when}  {name}"


def cmd_ls(args: argparse.Namespace, conn: Connection, out: Output) -> bool:
    def ls(path: str) -> None:
        for entry in conn.client.ls(path):
            line = _long_line(entry) if args.long else entry.name + ("/" if entry.type == "dir" else "")
            out.listing(line, _entry_record(str(PurePosixPath("/", path.lstrip("/"), entry.name)), entry))

    return each([args.path], conn, out, "ls", ls)


def cmd_stat(args: argparse.Namespace, conn: Connection, out: Output) -> bool:
    def stat(path: str) -> None:
        entry = conn.client.stat(path)
        record = _entry_record(path, entry)
        when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(entry.mtime))
        lines = [f"{path}: {entry.type}, {entry.size} bytes, modified {when}"]
        if entry.md5:
            lines[0] += f", md5 {entry.md5}"
        out.listing("\n".join(lines), record)

    return each(args.path, conn, out, "stat", stat)


def cmd_mkdir(args: argparse.Namespace, conn: Connection, out: Output) -> bool:
    def mkdir(path: str) -> None:
        conn.client.mkdir(path, parents=args.parents)
        if out.json:
            out.result("", {"op": "mkdir", "path": path, "result": "ok"})

    return each(args.path, conn, out, "mkdir", mkdir)


def cmd_rm(args: argparse.Namespace, conn: Connection, out: Output) -> bool:
    def rm(path: str) -> None:
        conn.client.rm(path)
        if out.json:
            out.result("", {"op": "rm", "path": path, "result": "ok"})

    return each(args.path, conn, out, "rm", rm)


COMMANDS = {"get": cmd_get, "put": cmd_put, "ls": cmd_ls, "stat": cmd_stat, "mkdir": cmd_mkdir, "rm": cmd_rm}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    out = Output(args)
    try:
        conn = Connection(resolve_settings(args, dict(os.environ)))
        try:
            ok = COMMANDS[args.command](args, conn, out)
        finally:
            conn.close()
    except UsageError as exc:
        print(f"ftpclient: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    except (ConnectFailedError, ProtocolError, OSError) as exc:
        if out.debug:
            raise
        out.error(args.command, exc)
        return ExitStatus.FAILURE
    except KeyboardInterrupt:
        print("ftpclient: interrupted", file=sys.stderr)
        return 130
    return ExitStatus.OK if ok else ExitStatus.FAILURE
