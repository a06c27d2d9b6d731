"""`Environment`: everything the command line reads and writes besides its arguments.

`main(argv, env)` touches the process only through an `Environment` (httpie's
`main(args, env=Environment())`): its three streams and whether each is a
terminal, the environment variables, and the directories of the config file
and the shell's history. `Environment()` is this process; tests hand in their
own streams and variables and run the whole command line in-process.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

__all__ = ["Environment", "config_dir_of", "expand_home", "state_dir_of"]


@dataclass(init=False)
class Environment:
    """The streams, terminals, variables and directories of one run of the command line.

    Every argument defaults to this process's own: `sys.stdin`/`stdout`/`stderr`;
    `*_isatty` asks the stream; `environ` copies `os.environ`; `config_dir`
    (`client.yaml`) and `state_dir` (the shell's history) follow the XDG
    variables of `environ` as given (changing it later does not move them)."""

    stdin: TextIO
    stdout: TextIO
    stderr: TextIO
    stdin_isatty: bool
    stdout_isatty: bool
    stderr_isatty: bool
    environ: dict[str, str]
    config_dir: Path
    state_dir: Path

    def __init__(
        self,
        *,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        stdin_isatty: bool | None = None,
        stdout_isatty: bool | None = None,
        stderr_isatty: bool | None = None,
        environ: Mapping[str, str] | None = None,
        config_dir: Path | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.stdin = sys.stdin if stdin is None else stdin
        self.stdout = sys.stdout if stdout is None else stdout
        self.stderr = sys.stderr if stderr is None else stderr
        self.stdin_isatty = _isatty(self.stdin) if stdin_isatty is None else stdin_isatty
        self.stdout_isatty = _isatty(self.stdout) if stdout_isatty is None else stdout_isatty
        self.stderr_isatty = _isatty(self.stderr) if stderr_isatty is None else stderr_isatty
        self.environ = dict(os.environ if environ is None else environ)
        self.config_dir = config_dir_of(self.environ) if config_dir is None else config_dir
        self.state_dir = state_dir_of(self.environ) if state_dir is None else state_dir

    def stdout_bytes(self) -> BinaryIO:
        """stdout for bytes (`cat`, `get -o -`), after what was written to it as text."""
        self.stdout.flush()
        return _binary(self.stdout, "stdout")

    def stdin_bytes(self) -> BinaryIO:
        """stdin for bytes (`put - REMOTE`)."""
        return _binary(self.stdin, "stdin")

    def ask_password(self, prompt: str) -> str:
        """A password typed by the user: without echo on this process's terminal,
        else (an injected stdin) the next line of stdin."""
        if self.stdin is sys.stdin:
            return getpass.getpass(prompt)
        self.stderr.write(prompt)
        self.stderr.flush()
        return self.stdin.readline().rstrip("\r\n")


def _binary(stream: TextIO, name: str) -> BinaryIO:
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        raise OSError(f"{name} takes text only here, not bytes")
    return buffer


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no such method, or a closed stream
        return False


def expand_home(path: str, environ: Mapping[str, str]) -> str:
    """`path` with a leading `~` replaced by `environ`'s HOME (as `os.path.expanduser` does
    with the process's own); `~user` and a missing HOME are left to `expanduser`."""
    home = environ.get("HOME")
    if home is not None and (path == "~" or path.startswith("~/")):
        return home + path[1:]
    return os.path.expanduser(path)


def _xdg(environ: Mapping[str, str], variable: str, fallback: str) -> Path:
    return Path(environ.get(variable) or expand_home(fallback, environ)) / "sockftp"


def config_dir_of(environ: Mapping[str, str]) -> Path:
    """`$XDG_CONFIG_HOME/sockftp`, or `~/.config/sockftp`: where `client.yaml` lives."""
    return _xdg(environ, "XDG_CONFIG_HOME", "~/.config")


def state_dir_of(environ: Mapping[str, str]) -> Path:
    """`$XDG_STATE_HOME/sockftp`, or `~/.local/state/sockftp`: where the shell keeps its history."""
    return _xdg(environ, "XDG_STATE_HOME", "~/.local/state")
