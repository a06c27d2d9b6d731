"""Batch transfers and scripting, through the CLI's `main()` in-process against
a server in a thread: trees, repeat runs, failures that do not stop the rest,
retries that resume after the test cuts the connection, JSON output, filters,
dry runs, rate limits, lists. The client runs as a process where it must: a
terminal's progress bars (a pty) and Ctrl-C (a signal)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from ftpclient import Client
from ftpclient import batch as batch_module
from ftpclient.batch import LIST_AT_LEAST, Batch, Filters, plan_put
from ftpclient.jobs import Job, Outcome
from ftpproto.messages import EAGER_PUT_MAX

from .conftest import CountingClient, run_cli, start_server_process, wait_until, write_config

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def port(make_config, serve):
    return serve(make_config(limits={"max_connections_per_address": 50})).port


@pytest.fixture
def storage(tmp_path) -> Path:
    return tmp_path / "storage"


def json_lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def make_tree(root: Path, dirs: int = 10, per_dir: int = 50) -> dict[str, bytes]:
    files = {}
    for d in range(dirs):
        for f in range(per_dir):
            relative = f"d{d:02}/sub/f{f:03}.bin" if f % 5 == 0 else f"d{d:02}/f{f:03}.txt"
            data = os.urandom((d * 97 + f * 31) % 3000)
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(data)
            files[relative] = data
    (root / "empty-dir").mkdir()
    return files


def test_a_500_file_tree_round_trips_and_a_second_run_moves_nothing(port, tmp_path, storage):
    source = tmp_path / "tree"
    source.mkdir()
    files = make_tree(source)
    assert len(files) == 500
    put = run_cli("put", "-r", "tree", "-d", "/backup", "--json", port=port, cwd=tmp_path)
    assert put.returncode == 0, put.stderr
    summary = json_lines(put)[-1]
    assert (summary["op"], summary["sent"], summary["failed"]) == ("summary", 500, 0)
    for relative, data in files.items():
        assert (storage / "backup" / "tree" / relative).read_bytes() == data
    assert (storage / "backup" / "tree" / "empty-dir").is_dir()

    down = tmp_path / "down"
    down.mkdir()
    get = run_cli("get", "-r", "/backup/tree", "-o", "down", "--json", "-j", "3", port=port, cwd=tmp_path)
    assert get.returncode == 0, get.stderr
    for relative, data in files.items():
        assert (down / "tree" / relative).read_bytes() == data
    assert (down / "tree" / "empty-dir").is_dir()
    assert not list(down.rglob(".sockftp-get-*"))

    again = json_lines(run_cli("put", "-r", "tree", "-d", "/backup", "--json", port=port, cwd=tmp_path))[-1]
    assert (again["sent"], again["skipped"], again["bytes"]) == (0, 500, 0)
    back = json_lines(run_cli("get", "-r", "/backup/tree", "-o", "down", "--json", port=port, cwd=tmp_path))[
        -1
    ]
    assert (back["sent"], back["skipped"], back["bytes"]) == (0, 500, 0)


def unreadable(path: Path) -> None:
    """A local file the client cannot read: no permission, or (as root, whom
    permissions do not stop) a FIFO, which is not a regular file."""
    if os.geteuid() == 0:
        os.mkfifo(path)
    else:
        path.write_bytes(b"secret")
        path.chmod(0)


def test_one_unreadable_file_fails_and_the_rest_are_sent(port, tmp_path, storage):
    batch = tmp_path / "batch"
    batch.mkdir()
    for name in ("a", "b", "c"):
        (batch / name).write_bytes(name.encode() * 100)
    unreadable(batch / "bad")
    result = run_cli("put", "-r", "batch", "--json", "-j", "2", port=port, cwd=tmp_path)
    assert result.returncode == 1
    records = json_lines(result)
    failed = [r for r in records if r.get("result") == "failed"]
    assert len(failed) == 1 and failed[0]["local"].endswith("bad")
    assert "ftpclient: put " in result.stderr and "Traceback" not in result.stderr
    assert records[-1]["sent"] == 3 and records[-1]["failed"] == 1
    assert sorted(os.listdir(storage / "batch")) == ["a", "b", "c"]


def test_fail_fast_stops_at_the_first_failure(port, tmp_path, storage):
    (tmp_path / "good").write_text("good")
    result = run_cli("put", "missing", "good", "--fail-fast", port=port, cwd=tmp_path)
    assert result.returncode == 1
    assert not (storage / "good").exists()


class CuttingProxy:
    """Forwards 127.0.0.1 connections to the server; the first one is cut after
    `cut_after` bytes have gone the way `direction` names ("up" to the server,
    "down" to the client). Later connections pass untouched."""

    def __init__(self, server_port: int, cut_after: int, direction: str) -> None:
        self.server_port, self.cut_after, self.direction = server_port, cut_after, direction
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set() and self.connections < 20:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.server_port), timeout=10)
            limit = self.cut_after if self.connections == 1 else None
            pair = (client, upstream)
            threading.Thread(
                target=self._pump,
                args=(client, upstream, pair, limit if self.direction == "up" else None),
                daemon=True,
            ).start()
            threading.Thread(
                target=self._pump,
                args=(upstream, client, pair, limit if self.direction == "down" else None),
                daemon=True,
            ).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, pair: tuple, limit: int | None) -> None:
        moved = 0
        try:
            while data := source.recv(65536):
                if limit is not None and moved + len(data) > limit:
                    sink.sendall(data[: limit - moved])
                    break
                sink.sendall(data)
                moved += len(data)
        except OSError:
            pass
        for sock in pair:  # cut (or pass on the close of) both sides
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()


@pytest.fixture
def proxy(port):
    proxies = []

    def make(cut_after: int, direction: str) -> CuttingProxy:
        proxies.append(CuttingProxy(port, cut_after, direction))
        return proxies[-1]

    yield make
    for p in proxies:
        p.close()


def test_a_put_cut_mid_file_is_retried_and_resumes(proxy, tmp_path, storage):
    data = os.urandom(3_000_000)
    (tmp_path / "big.bin").write_bytes(data)
    cut = proxy(1_000_000, "up")
    result = run_cli("put", "big.bin", "--retries", "3", "--json", port=cut.port, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (record,) = json_lines(result)
    assert record["attempts"] == 2 and 0 < record["sent"] < len(data)
    assert (storage / "big.bin").read_bytes() == data
    assert cut.connections == 2


def test_a_get_cut_mid_file_is_retried_and_resumes(proxy, tmp_path, storage):
    data = os.urandom(3_000_000)
    (storage / "big.bin").write_bytes(data)
    cut = proxy(1_000_000, "down")
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("get", "big.bin", "--retries", "3", "--json", port=cut.port, cwd=out)
    assert result.returncode == 0, result.stderr
    (record,) = json_lines(result)
    assert record["attempts"] == 2 and 0 < record["sent"] < len(data)
    assert (out / "big.bin").read_bytes() == data


def test_without_retries_a_cut_is_a_failure(proxy, tmp_path):
    (tmp_path / "big.bin").write_bytes(os.urandom(3_000_000))
    cut = proxy(1_000_000, "up")
    result = run_cli("put", "big.bin", port=cut.port, cwd=tmp_path)
    assert result.returncode == 1 and "ftpclient: put big.bin:" in result.stderr


def test_include_exclude_and_dry_run(port, tmp_path, storage):
    src = tmp_path / "src"
    (src / "keep").mkdir(parents=True)
    for name in ("a.txt", "b.log", "keep/c.txt", "keep/d.tmp"):
        (src / name).write_text(name)
    dry = run_cli("put", "-r", "src", "--include", "*.txt", "--dry-run", "--json", port=port, cwd=tmp_path)
    assert dry.returncode == 0
    planned = sorted(r["remote"] for r in json_lines(dry) if r.get("op") == "put")
    assert planned == ["/src/a.txt", "/src/keep/c.txt"]
    assert not (storage / "src").exists()  # a dry run moves nothing
    real = run_cli("put", "-r", "src", "--exclude", "*.tmp", "--exclude", "b.*", port=port, cwd=tmp_path)
    assert real.returncode == 0
    assert sorted(str(p.relative_to(storage)) for p in (storage / "src").rglob("*") if p.is_file()) == [
        "src/a.txt",
        "src/keep/c.txt",
    ]
    again = run_cli("put", "-r", "src", "--exclude", "*.tmp", "--dry-run", port=port, cwd=tmp_path)
    assert "would skip (identical)" in again.stdout and "would send" in again.stdout  # b.log is new


def test_no_clobber_never_replaces_a_different_file(port, tmp_path, storage):
    (storage / "f.txt").write_text("theirs")
    (tmp_path / "f.txt").write_text("mine")
    result = run_cli("put", "f.txt", "--no-clobber", "--json", port=port, cwd=tmp_path)
    assert result.returncode == 0 and json_lines(result)[0]["result"] == "skipped"
    assert (storage / "f.txt").read_text() == "theirs"
    result = run_cli("get", "f.txt", "--no-clobber", port=port, cwd=tmp_path)
    assert result.returncode == 0 and (tmp_path / "f.txt").read_text() == "mine"


def test_from_file_and_stdin_lists_and_remote_globs(port, tmp_path, storage):
    for name in ("one.txt", "two.txt", "three.dat"):
        (tmp_path / name).write_text(name)
    (tmp_path / "list").write_text("one.txt\n\ntwo.txt\n")
    assert run_cli("put", "--from-file", "list", port=port, cwd=tmp_path).returncode == 0
    assert run_cli("put", "--from-file", "-", port=port, cwd=tmp_path, input="three.dat\n").returncode == 0
    assert sorted(os.listdir(storage)) == [".sockftp", "one.txt", "three.dat", "two.txt"]
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("get", "/*.txt", "-o", "out", port=port, cwd=tmp_path)
    assert result.returncode == 0 and sorted(os.listdir(out)) == ["one.txt", "two.txt"]
    nothing = run_cli("get", "/*.pdf", port=port, cwd=tmp_path)
    assert nothing.returncode == 1 and "no remote file matches" in nothing.stderr


def test_limit_rate_paces_the_whole_batch(port, tmp_path):
    for i in range(3):
        (tmp_path / f"f{i}").write_bytes(os.urandom(400_000))
    started = time.monotonic()
    result = run_cli("put", "f0", "f1", "f2", "--limit-rate", "600k", "-j", "3", port=port, cwd=tmp_path)
    assert result.returncode == 0
    assert time.monotonic() - started >= 1.5  # 1.2 MB at 600 kB/s, less one unpaced chunk per worker


def test_usage_errors_of_batch_flags(port, tmp_path):
    assert run_cli("put", port=port).returncode == 2
    assert run_cli("put", "x", "--limit-rate", "fast", port=port).returncode == 2
    assert run_cli("get", "-j", "0", "x", port=port).returncode == 2
    result = run_cli("get", "/", port=port, cwd=tmp_path)
    assert result.returncode == 2 and "use -r" in result.stderr


def test_bars_go_where_the_environment_says_a_terminal_is(port, tmp_path, capsys):
    for i in range(3):
        (tmp_path / f"f{i}").write_bytes(os.urandom(300_000))
    result = run_cli("put", "f0", "f1", "f2", port=port, cwd=tmp_path, terminal=True)
    assert result.returncode == 0
    assert "/3 files" in result.stderr  # the overall bar, on the run's stderr
    *puts, summary = result.stdout.splitlines()
    assert len(puts) == 3 and summary.startswith("sent 3 files") and "\r" not in result.stdout
    assert capsys.readouterr() == ("", "")  # nothing on the process's own streams


def test_progress_bar_on_a_terminal_and_none_without(port, tmp_path):
    for i in range(3):
        (tmp_path / f"f{i}").write_bytes(os.urandom(300_000))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCKFTP_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "ftpclient", "--port", str(port), "put", "f0", "f1", "f2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        elif process.poll() is not None:
            break
    process.wait(30)
    os.close(master)
    assert process.returncode == 0
    assert b"/3 files" in seen  # the overall bar
    quiet = run_cli("put", "f0", "f1", "f2", port=port, cwd=tmp_path)
    assert quiet.stderr == ""  # not a terminal: no bars


@pytest.mark.parametrize(
    "include, exclude, kept",
    [
        ((), (), ["a.txt", "b.log", "keep/c.txt", ".git/config", "keep/.git/HEAD"]),
        (("*.txt",), (), ["a.txt", "keep/c.txt"]),
        ((), (".git",), ["a.txt", "b.log", "keep/c.txt"]),
        (("keep",), ("*.txt",), ["keep/.git/HEAD"]),
        (("keep/*.txt",), (), ["keep/c.txt"]),
    ],
)
def test_filters(include, exclude, kept):
    paths = ["a.txt", "b.log", "keep/c.txt", ".git/config", "keep/.git/HEAD"]
    assert [p for p in paths if Filters(include, exclude).keep(p)] == kept


def test_batch_api_with_a_progress_callback(port, tmp_path):
    for i in range(5):
        (tmp_path / "src" / f"f{i}").parent.mkdir(exist_ok=True)
        (tmp_path / "src" / f"f{i}").write_bytes(os.urandom(100_000))
    jobs, failed = plan_put([str(tmp_path / "src")], "/api", recursive=True, filters=Filters())
    seen: dict[str, int] = {}
    batch = Batch(
        lambda: Client("127.0.0.1", port, timeout=10),
        workers=2,
        on_progress=lambda job, done, total: seen.__setitem__(job.remote, done),
    )
    summary = batch.run(jobs)
    assert failed == [] and summary.sent == 5 and summary.failed == 0 and summary.bytes == 500_000
    assert seen == {f"/api/src/f{i}": 100_000 for i in range(5)}


def test_the_same_remote_file_twice_is_fetched_once_and_whole(port, tmp_path, storage):
    data = os.urandom(1_000_000)
    (storage / "dup.bin").write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("get", "/dup.bin", "/dup.bin", "-o", "out", "--json", port=port, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / "dup.bin").read_bytes() == data
    assert json_lines(result)[-1]["sent"] == 1


def test_two_remote_files_for_one_local_name_is_an_error_not_a_race(port, tmp_path, storage):
    for d in ("s1", "s2"):
        (storage / d).mkdir()
        (storage / d / "same.bin").write_bytes(d.encode() * 1000)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("get", "/s1/same.bin", "/s2/same.bin", "-o", "out", port=port, cwd=tmp_path)
    assert result.returncode == 1 and "same destination as /s1/same.bin" in result.stderr
    assert (out / "same.bin").read_bytes() == b"s1" * 1000


def test_a_summary_ends_every_batch_call_even_of_one_file(port, tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "f").write_text("x")
    result = run_cli("put", "-r", "one", "--json", port=port, cwd=tmp_path)
    assert [r["op"] for r in json_lines(result)] == ["put", "summary"]
    plain = run_cli("put", "one/f", "--json", port=port, cwd=tmp_path)
    assert [r["op"] for r in json_lines(plain)] == ["put"]


def test_json_reports_a_connection_failure_on_stdout(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    result = run_cli("ls", "--json", port=free)
    assert result.returncode == 1
    (record,) = json_lines(result)
    assert record["result"] == "failed" and "cannot connect" in record["message"]


def test_retries_also_wait_for_a_server_that_is_not_up_yet(tmp_path, make_config, serve):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    config = make_config(listen={"port": free})
    timer = threading.Timer(1.0, serve, args=(config,))
    timer.start()
    (tmp_path / "f").write_text("late")
    try:
        result = run_cli("put", "f", "--retries", "4", port=free, cwd=tmp_path)
    finally:
        timer.join()
    assert result.returncode == 0, result.stderr
    assert (config.storage_root / "f").read_text() == "late"


def test_ctrl_c_stops_a_batch_at_once(tmp_path):
    config = write_config(
        tmp_path, anonymous={"bandwidth": 200_000}, limits={"max_connections_per_address": 50}
    )
    for i in range(4):
        (tmp_path / f"f{i}").write_bytes(os.urandom(2_000_000))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCKFTP_")}
    server = start_server_process(config)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "ftpclient", "--port", str(server.port), "put", "f0", "f1", "f2", "f3"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            storage = tmp_path / "storage"
            assert wait_until(lambda: len(list(storage.glob(".sockftp.part.*"))) == 4, 15)  # all 4 going
            process.send_signal(signal.SIGINT)
            started = time.monotonic()
            assert process.wait(10) == 130
            assert time.monotonic() - started < 3
            assert b"Traceback" not in process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(5)
            process.stderr.close()
    finally:
        # Killed, not stopped: its sessions, paced to 200 kB/s, would take seconds to
        # drain what the dead client left in their sockets; this test is about the client.
        server.stop(signal.SIGKILL)


def test_bad_client_settings_are_usage_errors(tmp_path):
    assert run_cli("--timeout", "0", "ls", port=1).returncode == 2
    assert run_cli("--timeout", "-1", "ls", port=1).returncode == 2
    missing_ca = run_cli("--cafile", str(tmp_path / "nope.pem"), "ls", port=1)
    assert missing_ca.returncode == 2 and "CA file" in missing_ca.stderr
    (tmp_path / "bad.yaml").write_text("profiles: [unclosed")
    broken = run_cli("--config", str(tmp_path / "bad.yaml"), "ls", port=1)
    assert broken.returncode == 2 and len(broken.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("big", [0, 2])
def test_small_files_share_one_pipelined_connection_and_big_ones_get_more(port, tmp_path, storage, big):
    source = tmp_path / "src"
    source.mkdir()
    for i in range(200):  # more than one pipelined run: other workers would take some
        (source / f"s{i:03}").write_bytes(os.urandom(100))
    for i in range(big):
        (source / f"b{i}").write_bytes(os.urandom(EAGER_PUT_MAX + 1))
    jobs, failed = plan_put([str(source)], "/one", recursive=True, filters=Filters())
    made: list[Client] = []

    def connect() -> Client:
        made.append(Client("127.0.0.1", port, timeout=10))
        return made[-1]

    summary = Batch(connect, workers=4).run(jobs, first_client=connect())
    assert failed == [] and summary.failed == 0 and summary.sent == 200 + big
    assert len(made) == 1 + big  # the pipelining one, and one more per file that goes the v1 way
    for client in made:
        client.close()


@pytest.mark.parametrize("listing", [True, False], ids=["ls-md5", "stats"])
def test_a_tree_upload_asks_about_folders_then_only_what_it_must(port, tmp_path, storage, listing):
    tree = tmp_path / "tree"
    files = {f"d{d:02}/f{f:03}": os.urandom(100 + f) for d in range(3) for f in range(20)}
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    there = storage / "up" / "tree" / "d00"
    there.mkdir(parents=True)
    (there / "f000").write_bytes(files["d00/f000"])  # identical, put there by hand: MD5 unknown
    (there / "f001").write_bytes(b"other")  # different: replaced
    (there / "f002").write_bytes(files["d00/f002"][::-1])  # same size, other bytes: replaced

    def upload() -> tuple[CountingClient, object]:
        jobs, failed = plan_put([str(tree)], "/up", recursive=True, filters=Filters())
        assert failed == []
        without = frozenset() if listing else frozenset({"ls-md5"})
        client = CountingClient("127.0.0.1", port, timeout=10, without=without)
        with client:
            return client, Batch(lambda: client, workers=1).run(jobs, first_client=client)

    client, summary = upload()
    assert summary.failed == 0 and summary.sent == 59 and summary.skipped == 1
    for name, data in files.items():
        assert (storage / "up" / "tree" / name).read_bytes() == data
    # A stat for each folder; d01 and d02 were missing, so nothing more for their files.
    # d00 exists: one listing, then a stat for each file listed with its size but no MD5
    # (f000 and f002, put there by hand); without ls-md5, a stat for each of its files.
    assert (client.sent["stat"], client.sent.get("ls", 0)) == ((3 + 2, 1) if listing else (3 + 20, 0))
    client, summary = upload()  # all there now, stored by the server: nothing is sent
    assert (client.sent["stat"], client.sent.get("ls", 0)) == ((3, 3) if listing else (3 + 60, 0))
    assert client.sent.get("put", 0) == 0 and summary.sent == 0 and summary.skipped == 60


def test_a_folder_that_is_a_file_on_the_server_is_not_listed_as_if_it_held_files(port, tmp_path, storage):
    """`ls` of a file lists that file: a batch must not read it as the folder's content."""
    local = tmp_path / "l"
    local.mkdir()
    (local / "x").write_bytes(b"the same bytes as the file /up/x")
    (storage / "up").mkdir(parents=True)
    (storage / "up" / "x").write_bytes(b"the same bytes as the file /up/x")
    for i in range(LIST_AT_LEAST):
        (local / f"f{i:02}").write_bytes(b"other %d" % i)
    jobs = [Job("put", path, f"/up/x/{path.name}", path.stat().st_size) for path in sorted(local.iterdir())]
    outcomes: list[Outcome] = []
    with CountingClient("127.0.0.1", port, timeout=10) as client:
        client.stat("/up/x")  # the server has read it: a listing would carry its MD5
        Batch(lambda: client, workers=1, on_outcome=outcomes.append).run(jobs, first_client=client)
    assert client.sent.get("ls", 0) == 0
    assert {outcome.result for outcome in outcomes} == {"failed"}  # /up/x/x cannot be there


