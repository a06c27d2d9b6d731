"""`ftpclient sync` both ways, in-process against a server in a thread: a second sync
moves nothing, --delete removes what the source lost (and --dry-run only says so),
--checksum, and a plain v1 server, where times cannot be kept."""

from __future__ import annotations

import json
import os

import pytest

from ftpclient.sync import Side, plan_sync

from .conftest import CountingClient, run_cli

pytestmark = pytest.mark.timeout(60)


def make_site(root) -> None:
    (root / "css").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "css" / "site.css").write_text("body {}")
    (root / "big.bin").write_bytes(os.urandom(200_000))


def records(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_upload_then_again_moves_nothing_then_only_the_change(server, tmp_path):
    site = tmp_path / "site"
    make_site(site)
    first = run_cli("sync", "site", ":/www", "--json", port=server.port, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert records(first)[-1]["sent"] == 3
    www = server.root / "www"
    assert (www / "css" / "site.css").read_text() == "body {}" and (www / "empty").is_dir()
    assert abs((www / "index.html").stat().st_mtime - (site / "index.html").stat().st_mtime) < 1e-3
    second = run_cli("sync", "site", ":/www", "--json", port=server.port, cwd=tmp_path)
    assert [(r["op"], r["sent"], r["skipped"], r["bytes"]) for r in records(second)] == [("summary", 0, 3, 0)]
    os.utime(site / "index.html", (1_000_000, 1_000_000))  # same size, other time: sent again
    (site / "css" / "site.css").write_text("body { color: red }")
    third = run_cli("sync", "site", ":/www", port=server.port, cwd=tmp_path)
    assert third.returncode == 0 and third.stdout.splitlines()[-1].startswith("sent 1 files, skipped 2")
    assert "index.html: identical file already there, nothing sent; time and mode set" in third.stdout
    assert (www / "index.html").stat().st_mtime == 1_000_000


def test_download_then_again_moves_nothing(server, tmp_path):
    make_site(server.root / "www")
    first = run_cli("sync", ":/www", "copy", port=server.port, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1].startswith("fetched 3 files")
    assert (tmp_path / "copy" / "css" / "site.css").read_text() == "body {}"
    assert (tmp_path / "copy" / "empty").is_dir()
    second = run_cli("sync", ":/www", "copy", "--json", port=server.port, cwd=tmp_path)
    assert [(r["sent"], r["skipped"]) for r in records(second)] == [(0, 3)]


def test_delete_dry_run_lists_and_deletes_nothing_then_deletes(server, tmp_path):
    site = tmp_path / "site"
    make_site(site)
    assert run_cli("sync", "site", ":/www", port=server.port, cwd=tmp_path).returncode == 0
    (site / "big.bin").unlink()
    for path in (site / "css" / "site.css", site / "css"):
        path.unlink() if path.is_file() else path.rmdir()
    www = server.root / "www"
    (www / "stray.txt").write_text("only on the server")
    dry = run_cli("sync", "site", ":/www", "--delete", "--dry-run", port=server.port, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    deletes = sorted(line for line in dry.stdout.splitlines() if line.startswith("delete:"))
    assert deletes == [
        "delete: /www/big.bin: would delete",
        "delete: /www/css: would delete",
        "delete: /www/stray.txt: would delete",
    ]
    assert "nothing changed" in dry.stdout.splitlines()[-1] and "delete 3" in dry.stdout.splitlines()[-1]
    assert (www / "big.bin").exists() and (www / "css" / "site.css").exists()
    real = run_cli("sync", "site", ":/www", "--delete", "--json", port=server.port, cwd=tmp_path)
    assert real.returncode == 0 and records(real)[-1]["deleted"] == 3
    assert sorted(os.listdir(www)) == ["empty", "index.html"]
    back = tmp_path / "back"
    assert run_cli("sync", ":/www", "back", port=server.port, cwd=tmp_path).returncode == 0
    (back / "local-only").write_text("x")
    down = run_cli("sync", ":/www", "back", "--delete", port=server.port, cwd=tmp_path)
    assert down.returncode == 0 and not (back / "local-only").exists() and (back / "index.html").exists()


def test_checksum_compares_content_not_time(server, tmp_path):
    site = tmp_path / "site"
    make_site(site)
    assert run_cli("sync", "site", ":/www", port=server.port, cwd=tmp_path).returncode == 0
    os.utime(site / "index.html", (1_000_000, 1_000_000))  # only the time changed
    by_md5 = run_cli("sync", "site", ":/www", "--checksum", "--json", port=server.port, cwd=tmp_path)
    assert [(r["sent"], r["skipped"]) for r in records(by_md5)] == [(0, 3)]
    (site / "index.html").write_text("<h1>HOME</h1>")  # same size, other bytes
    os.utime(site / "index.html", (1_000_000, 1_000_000))
    changed = run_cli("sync", "site", ":/www", "--checksum", "--json", port=server.port, cwd=tmp_path)
    assert records(changed)[-1]["sent"] == 1
    assert (server.root / "www" / "index.html").read_text() == "<h1>HOME</h1>"


@pytest.mark.parametrize("listing", [True, False], ids=["ls-md5", "stats"])
def test_a_checksum_sync_takes_the_servers_md5s_from_its_listings(server, tmp_path, monkeypatch, listing):
    site = tmp_path / "site"
    make_site(site)
    assert run_cli("sync", "site", ":/www", port=server.port, cwd=tmp_path).returncode == 0
    (server.root / "www" / "css" / "site.css").write_text("body {}")  # rewritten by hand: not known
    monkeypatch.chdir(tmp_path)
    without = frozenset() if listing else frozenset({"ls-md5"})
    with CountingClient("127.0.0.1", server.port, timeout=10, without=without) as client:
        plan = plan_sync(client, Side.parse("site"), Side.parse(":/www"), checksum=True)
    assert plan.jobs == [] and plan.unchanged == 3
    # The root, then only the file the server has not read since it changed (or every file).
    assert client.sent["stat"] == (1 + 1 if listing else 1 + 3)


def test_wrong_input(server, tmp_path):
    (tmp_path / "file").write_text("x")
    assert run_cli("sync", "a", "b", port=server.port, cwd=tmp_path).returncode == 2  # no remote side
    assert run_cli("sync", ":/a", ":/b", port=server.port, cwd=tmp_path).returncode == 2
    missing = run_cli("sync", "nowhere", ":/www", port=server.port, cwd=tmp_path)
    assert missing.returncode == 1 and "no such directory here" in missing.stderr
    assert run_cli("sync", "file", ":/www", port=server.port, cwd=tmp_path).returncode == 2
    assert run_cli("sync", ":/../x", "here", port=server.port, cwd=tmp_path).returncode == 2
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "f").write_text("f")
    readonly = run_cli(
        "sync",
        "site",
        ":/www",
        port=server.port,
        cwd=tmp_path,
        env={"SOCKFTP_USER": "bob", "SOCKFTP_PASSWORD": "bob-pw"},
    )
    assert readonly.returncode == 1 and "forbidden" in readonly.stderr


def test_against_a_plain_v1_server_sync_compares_by_md5(v1_server, tmp_path):
    site = tmp_path / "site"
    make_site(site)
    first = run_cli("sync", "site", ":/www", port=v1_server.port, cwd=tmp_path)
    assert first.returncode == 0 and "compares by MD5" in first.stderr and len(first.stderr.splitlines()) == 1
    second = run_cli("sync", "site", ":/www", "--json", "--delete", port=v1_server.port, cwd=tmp_path)
    assert [(r["sent"], r["skipped"]) for r in records(second)] == [(0, 3)]
    (site / "css" / "site.css").unlink()
    (site / "css").rmdir()
    third = run_cli("sync", "site", ":/www", "--delete", port=v1_server.port, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert not (v1_server.root / "www" / "css").exists()  # emptied one by one, without rm -r
