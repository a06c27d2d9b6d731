"""The `ftpclient` command line: argparse subcommands over `Client` and `Batch`.

Results go to stdout (one line each, or one JSON object per line with
`--json`); progress bars and errors go to stderr, errors as one line without
a traceback (`--debug` shows it). Exit status: 0 all went well, 1 something
failed, 2 the command line was wrong, 130 interrupted, 141 stdout was closed
by its reader (`ftpclient ls | head -1`), as for a process ended by SIGPIPE.
Options may stand anywhere on the line, before or after the command.
`main(argv, env)` reads and writes nothing but `env` (an `Environment`:
streams, terminals, variables), argparse's help and usage errors included, so
tests run the whole command in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import glob
import json
import os
import posixpath
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO

from ftpproto import ExistsError, NotEmptyError, NotFoundError, ProtocolError
from ftpproto.units import endpoint, parse_size

from .batch import (
    LINK_POLICIES,
    Batch,
    Filters,
    is_remote_dir,
    names_directory,
    plan_get,
    plan_put,
    remote_join,
    walk_remote,
)
from .client import Client
from .connection import Connection
from .environment import Environment
from .errors import CLIENT_ERRORS, ConnectFailedError, OutputClosedError, UsageError
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
    usage_lines,
    usage_record,
)
from .jobs import Job, Outcome, Summary
from .progress import batch_bar, progress_bar, write_line
from .settings import DEFAULT_HOST, DEFAULT_PORT, Settings, SettingsError, resolve_settings
from .sync import Side, delete, plan_sync

__all__ = ["ExitStatus", "main", "version"]

SPOOL_CHUNK = 1024 * 1024  # `put -` copies stdin to its spool file this much at a time


class ExitStatus(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
    CLOSED_PIPE = 141  # stdout's reader went away, as shells report SIGPIPE


def version() -> str:
    """The installed sockftp version."""
    from importlib import metadata  # here: only --version needs it, and it is slow to import

    try:
        return metadata.version("sockftp")
    except metadata.PackageNotFoundError:
        return "unknown"


# -- command line ----------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse writing its help and usage errors to `env`'s streams, not `sys`'s.

    It still ends with `SystemExit` (0 after --help, 2 after a usage error),
    which `main()` turns into its return value. `subcommands` maps each command
    to its parser."""

    def __init__(self, *args: Any, env: Environment, **kwargs: Any) -> None:
        self.env = env
        self.subcommands: dict[str, Parser] = {}
        super().__init__(*args, **kwargs)

    def _print_message(self, message: str, file: object = None) -> None:
        if message:
            (self.env.stdout if file is sys.stdout else self.env.stderr).write(message)


def _add_common(parser: argparse.ArgumentParser) -> None:
    """Connection and output options, accepted before or after the subcommand."""
    group = parser.add_argument_group("connection and output")
    add = group.add_argument
    add("--host", help=f"server address (env SOCKFTP_HOST; default {DEFAULT_HOST})")
    add("--port", type=int, help=f"server port (env SOCKFTP_PORT; default {DEFAULT_PORT})")
    add("--user", help="log in as USER (env SOCKFTP_USER); else anonymous")
    add("--password-file", metavar="FILE", help="read the password from FILE's first line")
    add("--tls", action="store_true", help="connect with TLS (env SOCKFTP_TLS=1)")
    add("--cafile", help="trust this CA bundle for TLS (env SOCKFTP_CAFILE)")
    add("--profile", help="use this profile of the client config (env SOCKFTP_PROFILE)")
    add("--config", metavar="FILE", help="client config file (default ~/.config/sockftp/client.yaml)")
    add("--timeout", type=_seconds, help="socket timeout in seconds (default 30)")
    add("-q", "--quiet", action="store_true", help="no progress bars, no result lines")
    add("--json", action="store_true", help="results as one JSON object per line")
    add("--debug", action="store_true", help="show tracebacks")
    add("--version", action="version", version=f"ftpclient (sockftp) {version()}")


