"""Remembered checksums and instant uploads (server side of the performance work)."""

from __future__ import annotations

import hashlib
import os
import sqlite3

import pytest

from ftpclient import Client
from ftpproto import QuotaExceededError
from ftpserver.storage.checksums import LOOKUP_BATCH, ChecksumCache

pytestmark = pytest.mark.timeout(30)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def connect(server, user: str | None = None) -> Client:
    password = {"alice": "alice-pw", "carol": "carol-pw"}.get(user or "")
    return Client("127.0.0.1", server.port, user=user, password=password, timeout=10)


def rewrite_in_place_keeping_stat(path, data: bytes) -> None:
    """Change a file's bytes behind the server's back without changing size, mtime or inode."""
    before = os.stat(path)
    with open(path, "r+b") as file:
        file.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_served_file_is_not_hashed_again(server, tmp_path):
    (tmp_path / "f").write_bytes(b"original")
    with connect(server) as client:
        client.put(tmp_path / "f", "/f")
        rewrite_in_place_keeping_stat(server.root / "f", b"ORIGINAL")
        # The remembered MD5 is served: proof that the server did not hash the file again.
        assert client.stat("/f").md5 == md5(b"original")


def test_a_file_changed_behind_the_servers_back_is_hashed_again(server, tmp_path):
    (tmp_path / "f").write_bytes(b"original")
    with connect(server) as client:
        client.put(tmp_path / "f", "/f")
        (server.root / "f").write_bytes(b"changed, longer")
        assert client.stat("/f").md5 == md5(b"changed, longer")
        got = client.get("/f", tmp_path / "copy")
        assert got.md5 == md5(b"changed, longer") and (tmp_path / "copy").read_bytes() == b"changed, longer"


def test_a_file_put_on_disk_by_hand_is_hashed_once_then_remembered(server):
    (server.root / "f").write_bytes(b"by hand")
    with connect(server) as client:
        assert client.stat("/f").md5 == md5(b"by hand")
        rewrite_in_place_keeping_stat(server.root / "f", b"BY HAND")
        assert client.stat("/f").md5 == md5(b"by hand")


def test_a_listing_with_md5_gives_what_is_remembered_and_nothing_stale(server, tmp_path):
    (tmp_path / "f").write_bytes(b"stored")
    (server.root / "d").mkdir()
    (server.root / "d" / "by-hand").write_bytes(b"by hand")
    (server.root / "d" / "sub").mkdir()
    with connect(server) as client:
        client.put(tmp_path / "f", "/d/stored")
        listed = {entry.name: entry.md5 for entry in client.ls("/d", md5=True)}
        # Stored by the server: known. Copied in by hand: not known until something reads it.
        assert listed == {"stored": md5(b"stored"), "by-hand": None, "sub": None}
        assert client.stat("/d/by-hand").md5 == md5(b"by hand")
        assert client.ls("/d/by-hand", md5=True)[0].md5 == md5(b"by hand")
        # What the cache says is only used while size, mtime and inode match.
        (server.root / "d" / "stored").write_bytes(b"STORED")  # same size, new mtime
        os.utime(server.root / "d" / "stored", ns=(0, 10**18))
        assert {entry.name: entry.md5 for entry in client.ls("/d", md5=True)}["stored"] is None
        assert all(entry.md5 is None for entry in client.ls("/d"))  # a plain listing has none


def test_deleting_the_database_loses_nothing_but_time(make_config, serve, tmp_path):
    config = make_config()
    first = serve(config)
    (tmp_path / "f").write_bytes(b"data")
    with connect(first) as client:
        client.put(tmp_path / "f", "/f")
    first.server.stop()
    database = config.storage_root / ".sockftp" / "checksums.sqlite"
    assert database.exists()
    for leftover in database.parent.iterdir():
        leftover.unlink()
    second = serve(config)
    with connect(second) as client:
        assert client.stat("/f").md5 == md5(b"data")
    rows = sqlite3.connect(database).execute("SELECT md5 FROM checksums").fetchall()
    assert rows == [(md5(b"data"),)]


def test_a_corrupt_database_is_replaced(make_config, serve, tmp_path):
    config = make_config()
    database = config.storage_root / ".sockftp" / "checksums.sqlite"
    database.parent.mkdir()
    database.write_bytes(b"this is not a database" * 100)
    running = serve(config)
    (running.root / "f").write_bytes(b"data")
    with connect(running) as client:
        assert client.stat("/f").md5 == md5(b"data")


