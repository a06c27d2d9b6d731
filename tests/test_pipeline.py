"""Pipelined transfers through the client library (ftpclient.pipeline): many small files
on one connection, big ones and existing targets the v1 way in their turn, failures of
one file reported alone, and a clean fallback against a server without `eager`."""

from __future__ import annotations

import os

import pytest

from ftpclient import Client, Transfer
from ftpclient.pipeline import get_pipelined, put_pipelined
from ftpproto import ChecksumMismatchError, ForbiddenError, IsDirectoryError, NotFoundError
from ftpproto.io import writeback
from ftpproto.messages import EAGER_PUT_MAX

from .conftest import PASSWORDS, counting_fsyncs

pytestmark = pytest.mark.timeout(60)


def results() -> tuple[dict, object]:
    found: dict[int, Transfer | BaseException] = {}
    order: list[int] = []

    def on_done(index: int, result: Transfer | BaseException) -> None:
        assert index not in found
        found[index] = result
        order.append(index)

    on_done.order = order  # type: ignore[attr-defined]
    return found, on_done


def test_a_tree_of_small_files_and_a_big_one_up_and_down(server, tmp_path):
    source = tmp_path / "src"
    files: dict[str, bytes] = {}
    for i in range(300):
        name = f"d{i % 7}/f{i:03}.bin"
        files[name] = os.urandom(i * 37 % 9000)
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(files[name])
    files["big.bin"] = os.urandom(EAGER_PUT_MAX + 12345)  # the v1 way, in its turn
    (source / "big.bin").write_bytes(files["big.bin"])
    items = [(source / name, f"/up/{name}") for name in files]
    found, on_done = results()
    with Client("127.0.0.1", server.port, timeout=10) as client:
        assert "eager" in client.features
        put_pipelined(client, items, on_done, parents=True)
        assert on_done.order == list(range(len(items)))  # type: ignore[attr-defined]
        assert all(isinstance(r, Transfer) for r in found.values()), found
        for name, data in files.items():
            assert (server.root / "up" / name).read_bytes() == data
        down = tmp_path / "down"
        found, on_done = results()
        get_pipelined(client, [(f"/up/{name}", down / name) for name in files], on_done)
        assert all(isinstance(r, Transfer) for r in found.values()), found
        assert client.stat("/up/big.bin").size == len(files["big.bin"])  # the connection is in step
    for name, data in files.items():
        assert (down / name).read_bytes() == data
    assert not [p for p in down.rglob("*") if p.name.startswith(".sockftp")]  # no temp file left


def test_one_failure_is_that_files_alone(server, tmp_path):
    (server.root / "taken").mkdir()
    good = tmp_path / "good"
    good.write_bytes(b"good bytes")
    missing = tmp_path / "missing"
    found, on_done = results()
    with Client("127.0.0.1", server.port, timeout=10) as client:
        put_pipelined(client, [(good, "/a"), (good, "/taken"), (missing, "/b"), (good, "/c")], on_done)
        assert isinstance(found[1], IsDirectoryError) and isinstance(found[2], FileNotFoundError)
        assert isinstance(found[0], Transfer) and isinstance(found[3], Transfer)
        found, on_done = results()
        get_pipelined(
            client, [("/a", tmp_path / "x"), ("/nothing", tmp_path / "y"), ("/c", tmp_path / "z")], on_done
        )
        assert isinstance(found[1], NotFoundError) and not (tmp_path / "y").exists()
        assert (tmp_path / "x").read_bytes() == (tmp_path / "z").read_bytes() == b"good bytes"
    with Client("127.0.0.1", server.port, "bob", PASSWORDS["bob"], timeout=10) as reader:
        found, on_done = results()
        put_pipelined(reader, [(good, "/r1"), (good, "/r2")], on_done)  # refused, drained, in step
        assert all(isinstance(r, ForbiddenError) for r in found.values())
        assert reader.ls("/") is not None


def test_an_existing_target_goes_the_v1_way_and_an_identical_one_moves_nothing(server, tmp_path):
    (server.root / "same").write_bytes(b"same bytes")
    (server.root / "new").write_bytes(b"new bytes")
    (tmp_path / "same").write_bytes(b"same bytes")
    found, on_done = results()
    with Client("127.0.0.1", server.port, timeout=10) as client:
        get_pipelined(client, [("/same", tmp_path / "same"), ("/new", tmp_path / "new")], on_done)
    assert found[0].skipped and found[0].sent == 0  # type: ignore[union-attr]
    assert (tmp_path / "new").read_bytes() == b"new bytes"


def test_preserve_keeps_times_both_ways(server, tmp_path):
    when = 1_600_000_000.5
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(name.encode() * 10)
        os.utime(tmp_path / name, (when, when))
    (tmp_path / "b").chmod(0o755)
    found, on_done = results()
    with Client("127.0.0.1", server.port, timeout=10) as client:
        put_pipelined(client, [(tmp_path / n, f"/{n}") for n in ("a", "b")], on_done, preserve=True)
        assert all(isinstance(r, Transfer) for r in found.values()) and len(found) == 2
        assert client.stat("/b").mtime == pytest.approx(when, abs=1e-6)
        _, on_done = results()
        back = tmp_path / "back"
        get_pipelined(client, [(f"/{n}", back / n) for n in ("a", "b")], on_done, preserve=True)
    assert (back / "a").stat().st_mtime == pytest.approx(when, abs=1e-6)
    assert (back / "b").stat().st_mode & 0o100 and not (back / "a").stat().st_mode & 0o100


