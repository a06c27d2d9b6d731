"""The `ftpclient` command line: argparse subcommands over `Client` and `Batch`.

Results go to stdout (one line each, or one JSON object per line with
`--json`); progress bars and errors go to stderr, errors as one line without
a traceback (`--debug` shows it). Exit status: 0 all went well, 1 something
failed, 2 the command line was wrong. `main(argv, env)` reads and writes
nothing but `env` (an `Environment`: streams, terminals, variables), argparse's
help and usage errors included, so tests run the whole command in-process.
"""

from __future__ import annotations

import argparse
import enum
import glob
import json
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO, Any

from ftpproto.units import parse_size

from .batch import Batch, Filters, plan_get, plan_put
from .client import Client
from .connection import Connection
from .environment import Environment
from .errors import CLIENT_ERRORS, ConnectFailedError, UsageError
from .formatting import (
    Record,
    entry_record,
    error_record,
    long_line,
    outcome_line,
    outcome_record,
    reason,
    short_line,
    stat_line,
    summary_line,
    summary_record,
)
from .jobs import Job, Outcome
from .progress import batch_bar, progress_bar, write_line
from .settings import DEFAULT_HOST, DEFAULT_PORT, Settings, SettingsError, resolve_settings
from .shell import Shell

__all__ = ["ExitStatus", "main"]


