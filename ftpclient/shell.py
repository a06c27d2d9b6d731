"""`ftpclient shell`: an interactive session over one connection.

    sockftp:/> cd reports
    sockftp:/reports> get q3.pdf
    sockftp:/reports> put notes.txt

Commands: cd, pwd, ls, get, put, mkdir, rm, help, exit. Remote names
complete with Tab; history is kept in `$XDG_STATE_HOME/sockftp/history`
(`~/.local/state/...`). Errors are printed as one line and the session goes
on; `exit` (or end of input) ends it.
"""

from __future__ import annotations

import cmd
import os
import posixpath
import shlex
import sys
from pathlib import Path

from ftpproto import ProtocolError, join_path, split_path

from .cli import long_line, short_line
from .client import Client
from .progress import progress_bar

__all__ = ["Shell"]


def history_path(env: dict[str, str]) -> Path:
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "sockftp" / "history"


class Shell(cmd.Cmd):
    intro = "sockftp shell: type help for commands, exit to leave."

    def __init__(self, client: Client, stdin=None, stdout=None) -> None:
        super().__init__(stdin=stdin, stdout=stdout)
        self.client = client
        self.cwd = "/"
        self.failed = False
        self.interactive = (stdin or sys.stdin).isatty()
        self.use_rawinput = self.interactive
        if not self.interactive:
            self.intro = None

    @property
    def prompt(self) -> str:  # type: ignore[override]
        return f"sockftp:{self.cwd}> " if self.interactive else ""

    def run(self) -> bool:
        """Run until exit; True if no command failed."""
        readline = _readline() if self.interactive else None
        history = history_path(dict(os.environ))
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

    def onecmd(self, line: str) -> bool:
        try:
            return super().onecmd(line)
        except (ProtocolError, OSError, ValueError) as exc:
            self.failed = True
            if isinstance(exc, ProtocolError):
                detail = f"{exc.code}: {exc.message}"
            elif isinstance(exc, OSError) and exc.strerror:
                detail = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
            else:
                detail = str(exc)
            print(f"error: {detail}", file=sys.stderr, flush=True)
            if self.client.closed:
                print("error: the connection is closed; exit and start again", file=sys.stderr, flush=True)
                return True
            return False

    def emptyline(self) -> bool:
        return False

    def get_names(self) -> list[str]:
        """The commands `help` lists: not EOF, nor quit (exit's twin)."""
        return [name for name in super().get_names() if name not in ("do_EOF", "do_quit")]

    def default(self, line: str) -> bool:
        raise ValueError(f"unknown command {line.split()[0]!r}; type help")

    # -- commands --------------------------------------------------------------

    def do_pwd(self, arg: str) -> None:
        """pwd: print the remote working directory"""
        self.say(self.cwd)

    def do_cd(self, arg: str) -> None:
        """cd [DIR]: change the remote working directory (no DIR: the home)"""
        target = self.path(_one(arg, default="/"))
        if self.client.stat(target).type != "dir":
            raise ValueError(f"{target} is not a directory")
        self.cwd = target

    def do_ls(self, arg: str) -> None:
        """ls [-l] [PATH]: list a remote directory (-l: type, size and time)"""
        names = shlex.split(arg)
        long = "-l" in names
        names = [n for n in names if n != "-l"]
        for entry in self.client.ls(self.path(_one(" ".join(map(shlex.quote, names)), default=""))):
            self.say(long_line(entry) if long else short_line(entry))

    def do_get(self, arg: str) -> None:
        """get REMOTE [LOCAL]: download a file"""
        names = shlex.split(arg)
        if not 1 <= len(names) <= 2:
            raise ValueError("usage: get REMOTE [LOCAL]")
        remote = self.path(names[0])
        local = names[1] if len(names) == 2 else posixpath.basename(remote)
        bar = progress_bar(posixpath.basename(remote), self.interactive)
        try:
            transfer = self.client.get(remote, local, progress=bar)
        finally:
            bar.close()
        self.say(
            f"{remote} -> {local}: {transfer.size} bytes"
            + (" (identical, skipped)" if transfer.skipped else "")
        )

    def do_put(self, arg: str) -> None:
        """put LOCAL [REMOTE]: upload a file"""
        names = shlex.split(arg)
        if not 1 <= len(names) <= 2:
            raise ValueError("usage: put LOCAL [REMOTE]")
        local = names[0]
        remote = self.path(names[1] if len(names) == 2 else os.path.basename(local))
        bar = progress_bar(os.path.basename(local), self.interactive)
        try:
            transfer = self.client.put(local, remote, progress=bar)
        finally:
            bar.close()
        note = " (already on the server, nothing sent)" if transfer.skipped else ""
        self.say(f"{local} -> {remote}: {transfer.size} bytes{note}")

    def do_mkdir(self, arg: str) -> None:
        """mkdir DIR: create a remote directory (and its parents)"""
        self.client.mkdir(self.path(_one(arg)), parents=True)

    def do_rm(self, arg: str) -> None:
        """rm PATH: remove a remote file or empty directory"""
        self.client.rm(self.path(_one(arg)))

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
        except (ProtocolError, OSError):
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


def _one(arg: str, default: str | None = None) -> str:
    names = shlex.split(arg)
    if not names and default is not None:
        return default
    if len(names) != 1:
        raise ValueError("expected one path")
    return names[0]


def _readline():
    try:
        import readline
    except ImportError:  # not on every platform
        return None
    return readline