def _add_batch_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("batches")
    add = group.add_argument
    add(
        "-j", "--jobs", type=_positive, default=4, metavar="N", help="transfer over N connections (default 4)"
    )
    add(
        "--include", action="append", default=[], metavar="GLOB", help="only files matching GLOB (repeatable)"
    )
    add(
        "--exclude", action="append", default=[], metavar="GLOB", help="skip files matching GLOB (repeatable)"
    )
    add("--dry-run", action="store_true", help="say what would be done; change nothing")
    add(
        "--limit-rate",
        type=_rate,
        metavar="RATE",
        help="bytes per second for the whole batch (e.g. 500k, 2MB)",
    )
    add("--retries", type=_count, default=0, metavar="N", help="retry a dropped transfer N times, resuming")
    add("--fail-fast", action="store_true", help="stop at the first failure")
    return group


def _add_transfer_options(parser: argparse.ArgumentParser) -> None:
    add = _add_batch_options(parser).add_argument
    add("-r", "--recursive", action="store_true", help="transfer directory trees")
    add("--from-file", metavar="LIST", help="also transfer the paths in LIST, one a line (- for stdin)")
    add("-n", "--no-clobber", action="store_true", help="never replace a different existing file")
    add(
        "-p",
        "--preserve",
        action="store_true",
        help="keep modification times and execute bits (a server without them: a warning, then without)",
    )


def _add_links(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--links",
        choices=LINK_POLICIES,
        help="symlinks met in a tree: skip them all, or follow them all "
        "(default: follow those that point into the tree, skip the others and say so)",
    )


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


EXAMPLES = {
    "get": """examples:
  ftpclient get /reports/q3.pdf                    into the current directory
  ftpclient get /reports/q3.pdf ~/Downloads/       into a local directory (scp style)
  ftpclient get :/reports/q3.pdf q3-final.pdf      under another name (scp style)
  ftpclient get /reports/q3.pdf -o q3-final.pdf    the same with -o
  ftpclient get -r /photos -o backup/ -j 8 -p      a tree, keeping modification times
  ftpclient get /logs/today.log -o - | grep ERROR  to stdout""",
    "put": """examples:
  ftpclient put report.pdf                         into the home (/)
  ftpclient put report.pdf /reports/               into a remote directory (scp style)
  ftpclient put report.pdf :/reports/q3.pdf        under another name (scp style)
  ftpclient put *.pdf -d /reports --parents        several files; create /reports if missing
  ftpclient put -r site -d /www -p --retries 3     a tree, keeping modification times
  tar cz src | ftpclient put - /backup/src.tgz     stdin, spooled to a temporary file first""",
    "ls": """examples:
  ftpclient ls                  the home
  ftpclient ls -lh /reports     type, size in KiB/MiB/..., time
  ftpclient ls -R /photos       everything below /photos, one path a line""",
    "stat": """example:
  ftpclient stat /reports/q3.pdf""",
    "mkdir": """example:
  ftpclient mkdir -p /reports/2026/q1""",
    "rm": """examples:
  ftpclient rm /reports/old.pdf
  ftpclient rm -r /reports/2019     a directory and everything in it""",
    "mv": """examples:
  ftpclient mv /draft.txt /final.txt          rename (refused if /final.txt exists)
  ftpclient mv -f /draft.txt /final.txt       replace /final.txt
  ftpclient mv /a.pdf /b.pdf /archive/        move into a directory""",
    "df": """example:
  ftpclient df -h     used, quota, free of it, and what the server's disk can still take""",
    "cat": """example:
  ftpclient cat /logs/today.log | grep ERROR""",
    "sync": """examples:
  ftpclient sync site :/www                   upload what changed in ./site to /www
  ftpclient sync :/www site --dry-run         what a download would change, changing nothing
  ftpclient sync site :/www --delete          also remove from /www what ./site no longer has
  ftpclient sync site :/www --checksum        compare by MD5 rather than size and time""",
    "shell": """example:
  ftpclient shell      then: cd, ls, get, put, mget '*.pdf', lcd /tmp, mv a b, help""",
}