def test_without_eager_on_the_server_every_file_goes_the_v1_way(server, tmp_path, monkeypatch):
    sent: list[dict] = []
    real = Client._send

    def spy(self, message, *args, **kwargs):
        sent.append(message)
        return real(self, message, *args, **kwargs)

    monkeypatch.setattr(Client, "_send", spy)
    (tmp_path / "f").write_bytes(b"plain")
    _, on_done = results()
    with Client("127.0.0.1", server.port, timeout=10) as client:
        client.features = frozenset()  # as after a v1 server's greeting
        put_pipelined(client, [(tmp_path / "f", "/f"), (tmp_path / "f", "/g")], on_done)
        _, on_done = results()
        get_pipelined(client, [("/g", tmp_path / "g")], on_done)
    assert not any(m.get("eager") for m in sent) and (tmp_path / "g").read_bytes() == b"plain"


def test_a_corrupted_download_is_refused_and_leaves_nothing(server, tmp_path, monkeypatch):
    """A file changed on the server between its header and its bytes cannot pass as good."""
    (server.root / "f").write_bytes(b"A" * 5000)
    from ftpserver.storage import local

    real = local.LocalStorage._md5

    def lying(self, place, vpath, file, st):
        return "0" * 32

    monkeypatch.setattr(local.LocalStorage, "_md5", lying)
    found, on_done = results()
    down = tmp_path / "down"
    with Client("127.0.0.1", server.port, timeout=10) as client:
        get_pipelined(client, [("/f", down / "f")], on_done)
        assert isinstance(found[0], ChecksumMismatchError)
    monkeypatch.setattr(local.LocalStorage, "_md5", real)
    assert list(down.iterdir()) == []  # neither the file nor a hidden temp file


def test_a_local_failure_fails_that_file_alone_and_keeps_the_connection_in_step(
    server, tmp_path, monkeypatch
):
    for name in ("a", "b", "c"):
        (server.root / name).write_bytes(name.encode() * 100)
    (tmp_path / "blocked").write_text("a file where a folder should be")
    real_open = os.open

    def refusing(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("ftpclient.pipeline.os.open", refusing)
    found, on_done = results()
    items = [
        ("/a", tmp_path / "ok" / "a"),
        ("/b", tmp_path / "ro" / "b"),
        ("/c", tmp_path / "blocked" / "c"),
        ("/c", tmp_path / "ok" / "c"),
    ]
    with Client("127.0.0.1", server.port, timeout=10) as client:
        get_pipelined(client, items, on_done)
        assert isinstance(found[1], PermissionError) and isinstance(found[2], OSError)
        assert isinstance(found[0], Transfer) and isinstance(found[3], Transfer)
        assert client.stat("/a").size == 100  # the refused file's bytes were read: still in step
    assert (tmp_path / "ok" / "c").read_bytes() == b"c" * 100
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["a", "c"]  # no hidden file left


def test_an_interruption_closes_the_client_and_keeps_no_hidden_file(server, tmp_path):
    for i in range(100):
        (server.root / f"f{i}").write_bytes(os.urandom(2000))

    def interrupt(index: int, result: Transfer | BaseException) -> None:
        if index == 10:  # reported while later files are still on their way
            raise KeyboardInterrupt

    client = Client("127.0.0.1", server.port, timeout=10)
    with pytest.raises(KeyboardInterrupt):
        get_pipelined(client, [(f"/f{i}", tmp_path / f"f{i}") for i in range(100)], interrupt)
    assert client.closed  # answers were still owed: nothing more may be read on it
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sockftp")]
    client = Client("127.0.0.1", server.port, timeout=10)
    sources = [(tmp_path / f"f{i}", f"/up{i}") for i in range(50)]
    with pytest.raises(KeyboardInterrupt):
        put_pipelined(client, sources, interrupt)
    assert client.closed
    client.close()


def test_a_batch_cut_short_keeps_no_hidden_download_file(server, tmp_path):
    from ftpclient.batch import Batch, Job

    for i in range(600):
        (server.root / f"f{i:03}").write_bytes(os.urandom(4000))
    down = tmp_path / "down"
    jobs = [Job("get", down / f"f{i:03}", f"/f{i:03}", 4000) for i in range(600)]
    seen = []

    def cut(outcome) -> None:
        seen.append(outcome)
        if len(seen) == 150:
            raise KeyboardInterrupt  # as Ctrl-C in the command line's reporting

    batch = Batch(lambda: Client("127.0.0.1", server.port, timeout=10), workers=4, on_outcome=cut)
    with pytest.raises(KeyboardInterrupt):
        batch.run(jobs)
    assert 150 <= len(seen) < 600
    assert not [p.name for p in down.iterdir() if p.name.startswith(".sockftp")]


@pytest.mark.parametrize("syncfs_works", [True, False])
def test_downloads_are_made_durable_together_or_each_on_its_own(server, tmp_path, monkeypatch, syncfs_works):
    if syncfs_works and not writeback.SYNCFS:
        pytest.skip("syncfs reports failures on Linux 5.8+ only")
    if not syncfs_works:
        monkeypatch.setattr(writeback, "_SYNCFS", lambda fd: -1)  # the kernel's "some write-back failed"
    files = {f"f{i:02}": os.urandom(3000 + i) for i in range(40)}
    for name, data in files.items():
        (server.root / name).write_bytes(data)
    synced = counting_fsyncs(monkeypatch)
    found, on_done = results()
    with Client("127.0.0.1", server.port, timeout=10) as client:
        get_pipelined(client, [(f"/{name}", tmp_path / name) for name in files], on_done)
    assert all(isinstance(r, Transfer) for r in found.values()), found
    assert all((tmp_path / name).read_bytes() == data for name, data in files.items())
    assert len(synced) == (0 if syncfs_works else len(files))
