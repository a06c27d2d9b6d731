"""The command lines: exit codes, stdout and stderr.

`ftpclient` runs in-process (`main(argv, env)`, by `run_cli`) against a server
in a thread, built from a YAML file in tmp_path. Subprocesses where only a
process will do: the installed scripts, and the `ftpserver` process itself
(its log, signals, config errors); `ftpserver adduser` runs in-process too."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from ftpclient.cli import main
from ftpclient.environment import Environment
from ftpproto.io import FrameStream
from ftpserver.__main__ import main as ftpserver_main
from ftpserver.config import load_config

from .conftest import CliResult, client_environ, run_cli, write_config

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def config_path(tmp_path):
    return write_config(tmp_path)


@pytest.fixture
def port(config_path, serve):
    return serve(load_config(config_path)).port


@pytest.fixture
def work(tmp_path):
    path = tmp_path / "work"
    path.mkdir()
    return path


def assert_one_line_error(result, *fragments: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) >= 1 and all(line.startswith("ftpclient: ") for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_quick_start_put_ls_get(port, work, tmp_path):
    (work / "hello.txt").write_text("hello, world\n")
    put = run_cli("put", "hello.txt", port=port, cwd=work)
    assert put.returncode == 0, put.stderr
    assert put.stdout.startswith("put: hello.txt -> /hello.txt: 13 B, md5 ")
    assert put.stderr == ""  # not a terminal: no progress bar
    ls = run_cli("ls", port=port)
    assert ls.stdout == "hello.txt\n"
    get = run_cli("get", "hello.txt", "-o", "copy.txt", port=port, cwd=work)
    assert get.returncode == 0, get.stderr
    assert (work / "copy.txt").read_text() == "hello, world\n"
    assert (tmp_path / "storage" / "hello.txt").read_text() == "hello, world\n"


def test_several_files_and_directories(port, work, tmp_path):
    for name in ("a.txt", "b c.txt", "中文.txt"):
        (work / name).write_text(name)
    result = run_cli("put", "a.txt", "b c.txt", "中文.txt", "-d", "/in/box", "--parents", port=port, cwd=work)
    *lines, summary = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 3
    assert summary.startswith("sent 3 files, skipped 0, failed 0: 22 B in ")
    long = run_cli("ls", "-l", "/in/box", port=port)
    assert [line.split(maxsplit=4)[-1] for line in long.stdout.splitlines()] == [
        "a.txt",
        "b c.txt",
        "中文.txt",
    ]
    out = work / "out"
    out.mkdir()
    result = run_cli("get", "/in/box/a.txt", "/in/box/中文.txt", "-o", "out", port=port, cwd=work)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["a.txt", "中文.txt"]


def test_put_into_a_missing_directory_needs_parents(port, work, tmp_path):
    (work / "f").write_text("x")
    result = run_cli("put", "f", "-d", "/not/there", port=port, cwd=work)
    assert result.returncode == 1 and "not_found" in result.stderr
    assert run_cli("put", "f", "-d", "/not/there", "--parents", port=port, cwd=work).returncode == 0
    assert (tmp_path / "storage" / "not" / "there" / "f").read_text() == "x"


def test_one_failure_does_not_stop_the_rest_and_exits_1(port, work, tmp_path):
    (work / "good.txt").write_text("good")
    result = run_cli("put", "missing.txt", "good.txt", port=port, cwd=work)
    assert result.returncode == 1
    assert_one_line_error(result, "put missing.txt: no such local file or directory")
    assert (tmp_path / "storage" / "good.txt").read_text() == "good"


def test_remote_errors_are_one_line_with_the_code(port, work):
    result = run_cli("get", "nope.txt", port=port, cwd=work)
    assert result.returncode == 1 and result.stdout == ""
    assert_one_line_error(result, "ftpclient: get nope.txt: not_found:")
    assert os.listdir(work) == []
    result = run_cli("get", "../etc/passwd", port=port, cwd=work)
    assert_one_line_error(result, "forbidden")


def test_json_output_parses(port, work):
    (work / "f.bin").write_bytes(b"x" * 1000)
    put = run_cli("--json", "put", "f.bin", port=port, cwd=work)
    record = json.loads(put.stdout)
    assert record["result"] == "ok" and record["size"] == 1000
    assert record["md5"] == hashlib.md5(b"x" * 1000).hexdigest()
    again = json.loads(run_cli("put", "f.bin", "--json", port=port, cwd=work).stdout)
    assert again["sent"] == 0
    ls = [json.loads(line) for line in run_cli("ls", "--json", port=port).stdout.splitlines()]
    assert ls == [
        {
            "path": "/f.bin",
            "name": "f.bin",
            "type": "file",
            "size": 1000,
            "mtime": ls[0]["mtime"],
            "mode": ls[0]["mode"],
        }
    ]
    assert isinstance(ls[0]["mode"], int) and not ls[0]["mode"] & 0o111
    stat = json.loads(run_cli("stat", "f.bin", "--json", port=port).stdout)
    assert stat["md5"] == record["md5"]
    failed = run_cli("get", "nope", "--json", port=port, cwd=work)
    assert json.loads(failed.stdout)["error"] == "not_found" and failed.returncode == 1


def test_quiet_prints_no_result_lines(port, work):
    (work / "f").write_text("x")
    result = run_cli("put", "-q", "f", port=port, cwd=work)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


def test_mkdir_rm_stat(port):
    assert run_cli("mkdir", "-p", "/a/b", port=port).returncode == 0
    assert "dir" in run_cli("stat", "/a/b", port=port).stdout
    assert run_cli("rm", "/a", port=port).returncode == 1  # not empty
    assert run_cli("rm", "/a/b", "/a", port=port).returncode == 0
    assert run_cli("ls", port=port).stdout == ""


def test_usage_errors_exit_2(port, work):
    assert run_cli(port=port).returncode == 2
    assert run_cli("frobnicate", port=port).returncode == 2
    assert run_cli("get", port=port).returncode == 2
    result = run_cli("get", "a", "b", "-o", "not-a-dir", port=port, cwd=work)
    assert result.returncode == 2 and "-o must be a directory" in result.stderr
    result = run_cli("ls", port=port, env={"SOCKFTP_PORT": "ninety"})
    assert result.returncode == 2 and "SOCKFTP_PORT" in result.stderr


def test_help_exits_0():
    result = subprocess.run(
        [sys.executable, "-m", "ftpclient", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and "usage: ftpclient" in result.stdout
    for args in (["get", "--help"], ["put", "--help"]):
        result = run_cli(*args, port=1)
        assert result.returncode == 0 and "usage: ftpclient" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "ftpserver", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and "--config" in result.stdout


def test_console_scripts_are_installed():
    for script in ("ftpserver", "ftpclient"):
        path = shutil.which(script) or os.path.join(os.path.dirname(sys.executable), script)
        result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and f"usage: {script}" in result.stdout


def test_a_run_without_bars_never_loads_tqdm(port, work):
    """tqdm's import is a sixth of a quiet run's start-up: it waits until a bar is drawn."""
    (work / "a.txt").write_text("a\n")
    code = (
        "import sys\n"
        "from ftpclient.cli import main\n"
        f"status = main(['--port', '{port}', 'put', 'a.txt'])\n"
        "sys.exit(10 + status if 'tqdm' in sys.modules else status)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=work,
        env=client_environ(port),
    )
    assert result.returncode == 0, result.stderr
    assert "a.txt" in result.stdout  # its result line, printed without tqdm


def test_the_installed_client_script_end_to_end(port, work):
    """The console script as a process: real streams, not a terminal, so no bar."""
    script = shutil.which("ftpclient") or os.path.join(os.path.dirname(sys.executable), "ftpclient")
    (work / "hello.txt").write_text("hello, world\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script, *args], capture_output=True, text=True, timeout=30, cwd=work, env=client_environ(port)
        )

    put = run("put", "hello.txt")
    assert put.returncode == 0 and put.stderr == "", put.stderr
    assert put.stdout.startswith("put: hello.txt -> /hello.txt: 13 B, md5 ")
    assert run("ls").stdout == "hello.txt\n"
    missing = run("get", "nope.txt")
    assert missing.returncode == 1 and missing.stderr.startswith("ftpclient: get nope.txt: not_found:")


def test_help_and_usage_errors_are_written_to_the_environment(capsys):
    """argparse's own output goes to env's streams too, and its exits become return values."""
    out, err = io.StringIO(), io.StringIO()
    env = Environment(stdin=io.StringIO(), stdout=out, stderr=err, environ=client_environ(1))
    assert main(["--help"], env) == 0
    assert out.getvalue().startswith("usage: ftpclient") and err.getvalue() == ""
    assert main(["put", "--help"], env) == 0 and "--from-file" in out.getvalue()
    assert main(["frobnicate"], env) == 2 and "invalid choice: 'frobnicate'" in err.getvalue()
    assert main(["get", "-j", "0", "x"], env) == 2 and "must be at least 1" in err.getvalue()
    assert capsys.readouterr() == ("", "")  # nothing reached the process's own streams


def test_connection_refused_is_one_line_and_exit_1():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    result = run_cli("ls", port=free_port)
    assert result.returncode == 1
    assert_one_line_error(result, f"cannot connect to 127.0.0.1:{free_port}")


def test_login_from_environment(port, work, tmp_path):
    (work / "f").write_text("alice's")
    env = {"SOCKFTP_USER": "alice", "SOCKFTP_PASSWORD": "alice-pw"}
    assert run_cli("put", "f", port=port, cwd=work, env=env).returncode == 0
    assert (tmp_path / "storage" / "alice" / "f").read_text() == "alice's"
    wrong = run_cli("ls", port=port, env={**env, "SOCKFTP_PASSWORD": "nope"})
    assert wrong.returncode == 1
    assert_one_line_error(wrong, "auth_failed")
    flag = run_cli("--user", "bob", "put", "f", port=port, cwd=work, env={"SOCKFTP_PASSWORD": "bob-pw"})
    assert_one_line_error(flag, "forbidden")
    nopass = run_cli("ls", "--user", "alice", port=port)
    assert nopass.returncode == 2 and "SOCKFTP_PASSWORD" in nopass.stderr


def test_the_password_prompt_uses_the_environment(port, tmp_path, capsys):
    (tmp_path / "storage" / "alice").mkdir(parents=True)
    (tmp_path / "storage" / "alice" / "mine").write_text("x")
    result = run_cli("--user", "alice", "ls", port=port, input="alice-pw\n", terminal=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "Password for alice: " and result.stdout == "mine\n"
    assert capsys.readouterr() == ("", "")  # asked on the run's streams, not the process's


# -- the server's commands, and the server process ------------------------------------


@pytest.fixture
def ftpserver_command(monkeypatch, capsys) -> Callable[..., CliResult]:
    """`ftpserver ARGS` in this process, by its `main(argv)`, with `input` as stdin:
    for the commands that do not serve (adduser)."""

    def run(*args: str, input: str = "") -> CliResult:
        monkeypatch.setattr(sys, "stdin", io.StringIO(input))
        capsys.readouterr()
        status = ftpserver_main(list(args))
        out, err = capsys.readouterr()
        return CliResult(["ftpserver", *args], status, out, err)

    return run


def test_adduser_stores_a_hash_and_the_user_can_log_in(tmp_path, serve, work, ftpserver_command):
    config = write_config(tmp_path)
    adduser = ftpserver_command(
        "adduser", "dave", "--config", str(config), "--password-stdin", input="dave's secret\n"
    )
    assert adduser.returncode == 0, adduser.stderr
    assert (tmp_path / "users.yaml").stat().st_mode & 0o777 == 0o600
    users_text = (tmp_path / "users.yaml").read_text()
    assert "dave" in users_text and "dave's secret" not in users_text and "scrypt$" in users_text
    assert "alice" in users_text  # other users are kept
    port = serve(load_config(config)).port  # the users file as adduser left it
    (work / "f").write_text("x")
    env = {"SOCKFTP_USER": "dave", "SOCKFTP_PASSWORD": "dave's secret"}
    assert run_cli("put", "f", port=port, cwd=work, env=env).returncode == 0
    assert (tmp_path / "storage" / "dave" / "f").exists()


def test_adduser_without_a_terminal_or_stdin_flag_refuses(tmp_path, ftpserver_command):
    config = write_config(tmp_path)
    result = ftpserver_command("adduser", "eve", "--config", str(config))  # stdin: no terminal
    assert result.returncode == 1 and "--password-stdin" in result.stderr


def test_config_errors_name_the_file_and_key(tmp_path):
    config = write_config(tmp_path, limits={"idle_timeout": "soon"})
    result = subprocess.run(
        [sys.executable, "-m", "ftpserver", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"{config}: limits.idle_timeout: must be a number" in result.stderr
    assert "Traceback" not in result.stderr


def test_server_starts_the_same_from_any_directory(tmp_path, server_process, work):
    write_config(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftpserver", "--config", "../server.yaml", "--port", "0"],
        cwd=elsewhere,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stderr.readline() for _ in range(2)]  # a warning may come first
        assert any(f"storage {tmp_path / 'storage'}" in line for line in lines)
    finally:
        proc.terminate()
        proc.wait(10)


def test_logs_connection_login_and_transfer_lines_without_passwords(work, server_process, config_path):
    proc = server_process(config_path)
    (work / "f").write_bytes(b"z" * 12345)
    env = {"SOCKFTP_USER": "alice", "SOCKFTP_PASSWORD": "alice-pw"}
    run_cli("put", "f", port=proc.port, cwd=work, env=env)
    run_cli("ls", port=proc.port, env={**env, "SOCKFTP_PASSWORD": "wrong-pw"})
    time.sleep(0.2)
    log = "".join(proc.log)
    assert "connect 127.0.0.1:" in log and "login 127.0.0.1:" in log and "login failed" in log
    assert "transfer put" in log and "bytes=12345" in log and "seconds=" in log and "result=ok" in log
    assert "alice-pw" not in log and "wrong-pw" not in log


def test_warns_when_anonymous_can_write_beyond_loopback(tmp_path, server_process):
    proc = server_process(write_config(tmp_path), "--host", "0.0.0.0")
    assert "anonymous users may write" in "".join(proc.log)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_a_running_upload_finish_then_exits_0(tmp_path, server_process, sig):
    proc = server_process(write_config(tmp_path))
    data = os.urandom(200_000)
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        stream = FrameStream(sock)
        stream.recv()
        stream.send({"op": "put", "path": "f", "size": len(data), "md5": hashlib.md5(data).hexdigest()})
        assert stream.recv()["offset"] == 0
        sock.sendall(data[:100_000])
        proc.process.send_signal(sig)
        time.sleep(0.5)
        sock.sendall(data[100_000:])
        assert stream.recv()["ok"]
    assert proc.process.wait(10) == 0
    assert (tmp_path / "storage" / "f").read_bytes() == data


@pytest.mark.parametrize(
    "name, extra, message",
    [
        ("mallory", ["--home", "../../etc"], "outside the storage root"),
        ("gina", ["--home", ".sockftp"], "server's own .sockftp folder"),
        ("", [], "a user name is"),
        ("bad/name", [], "a user name is"),
        ("x y", [], "a user name is"),
    ],
)
def test_adduser_refuses_bad_users_without_touching_the_file(
    tmp_path, ftpserver_command, name, extra, message
):
    config = write_config(tmp_path)
    before = (tmp_path / "users.yaml").read_text()
    result = ftpserver_command(
        "adduser", name, "--config", str(config), "--password-stdin", *extra, input="pw\n"
    )
    assert result.returncode == 2 and message in result.stderr
    assert (tmp_path / "users.yaml").read_text() == before