class ExitStatus(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


# -- command line ----------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse writing its help and usage errors to `env`'s streams, not `sys`'s.

    It still ends with `SystemExit` (0 after --help, 2 after a usage error),
    which `main()` turns into its return value."""

    def __init__(self, *args: Any, env: Environment, **kwargs: Any) -> None:
        self.env = env
        super().__init__(*args, **kwargs)

    def _print_message(self, message: str, file: object = None) -> None:
        if message:
            (self.env.stdout if file is sys.stdout else self.env.stderr).write(message)


def _add_common(parser: argparse.ArgumentParser, top: bool) -> None:
    """Connection and output options, accepted before or after the subcommand."""
    default = None if top else argparse.SUPPRESS
    flag = False if top else argparse.SUPPRESS
    group = parser.add_argument_group("connection and output")
    add = group.add_argument
    add("--host", default=default, help=f"server address (env SOCKFTP_HOST; default {DEFAULT_HOST})")
    add("--port", type=int, default=default, help=f"server port (env SOCKFTP_PORT; default {DEFAULT_PORT})")
    add("--user", default=default, help="log in as USER (env SOCKFTP_USER); else anonymous")
    add("--password-file", metavar="FILE", default=default, help="read the password from FILE's first line")
    add("--tls", action="store_true", default=flag, help="connect with TLS (env SOCKFTP_TLS=1)")
    add("--cafile", default=default, help="trust this CA bundle for TLS (env SOCKFTP_CAFILE)")
    add("--profile", default=default, help="use this profile of the client config (env SOCKFTP_PROFILE)")
    add(
        "--config",
        metavar="FILE",
        default=default,
        help="client config file (default ~/.config/sockftp/client.yaml)",
    )
    add("--timeout", type=_seconds, default=default, help="socket timeout in seconds (default 30)")
    add("-q", "--quiet", action="store_true", default=flag, help="no progress bars, no result lines")
    add("--json", action="store_true", default=flag, help="results as one JSON object per line")
    add("--debug", action="store_true", default=flag, help="show tracebacks")


def _add_transfer_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("batches")
    add = group.add_argument
    add("-r", "--recursive", action="store_true", help="transfer directory trees")
    add("--from-file", metavar="LIST", help="also transfer the paths in LIST, one a line (- for stdin)")
    add(
        "-j", "--jobs", type=_positive, default=4, metavar="N", help="transfer over N connections (default 4)"
    )
    add(
        "--include", action="append", default=[], metavar="GLOB", help="only files matching GLOB (repeatable)"
    )
    add(
        "--exclude", action="append", default=[], metavar="GLOB", help="skip files matching GLOB (repeatable)"
    )
    add("-n", "--no-clobber", action="store_true", help="never replace a different existing file")
    add("--dry-run", action="store_true", help="say what would be transferred; transfer nothing")
    add(
        "--limit-rate",
        type=_rate,
        metavar="RATE",
        help="bytes per second for the whole batch (e.g. 500k, 2MB)",
    )
    add("--retries", type=_count, default=0, metavar="N", help="retry a dropped transfer N times, resuming")
    add("--fail-fast", action="store_true", help="stop at the first failure")


def _positive(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def _rate(text: str) -> int:
    try:
        rate = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if rate < 1:
        raise argparse.ArgumentTypeError("must be at least 1 byte per second")
    return rate


def build_parser(env: Environment) -> Parser:
    parser = Parser(
        env=env,
        prog="ftpclient",
        allow_abbrev=False,  # else `--password x` would quietly mean `--password-file x`
        description="Move files to and from a sockftp server, verified by MD5.",
        epilog="Settings come from flags, then SOCKFTP_* variables, then the profile. "
        "The password comes from SOCKFTP_PASSWORD, --password-file, the profile, or a prompt.",
    )
    _add_common(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, env=env, help=help, description=help, allow_abbrev=False)
        _add_common(sub, top=False)
        return sub

    get = command("get", "download files or trees")
    get.add_argument("remote", nargs="*", metavar="REMOTE", help="remote paths; globs in the last name")
    get.add_argument("-o", "--output", metavar="LOCAL", help="file name, or directory for several files")
    _add_transfer_options(get)
    put = command("put", "upload files or trees")
    put.add_argument("local", nargs="*", metavar="LOCAL", help="local files, directories (-r) or globs")
    put.add_argument("-d", "--dir", default="/", metavar="REMOTE_DIR", help="remote directory (default /)")
    put.add_argument("-p", "--parents", action="store_true", help="create missing remote directories")
    _add_transfer_options(put)
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
    command("shell", "an interactive session: cd, ls, get, put, ... over one connection")
    return parser


# -- connection ------------------------------------------------------------------


def settings_from(args: argparse.Namespace, env: Environment) -> Settings:
    try:
        return resolve_settings(
            env.environ,
            host=args.host,
            port=args.port,
            user=args.user,
            tls=args.tls,
            cafile=args.cafile,
            timeout=args.timeout,
            password_file=args.password_file,
            profile=args.profile,
            config=args.config,
            config_dir=env.config_dir,
            interactive=env.stdin_isatty,
            ask_password=env.ask_password,
        )
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


def connector(settings: Settings) -> Callable[[], Client]:
    s = settings

    def connect() -> Client:
        return Client(s.host, s.port, s.user, s.password, s.timeout, s.tls, s.cafile)

    return connect


# -- output ----------------------------------------------------------------------


class Output:
    """Where a run's results and errors go: lines or JSON on env's stdout, errors
    on its stderr, progress bars there too when it is a terminal."""

    def __init__(self, args: argparse.Namespace, env: Environment) -> None:
        self.json, self.quiet, self.debug = args.json, args.quiet, args.debug
        self.stdout, self.stderr = env.stdout, env.stderr
        self.bars = not self.quiet and not self.json and env.stderr_isatty

    def result(self, text: str, record: Record) -> None:
        if self.json:
            print(json.dumps(record, ensure_ascii=False), file=self.stdout, flush=True)
        elif not self.quiet and text:
            write_line(text, self.stdout)  # clears any progress bar first, so the two do not mix

    def listing(self, text: str, record: Record) -> None:
        """A line that is the answer itself (ls, stat): printed even with -q."""
        print(json.dumps(record, ensure_ascii=False) if self.json else text, file=self.stdout, flush=True)

    def error(self, what: str, exc: BaseException, record: Record | None = None) -> None:
        print(f"ftpclient: {what}: {reason(exc)}", file=self.stderr, flush=True)
        if self.json and record is not None:
            print(json.dumps(error_record(record, exc)), file=self.stdout, flush=True)

    def usage(self, exc: UsageError) -> None:
        print(f"ftpclient: {exc}", file=self.stderr, flush=True)


# -- commands --------------------------------------------------------------------


def each(items: list[str], out: Output, op: str, run: Callable[[str], None]) -> bool:
    """Run `run` on every item, reporting each failure and carrying on; True if all succeeded."""
    ok = True
    for item in items:
        try:
            run(item)
        except ConnectFailedError:
            raise
        except CLIENT_ERRORS as exc:
            ok = False
            if out.debug:
                raise
            out.error(f"{op} {item}", exc, {"op": op, "path": item})
    return ok


def read_list(name: str | None, stdin: IO[str]) -> list[str]:
    """The paths in a --from-file list: one a line, blank lines skipped; `-` is stdin."""
    if name is None:
        return []
    try:
        text = stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--from-file {name}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--from-file {name}: not UTF-8 text") from None
    return [line.rstrip("\r\n") for line in text.splitlines() if line.strip()]


def run_batch(
    args: argparse.Namespace,
    conn: Connection,
    out: Output,
    jobs: list[Job],
    failed: list[Outcome],
    batch_call: bool,
) -> bool:
    """Run planned jobs, report each outcome and (for more than one file) a summary."""

    def report_failure(outcome: Outcome) -> None:
        job = outcome.job
        assert outcome.error is not None, "a failed outcome carries its error"
        out.error(
            f"{job.op} {job.remote if job.op == 'get' else job.local}", outcome.error, outcome_record(outcome)
        )

    for outcome in failed:
        report_failure(outcome)
    single = len(jobs) == 1 and not failed and jobs[0].op in ("get", "put")
    files = [job for job in jobs if job.op in ("get", "put")]
    total = sum(job.size or 0 for job in files)
    overall = batch_bar(len(files), total, out.stderr, out.bars and not single)
    file_bar = progress_bar(PurePosixPath(jobs[0].remote).name, out.stderr, out.bars) if single else None

    def progress(job: Job, done: int, total: int) -> None:
        overall.progress(job, done, total)
        if file_bar is not None:
            file_bar(done, total)

    def report(outcome: Outcome) -> None:
        overall.finished(outcome.job, outcome.job.size)
        if outcome.result == "failed":
            report_failure(outcome)
        elif not outcome.job.op.startswith("mkdir") or out.json or args.dry_run:
            out.result(outcome_line(outcome), outcome_record(outcome))

    batch = Batch(
        conn.connect,
        workers=args.jobs,
        retries=args.retries,
        fail_fast=args.fail_fast,
        no_clobber=args.no_clobber,
        dry_run=args.dry_run,
        limit_rate=args.limit_rate,
        parents=getattr(args, "parents", True) or args.recursive,
        on_progress=progress,
        on_outcome=report,
    )
    if failed and args.fail_fast:
        jobs = []  # --fail-fast: a path that could not even be planned stops the batch
    try:
        summary = batch.run(jobs, first_client=conn.client if jobs else None)
    finally:
        overall.close()
        if file_bar is not None:
            file_bar.close()
    summary.failed += len(failed)
    if batch_call:
        out.result(summary_line(summary, args.dry_run), summary_record(summary, args.dry_run))
    return summary.failed == 0


def is_batch(args: argparse.Namespace, paths: list[str]) -> bool:
    """Whether the call may name more than one file: then it ends with a summary line.
    A plain `get f` or `put f` does not; trees, lists, globs and dry runs do."""
    return (
        len(paths) > 1
        or args.recursive
        or bool(args.from_file)
        or args.dry_run
        or any(map(glob.has_magic, paths))
    )


def cmd_get(args: argparse.Namespace, conn: Connection, out: Output, env: Environment) -> bool:
    remotes = args.remote + read_list(args.from_file, env.stdin)
    if not remotes:
        raise UsageError("get: name at least one REMOTE path (or --from-file)")
    target = Path(args.output) if args.output else None
    if len(remotes) > 1 and target is not None and not target.is_dir():
        raise UsageError(f"-o {args.output}: with several files, -o must be an existing directory")
    for remote in remotes:
        if PurePosixPath(remote).name in ("", ".", "..") and not args.recursive:
            raise UsageError(f"get {remote}: not a file name; name a file, or use -r for a directory")
    filters = Filters(tuple(args.include), tuple(args.exclude))
    jobs, failed = plan_get(conn.client, remotes, target, args.recursive, filters)
    return run_batch(args, conn, out, jobs, failed, is_batch(args, remotes))


def cmd_put(args: argparse.Namespace, conn: Connection, out: Output, env: Environment) -> bool:
    sources = args.local + read_list(args.from_file, env.stdin)
    if not sources:
        raise UsageError("put: name at least one LOCAL path (or --from-file)")
    filters = Filters(tuple(args.include), tuple(args.exclude))
    jobs, failed = plan_put(sources, args.dir, args.recursive, filters)
    return run_batch(args, conn, out, jobs, failed, is_batch(args, sources))


def cmd_ls(args: argparse.Namespace, conn: Connection, out: Output, env: Environment) -> bool:
    def ls(path: str) -> None:
        for entry in conn.client.ls(path):
            line = long_line(entry) if args.long else short_line(entry)
            out.listing(line, entry_record(str(PurePosixPath("/", path.lstrip("/"), entry.name)), entry))

    return each([args.path], out, "ls", ls)


def cmd_stat(args: argparse.Namespace, conn: Connection, out: Output, env: Environment) -> bool:
    def stat(path: str) -> None:
        entry = conn.client.stat(path)
        out.listing(stat_line(path, entry), entry_record(path, entry))

    return each(args.path, out, "stat", stat)


def cmd_mkdir(args: argparse.Namespace, conn: Connection, out: Output, env: Environment) -> bool:
    def mkdir(path: str) -> None:
        conn.client.mkdir(path, parents=args.parents)
        if out.json:
            out.result("", {"op": "mkdir", "path": path, "result": "ok"})

    return each(args.path, out, "mkdir", mkdir)


def cmd_rm(args: argparse.Namespace, conn: Connection, out: Output, env: Environment) -> bool:
    def rm(path: str) -> None:
        conn.client.rm(path)
        if out.json:
            out.result("", {"op": "rm", "path": path, "result": "ok"})

    return each(args.path, out, "rm", rm)


def cmd_shell(args: argparse.Namespace, conn: Connection, out: Output, env: Environment) -> bool:
    return Shell(conn.client, env).run()


Command = Callable[[argparse.Namespace, Connection, Output, Environment], bool]

COMMANDS: dict[str, Command] = {
    "get": cmd_get,
    "put": cmd_put,
    "ls": cmd_ls,
    "stat": cmd_stat,
    "mkdir": cmd_mkdir,
    "rm": cmd_rm,
    "shell": cmd_shell,
}


def main(argv: list[str] | None = None, env: Environment | None = None) -> int:
    """Run the command line on `argv` (default `sys.argv[1:]`) in `env` (default
    this process); returns the exit status."""
    env = Environment() if env is None else env
    try:
        args = build_parser(env).parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already written to env
        return exc.code if isinstance(exc.code, int) else ExitStatus.USAGE
    out = Output(args, env)
    try:
        settings = settings_from(args, env)
        conn = Connection(
            connector(settings),
            retries=getattr(args, "retries", 0),
            address=f"{settings.host}:{settings.port}",
        )
        try:
            ok = COMMANDS[args.command](args, conn, out, env)
        finally:
            conn.close()
    except UsageError as exc:
        out.usage(exc)
        return ExitStatus.USAGE
    except CLIENT_ERRORS as exc:
        if out.debug:
            raise
        out.error(args.command, exc, {"op": args.command})
        return ExitStatus.FAILURE
    except KeyboardInterrupt:
        print("ftpclient: interrupted", file=env.stderr, flush=True)
        return ExitStatus.INTERRUPTED
    return ExitStatus.OK if ok else ExitStatus.FAILURE