def build_parser(env: Environment) -> Parser:
    parser = Parser(
        env=env,
        prog="ftpclient",
        allow_abbrev=False,  # else `--password x` would quietly mean `--password-file x`
        description="Move files to and from a sockftp server, verified by MD5.",
        epilog="Settings come from flags, then SOCKFTP_* variables, then the profile. "
        "The password comes from SOCKFTP_PASSWORD, --password-file, the profile, or a prompt. "
        "Options may come before or after the command.",
    )
    _add_common(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, human: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            env=env,
            help=help,
            description=help,
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
            add_help=not human,  # -h is --human-readable there, as in ls and df
        )
        if human:
            sub.add_argument("--help", action="help", help="show this help message and exit")
            sub.add_argument(
                "-h", "--human-readable", dest="human", action="store_true", help="sizes in KiB, MiB, ..."
            )
        _add_common(sub)
        parser.subcommands[name] = sub
        return sub

    get = command("get", "download files or trees")
    get.add_argument("remote", nargs="*", metavar="REMOTE", help="remote paths; globs in the last name")
    get.add_argument(
        "-o",
        "--output",
        metavar="LOCAL",
        help="file name, or directory (ends with /, or exists); - is stdout",
    )
    _add_transfer_options(get)
    put = command("put", "upload files or trees")
    put.add_argument(
        "local", nargs="*", metavar="LOCAL", help="local files, directories (-r), globs; - is stdin"
    )
    put.add_argument("-d", "--dir", metavar="REMOTE_DIR", help="remote directory (default /)")
    put.add_argument("--parents", action="store_true", help="create missing remote directories")
    _add_links(put)
    _add_transfer_options(put)
    ls = command("ls", "list a remote directory", human=True)
    ls.add_argument("path", nargs="?", default="/", metavar="PATH")
    ls.add_argument("-l", "--long", action="store_true", help="type, size and time of each entry")
    ls.add_argument("-R", "--recursive", action="store_true", help="everything below PATH, one path a line")
    stat = command("stat", "show a remote file's size, time and md5")
    stat.add_argument("path", nargs="+", metavar="PATH")
    mkdir = command("mkdir", "create remote directories")
    mkdir.add_argument("path", nargs="+", metavar="PATH")
    mkdir.add_argument("-p", "--parents", action="store_true", help="create parents; no error if it exists")
    rm = command("rm", "remove remote files or directories")
    rm.add_argument("path", nargs="+", metavar="PATH")
    rm.add_argument("-r", "--recursive", action="store_true", help="remove directories and all they hold")
    mv = command("mv", "rename or move remote files and directories")
    mv.add_argument("path", nargs="+", metavar="PATH", help="SOURCE... DEST")
    mv.add_argument("-f", "--force", action="store_true", help="replace an existing DEST file")
    command("df", "show the space used, the quota and what is free", human=True)
    cat = command("cat", "write remote files to stdout")
    cat.add_argument("remote", nargs="+", metavar="REMOTE")
    sync = command("sync", "make a directory on one side hold what one on the other side holds")
    sync.add_argument("source", metavar="SRC", help="the directory to copy from (:PATH on the server)")
    sync.add_argument("dest", metavar="DST", help="the directory to bring up to date (:PATH on the server)")
    sync.add_argument("--delete", action="store_true", help="remove from DST what SRC does not have")
    sync.add_argument("--checksum", action="store_true", help="compare by MD5, not by size and time")
    _add_links(sync)
    _add_batch_options(sync)
    command("shell", "an interactive session: cd, ls, get, put, ... over one connection")
    return parser


def split_command(parser: Parser, argv: list[str]) -> tuple[str | None, list[str]]:
    """The command named in `argv`, and the other words with it taken out, so that
    options before it (`ftpclient --retries 2 put x`) are parsed by its parser. An
    option's value is never taken for the command: every parser's options are known."""
    takes_value = {
        option: action.nargs != 0
        for each in (parser, *parser.subcommands.values())
        for action in each._actions
        for option in action.option_strings
    }
    skip = False
    for index, word in enumerate(argv):
        if skip:
            skip = False
        elif word == "--":
            break
        elif word.startswith("-") and word != "-":
            skip = "=" not in word and takes_value.get(word, False)
        elif word in parser.subcommands:
            return word, argv[:index] + argv[index + 1 :]
        else:
            break
    return None, argv


