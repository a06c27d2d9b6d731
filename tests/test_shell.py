"""`ftpclient shell`: commands from stdin through the CLI's `main()`, and remote tab completion."""

from __future__ import annotations

import io

import pytest

from ftpclient import Client
from ftpclient.environment import Environment
from ftpclient.shell import Shell

from .conftest import run_cli

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def port(make_config, serve):
    return serve(make_config()).port


def test_a_scripted_session(port, tmp_path):
    (tmp_path / "local.txt").write_text("from the shell")
    script = "\n".join(
        [
            "mkdir docs/2026",
            "cd docs",
            "pwd",
            "put local.txt",
            "ls",
            "cd 2026",
            "pwd",
            "cd ..",
            "get local.txt back.txt",
            "rm local.txt",
            "ls",
            "exit",
        ]
    )
    result = run_cli("shell", port=port, cwd=tmp_path, input=script + "\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "/docs"
    assert "2026/" in lines and "local.txt" in lines
    assert "/docs/2026" in lines
    assert (tmp_path / "back.txt").read_text() == "from the shell"
    assert lines[-1] == "2026/"  # the last ls, after rm


def test_errors_are_one_line_and_the_session_goes_on(port, tmp_path):
    result = run_cli(
        "shell", port=port, cwd=tmp_path, input="cd nowhere\nfrobnicate\nget ../x\nmkdir ok\nls\n"
    )
    assert result.returncode == 1  # some command failed
    errors = result.stderr.splitlines()
    assert errors[0].startswith("error: not_found:") and "unknown command 'frobnicate'" in errors[1]
    assert errors[2].startswith("error: forbidden:") and "Traceback" not in result.stderr
    assert result.stdout.splitlines() == ["ok/"]


def test_tab_completion_of_remote_names(tmp_path, port):
    storage = tmp_path / "storage"
    (storage / "reports").mkdir()
    (storage / "reports" / "q1.pdf").write_bytes(b"1")
    (storage / "reports" / "q2.pdf").write_bytes(b"2")
    (storage / "readme.txt").write_bytes(b"r")
    with Client("127.0.0.1", port, timeout=10) as client:
        shell = Shell(client, Environment(stdin=io.StringIO(), stdout=io.StringIO()))
        assert sorted(shell.completedefault("re", "get re", 4, 6)) == ["readme.txt", "reports/"]
        assert sorted(shell.complete_get("reports/q", "get reports/q", 4, 13)) == [
            "reports/q1.pdf",
            "reports/q2.pdf",
        ]
        shell.onecmd("cd reports")
        assert shell.complete_ls("q2", "ls q2", 3, 5) == ["q2.pdf"]
        assert shell.complete_cd("../re", "cd ../re", 3, 8) == ["../readme.txt", "../reports/"]


def test_ls_long_help_and_local_errors(port, tmp_path):
    (tmp_path / "f.txt").write_text("x")
    result = run_cli("shell", port=port, cwd=tmp_path, input="put f.txt\nls -l\nput missing.bin\nhelp\n")
    assert result.returncode == 1
    assert any(line.startswith("f ") and line.endswith("f.txt") for line in result.stdout.splitlines())
    assert "error: missing.bin: No such file or directory" in result.stderr
    assert "EOF" not in result.stdout and "quit" not in result.stdout
