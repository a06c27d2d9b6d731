"""`ftpclient shell`: an interactive session over one connection.

    sockftp:/> cd reports
    sockftp:/reports> get q3.pdf
    sockftp:/reports> put notes.txt

Commands: cd, pwd, ls, get, put, mkdir, rm, help, exit. Remote names
complete with Tab; history is kept in `$XDG_STATE_HOME/sockftp/history`
(`~/.local/state/...`). Errors are printed as one line and the session goes
on; `exit` (or end of input) ends it. The shell reads and writes only the
streams of the `Environment` it is given.
"""

from __future__ import annotations

import cmd
import os
import posixpath
import shlex
import sys
from types import ModuleType
from typing import NoReturn

from ftpproto import join_path, split_path

from .client import Client
from .environment import Environment
from .errors import CLIENT_ERRORS, UsageError
from .formatting import long_line, reason, short_line, transfer_line
from .progress import progress_bar

__all__ = ["Shell"]


class Shell(cmd.Cmd):
    """The session over `client`; with no `env`, on this process's terminal."""

    intro: str | None = "sockftp shell: type help for commands, exit to leave."

    def __init__(self, client: Client, env: Environment | None = None) -> None:
        self.env = Environment() if env is None else env
        super().__init__(stdin=self.env.stdin, stdout=self.env.stdout)
        self.client = client
        self.cwd = "/"
        self.failed = False
        self.interactive = self.env.stdin_isatty
        self.use_rawinput = self.interactive and self.env.stdin is sys.stdin  # input() reads sys.stdin
        self.bars = self.interactive and self.env.stderr_isatty
        if not self.interactive:
            self.intro = None

    @property
    def prompt(self) -> str:  # type: ignore[override]
        return f"sockftp:{self.cwd}> " if self.interactive else ""

    def run(self) -> bool:
        """Run until exit; True if no command failed."""
        readline = _readline() if self.use_rawinput else None
        history = self.env.state_dir / "history"
        if readline is not None:
            readline.set_completer_delims(" \t\n")
            if history.exists():
                readline.read_history_file(history)
        try:
            self.cmdloop()
        except KeyboardInterrupt:
            self.stdout.write("\n")
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

    def say(self, text: str) -> None:
        self.stdout.write(text + "\n")

    def error(self, text: str) -> None:
        print(f"error: {text}", file=self.env.stderr, flush=True)

    def onecmd(self, line: str) -> bool:
        """Run one command; a failure is one error line, and the session goes on
        unless it closed the connection."""
        try:
            return super().onecmd(line)
        except UsageError as exc:
            return self.failure(exc)
        except CLIENT_ERRORS as exc:
            return self.failure(exc)

    def failure(self, exc: Exception) -> bool:
        self.failed = True
        self.error(reason(exc, with_filename=True))
        if self.client.closed:
            self.error("the connection is closed; exit and start again")
            return True
        return False

    def emptyline(self) -> bool:
        return False

    def get_names(self) -> list[str]:
        """The commands `help` lists: not EOF, nor quit (exit's twin)."""
        return [name for name in super().get_names() if name not in ("do_EOF", "do_quit")]

    def default(self, line: str) -> NoReturn:
        raise UsageError(f"unknown command {line.split()[0]!r}; type help")

    # -- commands --------------------------------------------------------------

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
        """ls [-l] [PATH]: list a remote directory (-l: type, size and time)"""
        names = _words(arg)
        long = "-l" in names
        for entry in self.client.ls(self.path(_one([n for n in names if n != "-l"], default=""))):
            self.say(long_line(entry) if long else short_line(entry))

    def do_get(self, arg: str) -> None:
        """get REMOTE [LOCAL]: download a file"""
        names = _words(arg)
        if not 1 <= len(names) <= 2:
            raise UsageError("usage: get REMOTE [LOCAL]")
        remote = self.path(names[0])
        local = names[1] if len(names) == 2 else posixpath.basename(remote)
        bar = progress_bar(posixpath.basename(remote), self.env.stderr, self.bars)
        try:
            transfer = self.client.get(remote, local, progress=bar)
        finally:
            bar.close()
        self.say(transfer_line("get", remote, local, transfer))

    def do_put(self, arg: str) -> None:
        """put LOCAL [REMOTE]: upload a file"""
        names = _words(arg)
        if not 1 <= len(names) <= 2:
            raise UsageError("usage: put LOCAL [REMOTE]")
        local = names[0]
        remote = self.path(names[1] if len(names) == 2 else os.path.basename(local))
        bar = progress_bar(os.path.basename(local), self.env.stderr, self.bars)
        try:
            transfer = self.client.put(local, remote, progress=bar)
        finally:
            bar.close()
        self.say(transfer_line("put", local, remote, transfer))

    def do_mkdir(self, arg: str) -> None:
        """mkdir DIR: create a remote directory (and its parents)"""
        self.client.mkdir(self.path(_one(_words(arg))), parents=True)

    def do_rm(self, arg: str) -> None:
        """rm PATH: remove a remote file or empty directory"""
        self.client.rm(self.path(_one(_words(arg))))

    def do_exit(self, arg: str) -> bool:
        """exit: end the session"""
        return True

    do_quit = do_exit

    def do_EOF(self, arg: str) -> bool:
        if self.interactive:
            self.say("")
        return True

    # -- completion of remote names --------------------------------------------

    def complete_remote(self, text: str) -> list[str]:
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

    def completedefault(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return self.complete_remote(text)

    complete_cd = complete_ls = complete_get = complete_rm = complete_mkdir = completedefault


def _words(arg: str) -> list[str]:
    """The words of a command's arguments, split and unquoted as a POSIX shell does."""
    if "\0" in arg:
        raise UsageError("a name cannot hold a NUL character")
    try:
        return shlex.split(arg)
    except ValueError as exc:  # No closing quotation, No escaped character
        raise UsageError(str(exc)) from None


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
