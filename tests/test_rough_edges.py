"""The bugs and misleading output of issue 11, each pinned: a closed stdout, `get -r /`,
`-o newdir/`, instant uploads, the batch bar over failures and its error lines, the
download summary, binary units, and a server at its connection limit."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading

import pytest

from ftpclient.cli import main
from ftpclient.environment import Environment

from .conftest import client_environ, run_cli, working_directory

pytestmark = pytest.mark.timeout(60)


class ClosingPipe(io.StringIO):
    """A stdout whose reader goes away after `lines` lines, as `head -N` does."""

    def __init__(self, lines: int) -> None:
        super().__init__()
        self.left = lines

    def write(self, text: str) -> int:
        if self.left <= 0:
            raise BrokenPipeError(32, "Broken pipe")
        self.left -= text.count("\n")
        return super().write(text)


def run_into_pipe(lines: int, *args: str, port: int, cwd=None) -> tuple[int, str, str]:
    stdout, stderr = ClosingPipe(lines), io.StringIO()
    env = Environment(stdin=io.StringIO(), stdout=stdout, stderr=stderr, environ=client_environ(port))
    with working_directory(cwd):
        status = main(list(args), env)
    return status, stdout.getvalue(), stderr.getvalue()


def test_a_closed_stdout_ends_quietly_with_status_141(server, tmp_path):
    for i in range(30):
        (server.root / f"f{i:02}").write_text("x")
        (tmp_path / "tree" / f"g{i:02}").parent.mkdir(exist_ok=True)
        (tmp_path / "tree" / f"g{i:02}").write_text(str(i))
    status, out, err = run_into_pipe(1, "ls", port=server.port)
    assert (status, out, err) == (141, "f00\n", "")
    status, out, err = run_into_pipe(3, "put", "-r", "tree", "--dry-run", port=server.port, cwd=tmp_path)
    assert status == 141 and len(out.splitlines()) == 3 and err == ""
    status, out, err = run_into_pipe(2, "put", "-r", "tree", "-j", "4", port=server.port, cwd=tmp_path)
    assert status == 141 and err == ""  # worker threads stop too, without a traceback
    status, _, err = run_into_pipe(0, "--json", "ls", "/nope", port=server.port)
    assert status == 141 and "not_found" in err


def test_a_real_pipe_to_head(server):
    for i in range(3000):
        (server.root / f"name-{i:04}-{'x' * 40}").write_text("")
    command = f"{sys.executable} -m ftpclient ls | head -1; echo status=${{PIPESTATUS[0]}} >&2"
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=30, env=client_environ(server.port)
    )
    assert result.stdout.startswith("name-0000")
    assert result.stderr.strip() in ("status=141", "status=0"), result.stderr  # 0: all fit the pipe first


def test_get_r_of_the_home_and_of_a_trailing_slash(server, tmp_path):
    (server.root / "sub").mkdir()
    (server.root / "top.txt").write_text("top")
    (server.root / "sub" / "deep.txt").write_text("deep")
    for home in ("/", "/."):
        out = tmp_path / f"copy{len(home)}"
        result = run_cli("get", "-r", home, "-o", str(out), port=server.port, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert (out / "top.txt").read_text() == "top" and (out / "sub" / "deep.txt").read_text() == "deep"
    result = run_cli("get", "top.txt", "-o", "newdir/", port=server.port, cwd=tmp_path)
    assert result.returncode == 0 and (tmp_path / "newdir" / "top.txt").read_text() == "top"


def test_instant_uploads_are_reported_as_linked_not_skipped(server, tmp_path):
    data = os.urandom(50_000)
    for name in ("a.bin", "b.bin", "c.bin"):
        (tmp_path / name).write_bytes(data)
    assert run_cli("put", "a.bin", "-d", "/old", "--parents", port=server.port, cwd=tmp_path).returncode == 0
    result = run_cli(
        "put", "a.bin", "b.bin", "c.bin", "-d", "/new", "--parents", "-j", "1", port=server.port, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    # The first goes the v1 way (nothing sent); the next ones pipelined (their bytes went
    # before the server could tell it held them): all three are reported as linked.
    assert result.stdout.count("linked from identical content") == 3
    assert result.stdout.splitlines()[-1].startswith("sent 0 files, linked 3, skipped 0, failed 0:")
    again = run_cli("put", "a.bin", "-d", "/new", port=server.port, cwd=tmp_path)
    assert "identical file already there, nothing sent" in again.stdout
    shell = run_cli("shell", port=server.port, cwd=tmp_path, input="put a.bin /d.bin\n")
    assert "(linked from identical content, nothing sent)" in shell.stdout


def test_the_batch_bar_over_failures_and_error_lines_above_it(server, tmp_path):
    for i in range(6):
        (tmp_path / f"f{i}").write_bytes(os.urandom(100_000))
    bob = {"SOCKFTP_USER": "bob", "SOCKFTP_PASSWORD": "bob-pw"}  # read-only: every put fails
    names = [f"f{i}" for i in range(6)]
    result = run_cli("put", *names, port=server.port, cwd=tmp_path, env=bob, terminal=True)
    assert result.returncode == 1 and result.stdout.splitlines()[-1].startswith("sent 0 files")
    assert "6/6 files" not in result.stderr and "0/6 files (6 failed)" in result.stderr
    errors = [line for line in result.stderr.split("\n") if "ftpclient: put" in line]
    assert len(errors) == 6
    for line in errors:  # each on a line of its own: the bar cleared first, not cut into
        assert line.split("\r")[-1].startswith("ftpclient: put f"), repr(line)


def test_download_summary_and_binary_units(server, tmp_path):
    for i in range(2):
        (server.root / f"big{i}").write_bytes(os.urandom(3 * 1024 * 1024))
    result = run_cli("get", "/big0", "/big1", port=server.port, cwd=tmp_path, terminal=True)
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1].startswith("fetched 2 files, skipped 0, failed 0: 6.0 MiB in ")
    assert "sent" not in result.stdout.splitlines()[-1]
    assert "MiB" in result.stderr and not re.search(r"\d[kMG]B", result.stderr)  # no MB next to MiB counts


def test_jobs_above_the_per_address_limit_back_off_and_finish(make_config, serve, tmp_path):
    server = serve(make_config(limits={"max_connections_per_address": 3}))
    for i in range(40):
        (tmp_path / "many" / f"f{i:02}").parent.mkdir(exist_ok=True)
        (tmp_path / "many" / f"f{i:02}").write_bytes(os.urandom(1000 + i))
    result = run_cli("put", "-r", "many", "-j", "500", port=server.port, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("sent 40 files") and "busy" not in result.stderr
    assert len(os.listdir(server.root / "many")) == 40


def test_busy_at_connect_is_retried_without_retries(make_config, serve):
    server = serve(make_config(limits={"max_connections_per_address": 1}))
    holder = server.connect()
    holder.recv(4096)  # the greeting: this connection takes the only place
    threading.Timer(0.8, holder.close).start()
    result = run_cli("ls", port=server.port)
    assert result.returncode == 0, result.stderr
