"""The shell's new commands (lcd, lpwd, lls, mget, mput, mv/rename, rm -r, df), Tab
completion that escapes spaces, and Ctrl-C in the middle of a transfer: the transfer
stops, its partial is kept for a resume, and the session goes on over a new connection."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys

import pytest

import ftpclient.shell
from ftpclient import Client
from ftpclient.connection import Connection
from ftpclient.environment import Environment
from ftpclient.shell import Shell

from .conftest import client_environ, run_cli, wait_until

pytestmark = pytest.mark.timeout(60)


def test_local_commands_and_globs_both_ways(server, tmp_path):
    local = tmp_path / "here"
    (local / "in").mkdir(parents=True)
    for name in ("a.txt", "b.txt", "c.log"):
        (local / name).write_text(name)
    (server.root / "docs" / "old").mkdir(parents=True)
    (server.root / "docs" / "old" / "x").write_text("x")
    script = [
        "lcd here",
        "lpwd",
        "lls",
        "mput '*.txt'",
        "lcd in",
        "mget '/*.txt'",
        "lls",
        "rename a.txt renamed.txt",
        "mv b.txt docs/",
        "rm docs",
        "rm -r docs/old",
        "ls -lh",
        "mget 'nothing*'",
    ]
    result = run_cli("shell", port=server.port, cwd=tmp_path, input="\n".join(script) + "\n")
    out = result.stdout.splitlines()
    assert out[0] == str(local.resolve())
    assert out[1:5] == ["a.txt", "b.txt", "c.log", "in/"]
    assert sorted(os.listdir(local / "in")) == ["a.txt", "b.txt"] and "c.log" not in os.listdir(server.root)
    assert (server.root / "renamed.txt").read_text() == "a.txt" and (server.root / "docs" / "b.txt").exists()
    assert not (server.root / "docs" / "old").exists()
    errors = result.stderr.splitlines()
    assert "not_empty" in errors[0] and "rm -r" in errors[0]
    assert "no remote file matches nothing*" in errors[1] and result.returncode == 1
    assert any(line.startswith("f ") and "B  " in line and line.endswith("renamed.txt") for line in out)


def test_tab_completion_escapes_spaces_or_keeps_the_quote_begun(server, tmp_path):
    (server.root / "my file.txt").write_text("x")
    (server.root / "my dir").mkdir()
    (tmp_path / "local file.bin").write_text("y")
    with Client("127.0.0.1", server.port, timeout=10) as client:
        shell = Shell(Connection(lambda: client, client=client), Environment(stdin=io.StringIO()))
        assert sorted(shell.completedefault("my", "get my", 4, 6)) == ["my\\ dir/", "my\\ file.txt"]
        # readline breaks words at every space: after "my\ " it asks to complete "f"
        assert shell.completedefault("f", "get my\\ f", 8, 9) == ["file.txt"]
        shell.lcwd = tmp_path
        assert shell.complete_put("loc", "put loc", 4, 7) == ["local\\ file.bin"]
        assert shell.complete_lcd("", "lcd local\\ ", 11, 11) == ["file.bin"]
        # A word begun in quotes is completed in them, a folder's left open to go on.
        assert sorted(shell.completedefault('"my', 'get "my', 4, 7)) == ['"my dir/', '"my file.txt"']
        assert shell.completedefault("fi", 'get "my fi', 8, 10) == ['file.txt"']
        assert sorted(shell.completedefault("'my", "get 'my", 4, 7)) == ["'my dir/", "'my file.txt'"]
        assert shell.complete_put("fi", "put 'local fi", 11, 13) == ["file.bin'"]
        assert shell.completedefault("x", 'get "my" "x', 9, 11) == []  # nothing of that name


def test_ctrl_c_in_a_transfer_keeps_the_partial_and_the_session(server, tmp_path, monkeypatch):
    data = os.urandom(12_000_000)  # more than one sendfile chunk: progress is told in between
    (tmp_path / "big.bin").write_bytes(data)

    class InterruptingBar:
        """Ctrl-C once a megabyte is out, the first time only."""

        fired = False

        def __call__(self, done: int, total: int) -> None:
            if done > 1_000_000 and not InterruptingBar.fired:
                InterruptingBar.fired = True
                raise KeyboardInterrupt

        def close(self) -> None:
            pass

    monkeypatch.setattr(ftpclient.shell, "progress_bar", lambda *args: InterruptingBar())
    result = run_cli("shell", port=server.port, cwd=tmp_path, input="put big.bin\npwd\nput big.bin\n")
    assert "error: interrupted; a get or put run again resumes where it stopped" in result.stderr
    out = result.stdout.splitlines()
    assert out[0] == "/" and out[1].startswith("big.bin -> /big.bin: 12000000 bytes, resumed after ")
    assert (server.root / "big.bin").read_bytes() == data
    assert result.returncode == 1  # the interrupted command counts as failed


def test_a_real_sigint_during_a_put_returns_to_the_prompt(make_config, serve, tmp_path):
    server = serve(make_config(anonymous={"bandwidth": 300_000}))
    data = os.urandom(1_500_000)
    (tmp_path / "big.bin").write_bytes(data)
    process = subprocess.Popen(
        [sys.executable, "-m", "ftpclient", "shell"],
        cwd=tmp_path,
        env=client_environ(server.port),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        process.stdin.write("put big.bin\n")
        process.stdin.flush()
        partial = lambda: list(server.root.glob(".sockftp.part.*"))  # noqa: E731
        assert wait_until(lambda: partial() and partial()[0].stat().st_size > 100_000, 15)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate("pwd\nexit\n", timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert out.splitlines() == ["/"] and "interrupted" in err and "Traceback" not in err
    assert process.returncode == 1
    kept = partial()[0].read_bytes()
    assert 0 < len(kept) < len(data) and data.startswith(kept)  # a clean prefix: no quit frame in it
