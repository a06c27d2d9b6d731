"""`ftpclient shell`: an interactive session over one connection.

    sockftp:/> cd reports
    sockftp:/reports> mget 'q*.pdf'
    sockftp:/reports> lcd ~/notes
    sockftp:/reports> put notes.txt

Remote commands: cd, pwd, ls, get, put, mget, mput, mkdir, rm, mv (rename), df;
local ones: lcd, lpwd, lls; and help, exit. Names complete with Tab (remote ones,
local ones for put, mput, lcd and lls), spaces and quotes escaped with a backslash,
or inside the quote a word was begun with;
history is kept in `$XDG_STATE_HOME/sockftp/history` (`~/.local/state/...`).
Errors are printed as one line and the session goes on; Ctrl-C stops the
command under way (a transfer keeps what it moved, and the same get or put
resumes it) and returns to the prompt; a connection lost or cut is made again
by the next command; `exit` (or end of input) ends the session. The shell
reads and writes only the streams of the `Environment` it is given; local
paths are relative to its own local directory (`lcd`), not the process's.
"""

from __future__ import annotations

import cmd
import fnmatch
import glob
import os
import posixpath
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NoReturn

from ftpproto import NotEmptyError, join_path, split_path

from .batch import is_remote_dir
from .client import Client, Transfer
from .connection import Connection
from .environment import Environment, expand_home
from .errors import CLIENT_ERRORS, UsageError
from .formatting import long_line, reason, short_line, transfer_line, usage_lines
from .progress import progress_bar

__all__ = ["Shell"]

_ESCAPED = " \t\n'\"\\"  # what a name needs a backslash before, to stay one word