def test_instant_upload_within_a_users_home_sends_nothing(server, tmp_path):
    data = os.urandom(500_000)
    (tmp_path / "f").write_bytes(data)
    with connect(server, "alice") as client:
        assert client.put(tmp_path / "f", "/first").sent == len(data)
        second = client.put(tmp_path / "f", "/elsewhere/second", parents=True)
    assert second.sent == 0 and second.size == len(data)
    home = server.root / "alice"
    assert (home / "elsewhere" / "second").read_bytes() == data
    assert os.stat(home / "first").st_ino == os.stat(home / "elsewhere" / "second").st_ino
    assert not [n for n in os.listdir(home / "elsewhere") if n.startswith(".sockftp")]


def test_replacing_an_instant_copy_leaves_the_original_intact(server, tmp_path):
    (tmp_path / "f").write_bytes(b"shared bytes")
    (tmp_path / "g").write_bytes(b"new bytes")
    with connect(server, "alice") as client:
        client.put(tmp_path / "f", "/a")
        client.put(tmp_path / "f", "/b")
        client.put(tmp_path / "g", "/b")
        assert client.stat("/a").md5 == md5(b"shared bytes")
    assert (server.root / "alice" / "a").read_bytes() == b"shared bytes"


def test_instant_upload_never_crosses_users(server, tmp_path):
    data = os.urandom(200)
    (tmp_path / "f").write_bytes(data)
    with connect(server, "alice") as alice:
        alice.put(tmp_path / "f", "/alice-file")
    with connect(server, "carol") as carol:
        transfer = carol.put(tmp_path / "f", "/carol-file")
    assert transfer.sent == len(data)
    assert (
        os.stat(server.root / "carol" / "carol-file").st_ino
        != os.stat(server.root / "alice" / "alice-file").st_ino
    )


def test_a_source_changed_behind_the_servers_back_is_not_used(server, tmp_path):
    (tmp_path / "f").write_bytes(b"original!")
    with connect(server, "alice") as client:
        client.put(tmp_path / "f", "/a")
        (server.root / "alice" / "a").write_bytes(b"tampered")
        transfer = client.put(tmp_path / "f", "/b")
    assert transfer.sent == len(b"original!")
    assert (server.root / "alice" / "b").read_bytes() == b"original!"


def test_instant_upload_respects_the_quota(server, tmp_path):
    (tmp_path / "f").write_bytes(b"q" * 600)
    with connect(server, "carol") as client:
        client.put(tmp_path / "f", "/a")
        with pytest.raises(QuotaExceededError):
            client.put(tmp_path / "f", "/b")
    assert not (server.root / "carol" / "b").exists()


def test_a_group_commit_records_every_files_checksum_in_one_transaction(tmp_path):
    cache = ChecksumCache(tmp_path / "checksums.sqlite")
    files = {f"d/f{i}": os.urandom(100 + i) for i in range(5)}
    rows = []
    for name, data in files.items():
        path = tmp_path / name.replace("/", "_")
        path.write_bytes(data)
        rows.append((name, os.stat(path), hashlib.md5(data).hexdigest()))
    bad = ("d/\udcff", rows[0][1], "0" * 32)  # not UTF-8: sqlite refuses the whole statement
    cache.record_many([*rows[:2], bad])
    assert all(cache.lookup(name, st) is None for name, st, _ in rows)  # nothing half-recorded
    cache.record_many(rows)
    assert [cache.lookup(name, st) for name, st, _ in rows] == [md5 for _, _, md5 in rows]
    cache.close()


def test_lookup_many_answers_in_order_across_its_batches(tmp_path):
    cache = ChecksumCache(tmp_path / "c.sqlite")
    files = []
    for i in range(LOOKUP_BATCH * 2 + 7):
        path = tmp_path / f"f{i}"
        path.write_bytes(b"%d" % i)
        files.append((f"f{i}", os.stat(path)))
    cache.record_many([(key, st, md5(b"%d" % i)) for i, (key, st) in enumerate(files) if i % 3])
    found = cache.lookup_many(files)
    assert found == [md5(b"%d" % i) if i % 3 else None for i in range(len(files))]
    cache.close()