def test_a_listing_older_than_its_freshness_is_taken_again(port, tmp_path, storage, monkeypatch):
    """A listing decides skips for LISTING_FRESH seconds, as a stat does for one run: a file
    replaced by someone else after that is seen as replaced, and sent again."""
    monkeypatch.setattr(batch_module, "LISTING_FRESH", 0.0)  # every run of 64 lists afresh
    local = tmp_path / "l"
    local.mkdir()
    for i in range(70):
        (local / f"f{i:02}").write_bytes(b"version-1 %02d" % i)
    jobs = [Job("put", path, f"/d/{path.name}", path.stat().st_size) for path in sorted(local.iterdir())]
    (tmp_path / "v2").write_bytes(b"VERSION-2 69")
    outcomes: list[Outcome] = []
    with CountingClient("127.0.0.1", port, timeout=10) as client, Client("127.0.0.1", port) as other:
        for job in jobs:
            other.put(job.local, job.remote, parents=True)

        def seen(outcome: Outcome) -> None:
            if not outcomes:  # the first run is being reported: the second has not listed yet
                other.put(tmp_path / "v2", "/d/f69")
            outcomes.append(outcome)

        Batch(lambda: client, workers=1, on_outcome=seen).run(jobs, first_client=client)
    assert client.sent["ls"] == 2
    result = {outcome.job.remote: outcome.result for outcome in outcomes}
    assert result["/d/f69"] == "ok" and (storage / "d" / "f69").read_bytes() == b"version-1 69"
    assert [remote for remote, what in result.items() if what != "skipped"] == ["/d/f69"]