class Shell(cmd.Cmd):
    """The session over `connection` (a `Client` is taken as one that cannot reconnect);
    with no `env`, on this process's terminal."""

    intro: str | None = "sockftp shell: type help for commands, exit to leave."

    def __init__(self, connection: Connection | Client, env: Environment | None = None) -> None:
        self.env = Environment() if env is None else env
        super().__init__(stdin=self.env.stdin, stdout=self.env.stdout)
        if isinstance(connection, Client):
            connection = Connection(_cannot_reconnect, client=connection)
        self.conn = connection
        self.cwd = "/"
        self.lcwd = Path.cwd()
        self.failed = False
        self.interactive = self.env.stdin_isatty
        self.use_rawinput = self.interactive and self.env.stdin is sys.stdin  # input() reads sys.stdin
        self.bars = self.interactive and self.env.stderr_isatty
        if not self.interactive:
            self.intro = None

    @property
    def client(self) -> Client:
        """The connection, made again if it was lost or cut."""
        return self.conn.client

    @property
    def prompt(self) -> str:  # type: ignore[override]
        return f"sockftp:{self.cwd}> " if self.interactive else ""

    def run(self) -> bool:
        """Run until exit; True if no command failed. Ctrl-C at the prompt gives a new one."""
        readline = _readline() if self.use_rawinput else None
        history = self.env.state_dir / "history"
        if readline is not None:
            readline.set_completer_delims(" \t\n")
            if history.exists():
                readline.read_history_file(history)
        try:
            while True:
                try:
                    self.cmdloop()
                    break
                except KeyboardInterrupt:
                    self.stdout.write("\n")
                    self.intro = None
                    if not self.interactive:
                        break
        finally:
            if readline is not None:
                history.parent.mkdir(parents=True, exist_ok=True)
                readline.set_history_length(1000)
                readline.write_history_file(history)
        return not self.failed

    def path(self, name: str) -> str:
        """A remote path from what the user typed, relative to the current directory.

        Resolved by the protocol's own rules: climbing above the home is
        `forbidden`, never quietly clamped to `/`."""
        return join_path(split_path(posixpath.join(self.cwd, name)))

    def local(self, name: str) -> Path:
        """A local path from what the user typed, relative to the local directory (`lcd`);
        left relative while that is the process's own, so that it reads as typed."""
        path = Path(expand_home(name, self.env.environ))
        return path if self.lcwd == Path.cwd() else self.lcwd / path

    def say(self, text: str) -> None:
        self.stdout.write(text + "\n")

    def error(self, text: str) -> None:
        print(f"error: {text}", file=self.env.stderr, flush=True)

    def onecmd(self, line: str) -> bool:
        """Run one command; a failure is one error line, and the session goes on."""
        try:
            return super().onecmd(line)
        except UsageError as exc:
            return self.failure(exc)
        except CLIENT_ERRORS as exc:
            return self.failure(exc)
        except KeyboardInterrupt:
            self.failed = True
            self.conn.settle()  # cut in the middle of an exchange: the next command reconnects
            self.error("interrupted; a get or put run again resumes where it stopped")
            return False

    def failure(self, exc: Exception) -> bool:
        self.failed = True
        self.error(reason(exc, with_filename=True))
        if self.conn.closed:
            self.error("the connection was lost; the next command connects again")
        return False

    def emptyline(self) -> bool:
        return False

    def get_names(self) -> list[str]:
        """The commands `help` lists: not EOF, nor quit (exit's twin), nor rename (mv's)."""
        return [name for name in super().get_names() if name not in ("do_EOF", "do_quit", "do_rename")]

    def default(self, line: str) -> NoReturn:
        raise UsageError(f"unknown command {line.split()[0]!r}; type help")

    # -- remote commands -------------------------------------------------------

    def do_pwd(self, arg: str) -> None:
        """pwd: print the remote working directory"""
        self.say(self.cwd)

    def do_cd(self, arg: str) -> None:
        """cd [DIR]: change the remote working directory (no DIR: the home)"""
        target = self.path(_one(_words(arg), default="/"))
        if self.client.stat(target).type != "dir":
            raise UsageError(f"{target} is not a directory")
        self.cwd = target

    def do_ls(self, arg: str) -> None:
        """ls [-l] [-h] [PATH]: list a remote directory (-l: type, size and time; -h: sizes in KiB, MiB)"""
        flags, names = _flags(_words(arg), "lh")
        for entry in self.client.ls(self.path(_one(names, default=""))):
            long = "l" in flags or "h" in flags
            self.say(long_line(entry, "h" in flags) if long else short_line(entry))

    def do_get(self, arg: str) -> None:
        """get REMOTE [LOCAL]: download a file (into LOCAL, a file or a local directory)"""
        names = _words(arg)
        if not 1 <= len(names) <= 2:
            raise UsageError("usage: get REMOTE [LOCAL]")
        self.fetch(self.path(names[0]), names[1] if len(names) == 2 else None)

    def do_put(self, arg: str) -> None:
        """put LOCAL [REMOTE]: upload a file (to REMOTE, a file or a remote directory)"""
        names = _words(arg)
        if not 1 <= len(names) <= 2:
            raise UsageError("usage: put LOCAL [REMOTE]")
        self.send(self.local(names[0]), names[1] if len(names) == 2 else None)

    def do_mget(self, arg: str) -> None:
        """mget PATTERN...: download every remote file the patterns match (quote them: mget '*.pdf')"""
        patterns = _words(arg)
        if not patterns:
            raise UsageError("usage: mget PATTERN...")
        for pattern in patterns:
            remote = self.path(pattern)
            directory, name = posixpath.split(remote)
            if not glob.has_magic(name):
                self.fetch(remote, None)
                continue
            matched = [
                e for e in self.client.ls(directory) if e.type == "file" and fnmatch.fnmatchcase(e.name, name)
            ]
            if not matched:
                raise UsageError(f"mget: no remote file matches {pattern}")
            for entry in matched:
                self.fetch(posixpath.join(directory, entry.name), None)

    def do_mput(self, arg: str) -> None:
        """mput PATTERN...: upload every local file the patterns match"""
        patterns = _words(arg)
        if not patterns:
            raise UsageError("usage: mput PATTERN...")
        for pattern in patterns:
            matched = sorted(glob.glob(expand_home(pattern, self.env.environ), root_dir=self.lcwd))
            files = [name for name in matched if self.local(name).is_file()]
            if not files:
                raise UsageError(f"mput: no local file matches {pattern}")
            for name in files:
                self.send(self.local(name), None)

    def fetch(self, remote: str, local_name: str | None) -> None:
        local = self.local(local_name) if local_name is not None else self.lcwd
        if local.is_dir():
            local = local / posixpath.basename(remote)
        self.transfer("get", remote, str(local), lambda bar: self.client.get(remote, local, progress=bar))

    def send(self, local: Path, remote_name: str | None) -> None:
        remote = self.path(remote_name if remote_name is not None else local.name)
        if remote_name is not None and (remote_name.endswith("/") or is_remote_dir(self.client, remote)):
            remote = posixpath.join(remote, local.name)
        self.transfer(
            "put",
            str(local),
            remote,
            lambda bar: self.client.put(local, remote, progress=bar, tell_linked=True),
        )

    def transfer(self, op: str, source: str, target: str, run: Callable[..., Transfer]) -> None:
        bar = progress_bar(posixpath.basename(source), self.env.stderr, self.bars)
        try:
            transfer = run(bar)
        finally:
            bar.close()
        self.say(transfer_line(op, source, target, transfer))

    def do_mkdir(self, arg: str) -> None:
        """mkdir DIR: create a remote directory (and its parents)"""
        self.client.mkdir(self.path(_one(_words(arg))), parents=True)

    def do_rm(self, arg: str) -> None:
        """rm [-r] PATH: remove a remote file or empty directory (-r: a directory and all it holds)"""
        flags, names = _flags(_words(arg), "r")
        try:
            self.client.rm(self.path(_one(names)), recursive="r" in flags)
        except NotEmptyError as exc:
            raise NotEmptyError(f"{exc.message} (rm -r removes it with all it holds)") from None

    def do_mv(self, arg: str) -> None:
        """mv [-f] OLD NEW: rename or move a remote file or directory (into NEW if it is a directory; -f replaces)"""
        flags, names = _flags(_words(arg), "f")
        if len(names) != 2:
            raise UsageError("usage: mv [-f] OLD NEW")
        source, target = self.path(names[0]), self.path(names[1])
        if names[1].endswith("/") or is_remote_dir(self.client, target):
            target = posixpath.join(target, posixpath.basename(source))
        self.client.rename(source, target, overwrite="f" in flags)

    do_rename = do_mv

    def do_df(self, arg: str) -> None:
        """df: the space used, the quota and what is free (sizes in KiB, MiB, ...)"""
        for line in usage_lines(self.client.usage(), human=True):
            self.say(line)

    # -- local commands --------------------------------------------------------

    def do_lpwd(self, arg: str) -> None:
        """lpwd: print the local working directory"""
        self.say(str(self.lcwd))

    def do_lcd(self, arg: str) -> None:
        """lcd [DIR]: change the local working directory (no DIR: your home)"""
        target = self.local(_one(_words(arg), default="~")).resolve()
        if not target.is_dir():
            raise UsageError(f"{target} is not a local directory")
        self.lcwd = target

    def do_lls(self, arg: str) -> None:
        """lls [DIR]: list a local directory"""
        directory = self.local(_one(_words(arg), default="."))
        for name in sorted(os.listdir(directory)):
            self.say(name + ("/" if (directory / name).is_dir() else ""))

    def do_exit(self, arg: str) -> bool:
        """exit: end the session"""
        return True

    do_quit = do_exit

    def do_EOF(self, arg: str) -> bool:
        if self.interactive:
            self.say("")
        return True

    # -- completion ------------------------------------------------------------

    def complete_remote(self, text: str) -> list[str]:
        """Remote names that complete `text` (a path as typed, unescaped)."""
        directory, _, partial = text.rpartition("/")
        try:
            entries = self.client.ls(self.path(directory) if directory else self.cwd)
        except CLIENT_ERRORS:
            return []
        prefix = directory + "/" if directory else ""
        return [
            prefix + entry.name + ("/" if entry.type == "dir" else "")
            for entry in entries
            if entry.name.startswith(partial)
        ]

    def complete_local(self, text: str) -> list[str]:
        """Local names that complete `text`, relative to the local directory."""
        directory, _, partial = text.rpartition("/")
        try:
            names = os.listdir(self.local(directory or "."))
        except OSError:
            return []
        prefix = directory + "/" if directory else ""
        return [
            prefix + name + ("/" if self.local(prefix + name).is_dir() else "")
            for name in sorted(names)
            if name.startswith(partial)
        ]

    def _complete(self, names: Callable[[str], list[str]], line: str, begidx: int, endidx: int) -> list[str]:
        """What readline should put in place of line[begidx:endidx]: the names that complete
        the whole word there, written as the word began (in quotes, or with backslashes),
        less what of the word stands before `begidx` (readline breaks words at every space,
        even an escaped or quoted one)."""
        start, quote = _word_start(line, endidx)
        typed = line[start:begidx]
        word = _unquote(line[start:endidx], quote)
        if word is None:
            return []
        completions = [
            _render(name, quote if line[start : start + 1] == quote else None) for name in names(word)
        ]
        return [name[len(typed) :] for name in completions if name.startswith(typed)]

    def completedefault(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return self._complete(self.complete_remote, line, begidx, endidx)

    def complete_put(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return self._complete(self.complete_local, line, begidx, endidx)

    complete_cd = complete_ls = complete_get = complete_rm = complete_mkdir = completedefault
    complete_mget = complete_mv = complete_rename = completedefault
    complete_mput = complete_lcd = complete_lls = complete_put


def _cannot_reconnect() -> Client:
    raise ConnectionError("the connection was lost; start the shell again")


def _escape(name: str) -> str:
    return "".join("\\" + c if c in _ESCAPED else c for c in name)


def _render(name: str, quote: str | None) -> str:
    """`name` as one word: in the quote the word was begun with (a folder's left open, so the
    path can go on), else with backslashes."""
    if quote is None or quote in name or (quote == '"' and "\\" in name):
        return _escape(name)
    return quote + name + ("" if name.endswith("/") else quote)


def _unquote(word: str, quote: str | None) -> str | None:
    """What the shell would make of a word being typed (an open quote closed, a trailing
    backslash dropped); None if it cannot be one word."""
    if quote is not None:
        word += quote
    elif word.endswith("\\") and not word.endswith("\\\\"):
        word = word[:-1]
    try:
        parts = shlex.split(word)
    except ValueError:
        return None
    if len(parts) > 1:
        return None
    return parts[0] if parts else ""


def _word_start(line: str, end: int) -> tuple[int, str | None]:
    """Where the word that `end` is in starts (after the last space neither escaped by a
    backslash nor inside quotes), and the quote still open at `end`, if any."""
    start, index, quote = 0, 0, None
    while index < end:
        char = line[index]
        if quote is not None:
            if char == quote:
                quote = None
            elif char == "\\" and quote == '"':
                index += 1
        elif char == "\\":
            index += 1
        elif char in "'\"":
            quote = char
        elif char in " \t":
            start = index + 1
        index += 1
    return start, quote


def _words(arg: str) -> list[str]:
    """The words of a command's arguments, split and unquoted as a POSIX shell does."""
    if "\0" in arg:
        raise UsageError("a name cannot hold a NUL character")
    try:
        return shlex.split(arg)
    except ValueError as exc:  # No closing quotation, No escaped character
        raise UsageError(str(exc)) from None


def _flags(words: list[str], allowed: str) -> tuple[set[str], list[str]]:
    """The single-letter flags among `words` (`-l`, `-lh`), and the other words."""
    flags = set()
    names = []
    for word in words:
        if word.startswith("-") and len(word) > 1:
            unknown = set(word[1:]) - set(allowed)
            if unknown:
                raise UsageError(f"unknown option -{''.join(sorted(unknown))}")
            flags |= set(word[1:])
        else:
            names.append(word)
    return flags, names


def _one(names: list[str], default: str | None = None) -> str:
    if not names and default is not None:
        return default
    if len(names) != 1:
        raise UsageError("expected one path")
    return names[0]


def _readline() -> ModuleType | None:
    try:
        import readline
    except ImportError:  # not on every platform
        return None
    return readline