def parse(parser: Parser, argv: list[str]) -> argparse.Namespace:
    command, rest = split_command(parser, argv)
    if command is None:  # --help, --version, or a usage error
        return parser.parse_args(argv)
    args = parser.subcommands[command].parse_intermixed_args(rest)
    args.command = command
    return args


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
    on its stderr, progress bars there too when it is a terminal. A stdout whose
    reader went away raises `OutputClosedError`."""

    def __init__(self, args: argparse.Namespace, env: Environment) -> None:
        self.json, self.quiet, self.debug = args.json, args.quiet, args.debug
        self.stdout, self.stderr = env.stdout, env.stderr
        self.bars = not self.quiet and not self.json and env.stderr_isatty

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except BrokenPipeError:
            raise OutputClosedError("stdout was closed") from None

    def result(self, text: str, record: Record) -> None:
        with self._writing():
            if self.json:
                print(json.dumps(record, ensure_ascii=False), file=self.stdout, flush=True)
            elif not self.quiet and text:
                self._line(text, self.stdout)

    def listing(self, text: str, record: Record) -> None:
        """A line that is the answer itself (ls, stat): printed even with -q."""
        with self._writing():
            line = json.dumps(record, ensure_ascii=False) if self.json else text
            print(line, file=self.stdout, flush=True)

    def error(self, what: str, exc: BaseException, record: Record | None = None) -> None:
        self.note(f"ftpclient: {what}: {reason(exc)}")
        if self.json and record is not None:
            with self._writing():
                print(json.dumps(error_record(record, exc)), file=self.stdout, flush=True)

    def warning(self, text: str) -> None:
        self.note(f"ftpclient: warning: {text}")

    def usage(self, exc: UsageError) -> None:
        self.note(f"ftpclient: {exc}")

    def note(self, line: str) -> None:
        """A line on stderr: above the progress bars when there are any, never inside one."""
        with contextlib.suppress(OSError):  # a closed stderr: nowhere left to say it
            self._line(line, self.stderr)

    def _line(self, text: str, stream: TextIO) -> None:
        """Print a line; with bars on the terminal, cleared first and redrawn after it."""
        if self.bars:
            write_line(text, stream)
        else:
            print(text, file=stream, flush=True)


class _PipeWriter:
    """A binary stdout whose closing by its reader raises `OutputClosedError`."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out

    def write(self, data: bytes | memoryview) -> int:
        try:
            return self.out.write(data)
        except BrokenPipeError:
            raise OutputClosedError("stdout was closed") from None

    def flush(self) -> None:
        try:
            self.out.flush()
        except BrokenPipeError:
            raise OutputClosedError("stdout was closed") from None


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


def offered(conn: Connection, out: Output, feature: str, instead: str) -> bool:
    """Whether the server offers `feature`; if not, one warning line says what happens `instead`."""
    if feature in conn.client.features:
        return True
    out.warning(f"the server does not offer {feature!r} (plain protocol v1): {instead}")
    return False


