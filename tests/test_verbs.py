"""The verbs and flags of issue 11 through the command line, in-process against a server
in a thread: mv, rm -r, ls -R/-h, df, cat, get -o -, put -, -p, --links, --version,
scp-style destinations and options anywhere. Each with its wrong input: a missing
file, no permission, a non-empty directory, and a server that greets as plain v1."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from ftpclient.cli import EXAMPLES

from .conftest import run_cli, run_cli_bytes

pytestmark = pytest.mark.timeout(60)

ALICE = {"SOCKFTP_USER": "alice", "SOCKFTP_PASSWORD": "alice-pw"}
BOB = {"SOCKFTP_USER": "bob", "SOCKFTP_PASSWORD": "bob-pw"}  # read-only
CAROL = {"SOCKFTP_USER": "carol", "SOCKFTP_PASSWORD": "carol-pw"}  # quota 1000


@pytest.fixture
def port(server):
    return server.port


@pytest.fixture
def home(server):
    """alice's home on the server's disk, with a small tree in it."""
    root = server.root / "alice"
    (root / "docs" / "old").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("a" * 1500)
    (root / "docs" / "old" / "b.txt").write_text("b")
    return root


def lines(result) -> list[str]:
    return result.stdout.splitlines()


def test_mv_renames_moves_into_directories_and_refuses_to_clobber(port, home):
    assert run_cli("mv", "/docs/a.txt", "/docs/c.txt", port=port, env=ALICE).returncode == 0
    assert (home / "docs" / "c.txt").exists() and not (home / "docs" / "a.txt").exists()
    moved = run_cli("mv", "/docs/c.txt", "/docs/old/", port=port, env=ALICE)
    assert moved.returncode == 0 and moved.stdout == "mv: /docs/c.txt -> /docs/old/c.txt\n"
    (home / "x").write_text("x")
    refused = run_cli("mv", "/x", "/docs/old/b.txt", port=port, env=ALICE)
    assert refused.returncode == 1 and "exists" in refused.stderr and "mv -f" in refused.stderr
    assert (home / "docs" / "old" / "b.txt").read_text() == "b"
    assert run_cli("mv", "-f", "/x", "/docs/old/b.txt", port=port, env=ALICE).returncode == 0
    assert (home / "docs" / "old" / "b.txt").read_text() == "x"
    missing = run_cli("mv", "/nope", "/y", port=port, env=ALICE)
    assert missing.returncode == 1 and "ftpclient: mv /nope: not_found" in missing.stderr
    assert run_cli("mv", "/docs", port=port, env=ALICE).returncode == 2
    several = run_cli("mv", "/docs/old/b.txt", "/docs/old/c.txt", "/new", port=port, env=ALICE)
    assert several.returncode == 2 and "must be a directory" in several.stderr
    readonly = run_cli("mv", "/alice/docs", "/alice/d2", port=port, env=BOB)
    assert readonly.returncode == 1 and "forbidden" in readonly.stderr


def test_rm_r_removes_a_tree_and_plain_rm_says_how(port, home):
    plain = run_cli("rm", "/docs", port=port, env=ALICE)
    assert plain.returncode == 1 and "not_empty" in plain.stderr and "rm -r" in plain.stderr
    assert run_cli("rm", "-r", "/docs", port=port, env=ALICE).returncode == 0
    assert not (home / "docs").exists()
    assert "not_found" in run_cli("rm", "-r", "/docs", port=port, env=ALICE).stderr
    (home / "keep").mkdir()
    readonly = run_cli("rm", "-r", "/alice/keep", port=port, env=BOB)
    assert readonly.returncode == 1 and "forbidden" in readonly.stderr and (home / "keep").is_dir()


def test_ls_recursive_and_human_sizes(port, home):
    tree = run_cli("ls", "-R", "/docs", port=port, env=ALICE)
    assert lines(tree) == ["a.txt", "old/", "old/b.txt"]
    human = run_cli("ls", "-lh", "/docs", port=port, env=ALICE)
    assert lines(human)[0].split()[:2] == ["f", "1.5"] and "KiB" in lines(human)[0]
    assert lines(run_cli("ls", "-h", "/docs", port=port, env=ALICE)) == lines(human)  # -h shows sizes: -l
    raw = run_cli("ls", "-l", "/docs", port=port, env=ALICE)
    assert lines(raw)[0].split()[1] == "1500"
    both = run_cli("ls", "-lR", "/docs", "--json", port=port, env=ALICE)
    assert [json.loads(line)["path"] for line in lines(both)] == [
        "/docs/a.txt",
        "/docs/old",
        "/docs/old/b.txt",
    ]
    assert "not_found" in run_cli("ls", "-R", "/nope", port=port, env=ALICE).stderr
    assert run_cli("ls", "--help", port=port).stdout.startswith("usage: ftpclient ls")


def test_df_shows_usage_and_quota(port, tmp_path):
    (tmp_path / "f").write_bytes(b"z" * 400)
    assert run_cli("put", "f", port=port, env=CAROL, cwd=tmp_path).returncode == 0
    df = run_cli("df", port=port, env=CAROL)
    assert df.returncode == 0
    header, row = lines(df)
    assert header.split() == ["used", "quota", "free", "disk", "free"] and row.split()[:3] == [
        "400",
        "1000",
        "600",
    ]
    record = json.loads(run_cli("df", "--json", port=port, env=CAROL).stdout)
    assert (record["used"], record["quota"], record["free"]) == (400, 1000, 600)
    human = run_cli("df", "-h", port=port, env=CAROL)
    assert "400 B" in human.stdout and "1000 B" in human.stdout
    anonymous = run_cli("df", port=port)
    assert anonymous.returncode == 0 and lines(anonymous)[1].split()[1] == "-"  # no quota


def test_cat_and_get_to_stdout_verify_and_concatenate(port, server):
    data = os.urandom(300_000)
    (server.root / "one.bin").write_bytes(data)
    (server.root / "two.txt").write_bytes(b"two\n")
    result, out = run_cli_bytes("cat", "/one.bin", "/two.txt", port=port)
    assert result.returncode == 0 and out == data + b"two\n" and result.stderr == ""
    result, out = run_cli_bytes("get", "/two.txt", "-o", "-", port=port)
    assert result.returncode == 0 and out == b"two\n"
    result, out = run_cli_bytes("cat", "/missing", "/two.txt", port=port)
    assert result.returncode == 1 and out == b"two\n" and "cat /missing: not_found" in result.stderr
    result, _ = run_cli_bytes("get", "-r", "/", "-o", "-", port=port)
    assert result.returncode == 2
    dir_result, _ = run_cli_bytes("cat", "/", port=port)
    assert dir_result.returncode == 1 and "is_a_directory" in dir_result.stderr


def test_put_from_stdin_spools_and_names_the_remote_file(port, server, tmp_path):
    data = os.urandom(2_500_000)
    result, _ = run_cli_bytes("put", "-", "/in/stdin.bin", "--parents", port=port, input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("put: - -> /in/stdin.bin: 2.4 MiB, md5 " + hashlib.md5(data).hexdigest())
    assert (server.root / "in" / "stdin.bin").read_bytes() == data
    result, _ = run_cli_bytes("put", "-", "copy.bin", "-d", "/in", port=port, input=b"small")
    assert result.returncode == 0 and (server.root / "in" / "copy.bin").read_bytes() == b"small"
    assert run_cli_bytes("put", "-", "/in/", port=port, input=b"x")[0].returncode == 2  # a directory
    assert run_cli_bytes("put", "-", port=port, input=b"x")[0].returncode == 2  # no name
    assert run_cli_bytes("put", "-", "/x", "-p", port=port, input=b"x")[0].returncode == 2
    readonly, _ = run_cli_bytes("put", "-", "/bob.txt", port=port, input=b"x", env=BOB)
    assert readonly.returncode == 1 and "forbidden" in readonly.stderr
    assert not list(tmp_path.glob("sockftp-stdin-*"))


def test_preserve_keeps_times_and_execute_bits_both_ways(port, server, tmp_path):
    when = 1_500_000_000.5
    tool = tmp_path / "tool.sh"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    os.utime(tool, (when, when))
    assert run_cli("put", "-p", "tool.sh", port=port, cwd=tmp_path).returncode == 0
    stored = server.root / "tool.sh"
    assert abs(stored.stat().st_mtime - when) < 1e-3 and stored.stat().st_mode & 0o100
    out = tmp_path / "out"
    result = run_cli("get", "/tool.sh", "out/", "-p", port=port, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert abs((out / "tool.sh").stat().st_mtime - when) < 1e-3 and (out / "tool.sh").stat().st_mode & 0o100
    plain = run_cli("get", "/tool.sh", "-o", "plain.sh", port=port, cwd=tmp_path)
    assert plain.returncode == 0 and abs((tmp_path / "plain.sh").stat().st_mtime - time.time()) < 60


def test_a_server_without_the_extensions_is_said_so(v1_server, tmp_path):
    port = v1_server.port
    (v1_server.root / "d").mkdir()
    (v1_server.root / "d" / "f").write_text("f")
    for args in (("mv", "/d/f", "/g"), ("rm", "-r", "/d"), ("df",)):
        result = run_cli(*args, port=port)
        assert result.returncode == 1 and "unknown_op" in result.stderr, args
        assert "does not offer" in result.stderr and len(result.stderr.splitlines()) == 1
    assert (v1_server.root / "d" / "f").exists()
    (tmp_path / "t").write_text("t")
    put = run_cli("put", "-p", "t", port=port, cwd=tmp_path)
    assert put.returncode == 0 and put.stderr.count("\n") == 1 and "-p is ignored" in put.stderr
    assert (v1_server.root / "t").read_text() == "t"
    get = run_cli("get", "-p", "/t", "-o", "back", port=port, cwd=tmp_path)
    assert get.returncode == 0 and "-p is ignored" in get.stderr and (tmp_path / "back").read_text() == "t"


def test_links_outside_the_tree_are_skipped_and_said(port, server, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "real.txt").write_text("real")
    (tree / "inside").symlink_to("sub/real.txt")
    (tree / "passwd").symlink_to("/etc/passwd")
    (tree / "etc").symlink_to("/etc")
    (tree / "loop").symlink_to(".")
    result = run_cli("put", "-r", "tree", port=port, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    skipped = [line for line in lines(result) if ": skipped: " in line]
    assert len(skipped) == 3 and all("tree/" in line for line in skipped)
    assert sum("points outside the tree" in line for line in skipped) == 2
    assert any("loop" in line and "loops back" in line for line in skipped)
    assert (server.root / "tree" / "inside").read_text() == "real"
    assert not (server.root / "tree" / "passwd").exists() and not (server.root / "tree" / "etc").exists()
    assert "skipped 3, failed 0" in lines(result)[-1]  # the two real files: sent, or one linked
    skip = run_cli(
        "put", "-r", "tree", "-d", "/skip", "--parents", "--links", "skip", port=port, cwd=tmp_path
    )
    assert skip.returncode == 0 and not (server.root / "skip" / "tree" / "inside").exists()
    (tree / "etc").unlink()  # followed, it would upload all of /etc
    follow = run_cli(
        "put", "-r", "tree", "-d", "/all", "--parents", "--links", "follow", port=port, cwd=tmp_path
    )
    assert follow.returncode == 0 and (server.root / "all" / "tree" / "passwd").exists()
    assert run_cli("put", "-r", "tree", "--links", "maybe", port=port, cwd=tmp_path).returncode == 2


def test_scp_style_destinations_and_hints(port, server, tmp_path):
    (server.root / "hello.txt").write_text("hello")
    (server.root / "multi").mkdir()
    work = tmp_path / "w"
    work.mkdir()
    into_dir = run_cli("get", "/hello.txt", str(work), port=port, cwd=tmp_path)
    assert into_dir.returncode == 0 and (work / "hello.txt").read_text() == "hello"
    named = run_cli("get", ":/hello.txt", str(work / "x.txt"), port=port, cwd=tmp_path)
    assert named.returncode == 0 and (work / "x.txt").read_text() == "hello"
    new_dir = run_cli("get", "/hello.txt", "fresh/", port=port, cwd=tmp_path)
    assert new_dir.returncode == 0 and (tmp_path / "fresh" / "hello.txt").read_text() == "hello"
    ambiguous = run_cli("get", "/hello.txt", "/tmp/w/x.txt", port=port, cwd=tmp_path)
    assert ambiguous.returncode == 2 and "-o /tmp/w/x.txt" in ambiguous.stderr
    assert not (tmp_path / "hello.txt").exists()  # nothing fetched before the refusal
    (tmp_path / "f4.dat").write_text("f4")
    hint = run_cli("put", "f4.dat", "/multi", port=port, cwd=tmp_path)
    assert hint.returncode == 2 and "no local file /multi" in hint.stderr and "-d /multi" in hint.stderr
    assert run_cli("put", "f4.dat", ":/multi", port=port, cwd=tmp_path).returncode == 0
    assert (server.root / "multi" / "f4.dat").read_text() == "f4"
    assert run_cli("put", "f4.dat", "/multi/", port=port, cwd=tmp_path).returncode == 0
    renamed = run_cli("put", "f4.dat", ":/multi/renamed.dat", port=port, cwd=tmp_path)
    assert renamed.returncode == 0 and (server.root / "multi" / "renamed.dat").read_text() == "f4"
    missing = run_cli("put", "nothing.dat", ":/multi", port=port, cwd=tmp_path)
    assert missing.returncode == 1 and "no such local file" in missing.stderr


def test_options_anywhere_on_the_line_and_version(port, tmp_path, server):
    (tmp_path / "x").write_text("x")
    result = run_cli("--retries", "2", "-j", "1", "put", "x", "--json", port=port, cwd=tmp_path)
    assert result.returncode == 0 and json.loads(result.stdout)["result"] == "ok"
    assert run_cli("--dry-run", "get", "/x", port=port, cwd=tmp_path).returncode == 0
    assert run_cli("--host", "ls", "ls", port=port).returncode == 1  # "ls" was the host's value
    version = run_cli("--version", port=port)
    assert version.returncode == 0 and version.stdout.startswith("ftpclient (sockftp) ")
    assert run_cli("--frobnicate", "ls", port=port).returncode == 2


def test_every_subcommand_help_shows_an_example(port):
    for command in EXAMPLES:
        result = run_cli(command, "--help", port=port)
        assert (
            result.returncode == 0 and "example" in result.stdout and "ftpclient " + command in result.stdout
        )