def run_jobs(
    args: argparse.Namespace,
    conn: Connection,
    out: Output,
    jobs: list[Job],
    failed: list[Outcome],
    preserve: bool = False,
    shown: Callable[[Outcome], Outcome] = lambda outcome: outcome,
) -> Summary:
    """Run planned jobs and report each outcome (`shown` as the user should read it)."""

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
    file_bar = progress_bar(posixpath.basename(jobs[0].remote), out.stderr, out.bars) if single else None

    def progress(job: Job, done: int, total: int) -> None:
        overall.progress(job, done, total)
        if file_bar is not None:
            file_bar(done, total)

    def report(outcome: Outcome) -> None:
        overall.finished(outcome.job, outcome.job.size, failed=outcome.result == "failed")
        outcome = shown(outcome)
        if outcome.result == "failed":
            report_failure(outcome)
        elif not outcome.job.op.startswith("mkdir") or out.json or args.dry_run:
            out.result(outcome_line(outcome), outcome_record(outcome))

    batch = Batch(
        conn.connect,
        workers=args.jobs,
        retries=args.retries,
        fail_fast=args.fail_fast,
        no_clobber=getattr(args, "no_clobber", False),
        dry_run=args.dry_run,
        limit_rate=args.limit_rate,
        parents=getattr(args, "parents", True) or getattr(args, "recursive", True),
        preserve=preserve,
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
    return summary


def run_batch(
    args: argparse.Namespace,
    conn: Connection,
    out: Output,
    jobs: list[Job],
    failed: list[Outcome],
    batch_call: bool,
    preserve: bool = False,
    shown: Callable[[Outcome], Outcome] = lambda outcome: outcome,
) -> bool:
    """Run planned jobs, report each outcome and (for more than one file) a summary."""
    summary = run_jobs(args, conn, out, jobs, failed, preserve, shown)
    if batch_call:
        out.result(summary_line(summary, args.dry_run, args.command), summary_record(summary, args.dry_run))
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


def unmark(path: str) -> str:
    """A path without the `:` that marks it as remote (`:/reports` is `/reports`)."""
    return path[1:] if path.startswith(":") else path


def preserving(args: argparse.Namespace, conn: Connection, out: Output) -> bool:
    """-p, if the server can keep times and modes; else a warning, and a transfer without."""
    return args.preserve and offered(conn, out, "attributes", "-p is ignored; times and modes are not kept")


def cmd_get(args: argparse.Namespace, conn: Connection, out: Output, env: Environment) -> bool:
    remotes, output, ambiguous = list(args.remote), args.output, None
    if output is None and len(remotes) == 2 and not args.from_file:
        # scp style: `get REMOTE DEST` when DEST is clearly local: a directory here, a
        # path ending in /, or the other side of a `:`-marked remote path.
        last = remotes[-1]
        if not last.startswith(":") and (remotes[0].startswith(":") or names_directory(last)):
            output, remotes = last, remotes[:1]
        elif not last.startswith(":"):
            ambiguous = last
    remotes = [unmark(remote) for remote in remotes + read_list(args.from_file, env.stdin)]
    if not remotes:
        raise UsageError("get: name at least one REMOTE path (or --from-file)")
    if output == "-":
        if args.recursive:
            raise UsageError("get -o -: stdout takes files, not trees (-r)")
        return stream_out(remotes, conn, out, env, "get")
    if len(remotes) > 1 and output is not None and not names_directory(output):
        raise UsageError(
            f"-o {output}: with several files, -o must be a directory (an existing one, or end it with /)"
        )
    for remote in remotes:
        if posixpath.basename(remote) in ("", ".", "..") and not args.recursive:
            raise UsageError(f"get {remote}: not a file name; name a file, or use -r for a directory")
    filters = Filters(tuple(args.include), tuple(args.exclude))
    preserve = preserving(args, conn, out)
    jobs, failed = plan_get(conn.client, remotes, output, args.recursive, filters)
    if ambiguous is not None and any(
        isinstance(o.error, NotFoundError) and o.job.remote == ambiguous for o in failed
    ):
        raise UsageError(
            f"get: {ambiguous} is not on the server; to download into it, use -o {ambiguous} "
            f"(or end a directory with /, or mark the remote path with ':')"
        )
    return run_batch(args, conn, out, jobs, failed, is_batch(args, remotes), preserve)


def stream_out(remotes: list[str], conn: Connection, out: Output, env: Environment, op: str) -> bool:
    """`cat` and `get -o -`: each remote file to stdout, in turn, verified as it goes."""
    sink = _PipeWriter(env.stdout_bytes())
    return each(remotes, out, op, lambda remote: conn.client.get_stream(remote, sink))  # type: ignore[arg-type]


def cmd_cat(args: argparse.Namespace, conn: Connection, out: Output, env: Environment) -> bool:
    return stream_out([unmark(remote) for remote in args.remote], conn, out, env, "cat")


def cmd_put(args: argparse.Namespace, conn: Connection, out: Output, env: Environment) -> bool:
    sources, remote_dir, remote_name = list(args.local), args.dir, None
    if "-" in sources:
        return put_stdin(args, conn, out, env)
    if remote_dir is None and len(sources) == 2 and not args.from_file:
        # scp style: `put LOCAL DEST` when DEST is clearly remote: `:`-marked, or ending
        # in / and no local path.
        last = sources[-1]
        if last.startswith(":") or (last.endswith("/") and not os.path.lexists(last)):
            sources = sources[:1]
            remote_dir, remote_name = remote_destination(conn.client, unmark(last), sources[0])
        elif not os.path.lexists(last) and not glob.has_magic(last):
            raise UsageError(
                f"put: no local file {last}; to upload into the remote directory {last}, "
                f"use -d {last} (or write it :{last})"
            )
    sources += read_list(args.from_file, env.stdin)
    if not sources:
        raise UsageError("put: name at least one LOCAL path (or --from-file)")
    filters = Filters(tuple(args.include), tuple(args.exclude))
    jobs, failed = plan_put(sources, remote_dir or "/", args.recursive, filters, args.links)
    if remote_name is not None and len(jobs) == 1:
        jobs = [dataclasses.replace(jobs[0], remote=remote_name)]
    preserve = preserving(args, conn, out)
    return run_batch(args, conn, out, jobs, failed, is_batch(args, sources), preserve)


def remote_destination(client: Client, dest: str, source: str) -> tuple[str, str | None]:
    """(remote directory, remote file name or None) for `put SOURCE :DEST`: into DEST if it
    ends with / or is a directory, or if SOURCE is a tree or a glob; else as the file DEST."""
    if dest.endswith("/") or os.path.isdir(source) or glob.has_magic(source):
        return dest, None
    return (
        (dest, None)
        if is_remote_dir(client, dest)
        else (posixpath.dirname(remote_join("/", dest)), remote_join("/", dest))
    )


def put_stdin(args: argparse.Namespace, conn: Connection, out: Output, env: Environment) -> bool:
    """`put - REMOTE`: stdin, whose size and MD5 a put must announce before its data, is
    spooled to a temporary file first (in $TMPDIR, memory bounded by one chunk), then
    uploaded from there like any file: verified, resumed on --retries."""
    if args.local[0] != "-" or len(args.local) != 2 or args.recursive or args.from_file:
        raise UsageError("put -: stdin goes alone, with the remote file's name: put - REMOTE")
    if args.preserve:
        raise UsageError("put -: -p has no time or mode to keep from stdin")
    name = unmark(args.local[1])
    if name.endswith("/") or posixpath.basename(name) in ("", ".", ".."):
        raise UsageError(f"put -: {args.local[1]} names a directory; name the file to write")
    remote = remote_join(args.dir or "/", name)
    with tempfile.TemporaryDirectory(prefix="sockftp-stdin-") as spool_dir:
        spool = Path(spool_dir, "stdin")
        with open(spool, "wb") as file:
            shutil.copyfileobj(env.stdin_bytes(), file, SPOOL_CHUNK)
        job = Job("put", spool, remote, spool.stat().st_size)

        def shown(outcome: Outcome) -> Outcome:
            return dataclasses.replace(outcome, job=dataclasses.replace(outcome.job, local=Path("-")))

        return run_batch(args, conn, out, [job], [], args.dry_run, shown=shown)


def cmd_ls(args: argparse.Namespace, conn: Connection, out: Output, env: Environment) -> bool:
    long = args.long or args.human

    def show(path: str, entry: Any, name: str | None = None) -> None:
        line = long_line(entry, args.human, name) if long else short_line(entry, name)
        out.listing(line, entry_record(path, entry))

    def ls(path: str) -> None:
        if not args.recursive:
            for entry in conn.client.ls(path):
                show(remote_join(path, entry.name), entry)
            return
        for remote_dir, relative, entries in walk_remote(conn.client, path):
            for entry in entries:
                show(remote_join(remote_dir, entry.name), entry, posixpath.join(relative, entry.name))

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
        try:
            conn.client.rm(path, recursive=args.recursive)
        except NotEmptyError as exc:
            raise NotEmptyError(f"{exc.message} (rm -r removes it with all it holds)") from None
        if out.json:
            out.result("", {"op": "rm", "path": path, "result": "ok"})

    return each(args.path, out, "rm", rm)


def cmd_mv(args: argparse.Namespace, conn: Connection, out: Output, env: Environment) -> bool:
    if len(args.path) < 2:
        raise UsageError("mv: name a SOURCE and a DEST: mv SOURCE... DEST")
    *sources, dest = (unmark(path) for path in args.path)
    into = dest.endswith("/") or is_remote_dir(conn.client, dest)
    if len(sources) > 1 and not into:
        raise UsageError(f"mv: with several sources, {dest} must be a directory (end it with /)")

    def mv(source: str) -> None:
        to = remote_join(dest, posixpath.basename(source.rstrip("/"))) if into else dest
        try:
            conn.client.rename(source, to, overwrite=args.force)
        except ExistsError as exc:
            raise ExistsError(f"{exc.message} (mv -f replaces it)") from None
        out.result(f"mv: {source} -> {to}", {"op": "mv", "path": source, "to": to, "result": "ok"})

    return each(sources, out, "mv", mv)


def cmd_df(args: argparse.Namespace, conn: Connection, out: Output, env: Environment) -> bool:
    usage = conn.client.usage()
    if out.json:
        out.listing("", usage_record(usage))
    else:
        for line in usage_lines(usage, args.human):
            out.listing(line, {})
    return True


def cmd_sync(args: argparse.Namespace, conn: Connection, out: Output, env: Environment) -> bool:
    try:
        source, dest = Side.parse(args.source), Side.parse(args.dest)
    except ProtocolError as exc:
        raise UsageError(f"sync: {exc.message}") from None
    keep_times = offered(
        conn, out, "attributes", "times cannot be kept, so sync compares by MD5 (--checksum)"
    )
    filters = Filters(tuple(args.include), tuple(args.exclude))
    plan = plan_sync(
        conn.client,
        source,
        dest,
        checksum=args.checksum or not keep_times,
        delete=args.delete,
        filters=filters,
        links=args.links,
    )
    if args.dry_run:
        summary = Summary(skipped=plan.unchanged, failed=len(plan.conflicts), deleted=len(plan.deletes))
        for outcome in plan.conflicts:
            out.error(f"sync {outcome.job.local}", outcome.error or OSError(), outcome_record(outcome))
        for job in plan.jobs:
            if job.skip or job not in plan.notes:
                note = job.skip or "would create directory"
            else:
                note = f"would {'send' if dest.remote else 'fetch'} ({plan.notes[job]})"
            outcome = Outcome(job, "skipped" if job.skip else "planned", note=note)
            summary.add(outcome)
            out.result(outcome_line(outcome), outcome_record(outcome))
        for item in plan.deletes:
            record: Record = {"op": "delete", "path": item.path, "result": "planned", "note": "would delete"}
            out.result(f"delete: {item.path}: would delete", record)
    else:
        summary = run_jobs(args, conn, out, plan.jobs, plan.conflicts, preserve=keep_times)
        summary.skipped += plan.unchanged
        if plan.deletes and summary.failed:
            out.warning(f"nothing deleted: {summary.failed} failed, and --delete waits for a complete copy")
        for item in plan.deletes if not summary.failed else []:
            if _delete(conn, out, dest, item):
                summary.deleted += 1
            else:
                summary.failed += 1
    line = summary_line(summary, args.dry_run, "put" if dest.remote else "get", deletes=args.delete)
    out.result(line, summary_record(summary, args.dry_run, deletes=args.delete))
    return summary.failed == 0


def _delete(conn: Connection, out: Output, dest: Side, item: Any) -> bool:
    """One of sync's deletions, reported; True if done."""
    record = {"op": "delete", "path": item.path}
    try:
        delete(conn.client, dest, item)
    except CLIENT_ERRORS as exc:
        out.error(f"delete {item.path}", exc, record)
        return False
    out.result(f"delete: {item.path}", {**record, "result": "ok"})
    return True


def cmd_shell(args: argparse.Namespace, conn: Connection, out: Output, env: Environment) -> bool:
    from .shell import Shell  # here: one-shot commands, most runs, never load it

    return Shell(conn, env).run()


Command = Callable[[argparse.Namespace, Connection, Output, Environment], bool]

COMMANDS: dict[str, Command] = {
    "get": cmd_get,
    "put": cmd_put,
    "ls": cmd_ls,
    "stat": cmd_stat,
    "mkdir": cmd_mkdir,
    "rm": cmd_rm,
    "mv": cmd_mv,
    "df": cmd_df,
    "cat": cmd_cat,
    "sync": cmd_sync,
    "shell": cmd_shell,
}


def main(argv: list[str] | None = None, env: Environment | None = None) -> int:
    """Run the command line on `argv` (default `sys.argv[1:]`) in `env` (default
    this process); returns the exit status."""
    env = Environment() if env is None else env
    parser = build_parser(env)
    try:
        args = parse(parser, sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version (0) or a usage error (2), already written to env
        return exc.code if isinstance(exc.code, int) else ExitStatus.USAGE
    out = Output(args, env)
    try:
        return run(args, out, env)
    except OutputClosedError:
        if env.stdout is sys.stdout:  # else Python's own flush at exit would complain of the pipe
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitStatus.CLOSED_PIPE


def run(args: argparse.Namespace, out: Output, env: Environment) -> int:
    try:
        settings = settings_from(args, env)
        conn = Connection(
            connector(settings),
            retries=getattr(args, "retries", 0),
            address=endpoint(settings.host, settings.port),
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
        out.note("ftpclient: interrupted")
        return ExitStatus.INTERRUPTED
    return ExitStatus.OK if ok else ExitStatus.FAILURE
