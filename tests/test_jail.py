"""Attacks on the storage jail (issue 9), over real sockets and real files.

Each test plays someone who can write below the storage root (a local
account, a shared mount) or an ordinary remote user, and checks that the
server gives nothing away: no file outside the home created, changed,
truncated or revealed; no session left hanging; no `internal` error; quota
and cost bounded by the right things. Timing checks compare the fastest of several
runs, interleaved where they can be, so that a loaded machine cannot tip them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from ftpserver.storage.checksums import ChecksumCache

from .conftest import wait_until, write_config
from .test_server import assert_error, get, md5, names_in, put

pytestmark = pytest.mark.timeout(60)

PARTIAL_PREFIX = ".sockftp.part."
TEMP_PREFIX = ".sockftp.tmp."
SECRET = b"outside the storage root: never served, never changed\n" * 20  # 1080 bytes
BOB_SECRET = b"bob's own file\n" * 10


def partial_name(name: str, data: bytes) -> str:
    """The hidden partial file of a put of `data` to `name` (docs: key of name, size, md5)."""
    key = hashlib.sha256(f"{name}\0{len(data)}\0{md5(data)}".encode()).hexdigest()[:32]
    return PARTIAL_PREFIX + key


def tree(directory: Path) -> dict[str, tuple]:
    """Everything below `directory`, without following links: kind, inode, size, mtime, bytes."""
    found = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        found[str(path.relative_to(directory))] = (
            stat.S_IFMT(st.st_mode), st.st_ino, st.st_size, st.st_mtime_ns, content,
        )  # fmt: skip
    return found


def bytes_held(home: Path) -> int:
    """Bytes of every regular file below `home`, hidden partial and temp files included."""
    total = 0
    for folder, _, files in os.walk(home):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def plant_socket(at: Path) -> None:
    """A UNIX socket file at `at` (bound by a short relative name: sun_path is 108 bytes)."""
    cwd = os.getcwd()
    os.chdir(at.parent)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(at.name)
    finally:
        os.chdir(cwd)


@pytest.fixture
def world(server, tmp_path):
    """The common server, plus a secret outside the root and one in bob's home."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    bob = server.root / "bob"
    bob.mkdir()
    (bob / "secret").write_bytes(BOB_SECRET)
    return server, outside, bob


def plant(kind: str, at: Path, outside: Path, bob: Path) -> None:
    if kind == "symlink to an outside file":
        at.symlink_to(outside / "secret")
    elif kind == "dangling symlink to outside":
        at.symlink_to(outside / "created")
    elif kind == "symlink to another home":
        at.symlink_to(bob)
    elif kind == "relative symlink to another home's file":
        at.symlink_to(os.path.relpath(bob / "secret", at.parent))
    elif kind == "fifo":
        os.mkfifo(at)
    elif kind == "socket":
        plant_socket(at)
    elif kind == "hard link to an outside file":
        os.link(outside / "secret", at)
    else:
        raise AssertionError(kind)


INTRUDERS = [
    "symlink to an outside file",
    "dangling symlink to outside",
    "symlink to another home",
    "relative symlink to another home's file",
    "fifo",
    "socket",
    "hard link to an outside file",
]


def assert_still_serving(raw, server) -> None:
    """Another user's session works, and no upload is left holding its claim."""
    other = raw(server, user="bob")
    other.sock.settimeout(5)
    assert other.request("ls")["ok"]
    assert wait_until(lambda: server.server.storage.uploads_running == 0)


# -- 1. intruders at the partial-file name ------------------------------------------


@pytest.mark.parametrize("kind", INTRUDERS)
def test_an_intruder_planted_at_the_partial_name_before_a_put_is_removed_unopened(world, raw, kind, caplog):
    server, outside, bob = world
    data = os.urandom(64 * 1024)  # bigger than the secrets: a "resume" would leak their size
    home = server.root / "alice"
    (home / "up").mkdir(parents=True)
    at = home / "up" / partial_name("file", data)
    plant(kind, at, outside, bob)
    before_outside, before_bob = tree(outside), tree(bob)

    stream = raw(user="alice")
    stream.sock.settimeout(5)  # a FIFO must not block the session
    started = time.monotonic()
    ack, result = put(stream, "up/file", data)
    assert time.monotonic() - started < 5
    assert ack == {"ok": True, "offset": 0}  # nothing resumed: no outside size revealed
    assert result == {"ok": True, "size": len(data), "md5": md5(data)}
    stored = home / "up" / "file"
    assert stat.S_ISREG(stored.lstat().st_mode) and stored.read_bytes() == data
    assert names_in(home / "up") == ["file"]  # the intruder went, no partial stayed
    assert tree(outside) == before_outside and tree(bob) == before_bob
    assert "planted at" in caplog.text
    assert_still_serving(raw, server)


def swap_in(kind: str, at: Path, outside: Path, bob: Path) -> None:
    """What an attacker does mid-upload: take the server's file away, put an intruder there."""
    os.rename(at, at.parent / "taken-away")
    plant(kind, at, outside, bob)


@pytest.mark.parametrize("kind", INTRUDERS)
@pytest.mark.parametrize("when", ["after the ack", "after half the data"])
def test_an_intruder_swapped_in_at_the_partial_name_during_a_put_changes_nothing_outside(
    world, raw, kind, when
):
    server, outside, bob = world
    data = os.urandom(64 * 1024)
    home = server.root / "alice"
    (home / "up").mkdir(parents=True)
    at = home / "up" / partial_name("file", data)
    before_outside, before_bob = tree(outside), tree(bob)

    stream = raw(user="alice")
    stream.sock.settimeout(5)
    ack = stream.request("put", path="up/file", size=len(data), md5=md5(data))
    assert ack == {"ok": True, "offset": 0}
    assert at.exists()
    if when == "after half the data":
        stream.sock.sendall(data[: len(data) // 2])
        wait_until(lambda: at.stat().st_size > 0, 2)  # the server has written some
        rest = data[len(data) // 2 :]
    else:
        rest = data
    swap_in(kind, at, outside, bob)
    started = time.monotonic()
    stream.sock.sendall(rest)
    result = stream.recv()
    assert time.monotonic() - started < 5
    assert result.get("error") != "internal", result
    assert tree(outside) == before_outside and tree(bob) == before_bob
    assert_still_serving(raw, server)


def test_an_intruder_swapped_in_at_a_temp_name_during_a_put_changes_nothing_outside(world, raw):
    """A put that finds its partial file busy writes to a private temp name instead."""
    server, outside, bob = world
    server.server.storage.claim_wait = 0.2
    data = os.urandom(64 * 1024)
    home = server.root / "alice"
    before_outside = tree(outside)
    first, second = raw(user="alice"), raw(user="alice")
    second.sock.settimeout(5)
    assert first.request("put", path="f", size=len(data), md5=md5(data))["ok"]
    assert second.request("put", path="f", size=len(data), md5=md5(data)) == {"ok": True, "offset": 0}
    (temp,) = (home / name for name in os.listdir(home) if name.startswith(TEMP_PREFIX))
    second.sock.sendall(data[:1000])
    swap_in("symlink to an outside file", temp, outside, bob)
    second.sock.sendall(data[1000:])
    result = second.recv()
    assert result.get("error") != "internal", result
    first.close()
    assert tree(outside) == before_outside
    assert_still_serving(raw, server)


@pytest.mark.parametrize("kind", ["symlink to an outside file", "hard link to an outside file"])
def test_a_put_that_answers_ok_stored_the_bytes_it_received(world, raw, kind):
    server, outside, bob = world
    data = os.urandom(64 * 1024)
    home = server.root / "alice"
    at = home / partial_name("file", data)
    stream = raw(user="alice")
    stream.sock.settimeout(5)
    assert stream.request("put", path="file", size=len(data), md5=md5(data)) == {"ok": True, "offset": 0}
    stream.sock.sendall(data[:1000])
    swap_in(kind, at, outside, bob)
    stream.sock.sendall(data[1000:])
    result = stream.recv()
    if result["ok"]:
        header, received = get(stream, "file")
        assert received == data, (header, received[:60])  # the hard link: the outside secret
        stored = (home / "file").lstat()
        assert stat.S_ISREG(stored.st_mode) and stored.st_nlink == 1
    else:
        assert result["error"] != "internal"


# -- 2. a directory swapped for a symlink out, in a tight loop ----------------------

RENAMEAT2_SYSCALL = {"x86_64": 316, "aarch64": 276}

SWAPPER = r"""
import ctypes, os, sys, time
home, seconds, syscall_number = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
RENAME_EXCHANGE = 2

def exchange():
    if hasattr(libc, "renameat2"):
        return libc.renameat2(fd, b"d", fd, b"dlink", RENAME_EXCHANGE)
    return libc.syscall(syscall_number, fd, b"d", fd, b"dlink", RENAME_EXCHANGE)

atomic = exchange() == 0
swaps = 1 if atomic else 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline and swaps < 10_000_000:
    if atomic:
        exchange()
    else:  # no renameat2 here: rename pairs, with a moment where d is missing
        os.rename("d", "d.real", src_dir_fd=fd, dst_dir_fd=fd)
        os.rename("dlink", "d", src_dir_fd=fd, dst_dir_fd=fd)
        os.rename("d", "dlink", src_dir_fd=fd, dst_dir_fd=fd)
        os.rename("d.real", "d", src_dir_fd=fd, dst_dir_fd=fd)
    swaps += 1
if atomic and swaps % 2:
    exchange()  # leave d the real directory
print(swaps, "atomic" if atomic else "rename pairs")
"""

INSIDE = b"the file inside alice's home\n"
OUTSIDE = b"OUTSIDE BYTES, a different size and md5\n" * 3


def test_a_directory_swapped_for_a_symlink_out_in_a_tight_loop_never_lets_an_op_escape(world, raw, caplog):
    server, outside, bob = world
    workers = 4
    home = server.root / "alice"
    (home / "d").mkdir(parents=True)
    (home / "d" / "f").write_bytes(INSIDE)
    (outside / "f").write_bytes(OUTSIDE)
    (outside / "only-outside").write_bytes(OUTSIDE)
    for worker in range(workers):
        for name in (f"v{worker}", f"w{worker}", f"t{worker}"):
            (outside / name).write_bytes(OUTSIDE)  # what an escaped put, rename or rm would hit
    (home / "dlink").symlink_to(outside)
    before, before_bob = tree(outside), tree(bob)
    streams = [raw(user="alice") for _ in range(workers)]
    swapping = threading.Event()
    counts: Counter = Counter()
    escapes: list[str] = []
    lock = threading.Lock()

    def record(op: str, answer: dict, escaped: str | None = None) -> None:
        with lock:
            counts[(op, "ok" if answer["ok"] else answer["error"])] += 1
            if escaped:
                escapes.append(escaped)

    crashed: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            run(streams[worker], worker)
        except BaseException as exc:  # a dropped connection must fail the test, not hide
            crashed.append(exc)

    def run(stream, worker: int) -> None:
        deadline = time.monotonic() + 15
        for _ in range(100_000):
            if not swapping.is_set() or time.monotonic() > deadline:
                return
            header, data = get(stream, "d/f")
            record("get", header, f"get returned {data!r}" if header["ok"] and data != INSIDE else None)
            answer = stream.request("stat", path="d/f")
            record(
                "stat", answer, f"stat {answer}" if answer["ok"] and answer["md5"] != md5(INSIDE) else None
            )
            answer = stream.request("ls", path="d")
            names = {e["name"] for e in answer.get("entries", [])}
            record("ls", answer, f"ls listed {names}" if "only-outside" in names else None)
            ack, result = put(stream, f"d/v{worker}", INSIDE)
            record("put", result if result is not None else ack)
            record("rename", stream.request("rename", path=f"d/v{worker}", to=f"d/w{worker}", overwrite=True))
            record("rename", stream.request("rename", path=f"d/w{worker}", to=f"d/v{worker}", overwrite=True))
            record("rm", stream.request("rm", path=f"d/v{worker}"))
            ack, result = put(stream, f"d/t{worker}/x", INSIDE, parents=True)
            record("rm -r", stream.request("rm", path=f"d/t{worker}", recursive=True))

    swapper = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, str(home), "5", str(RENAMEAT2_SYSCALL.get(platform.machine(), -1))],
        stdout=subprocess.PIPE,
        text=True,
    )
    swapping.set()
    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(workers)]
    for thread in threads:
        thread.start()
    try:
        out, _ = swapper.communicate(timeout=20)
    finally:
        swapping.clear()
        if swapper.poll() is None:
            swapper.kill()
            swapper.wait(5)
        for thread in threads:
            thread.join(20)
    assert not any(thread.is_alive() for thread in threads) and crashed == []
    swaps = int(out.split()[0])

    assert escapes == []
    assert tree(outside) == before and tree(bob) == before_bob  # nothing made, removed or changed
    assert stat.S_ISDIR((home / "d").lstat().st_mode)
    errors = {code for (_, code) in counts if code != "ok"}
    # not_a_directory: `d` read as a link (ENOTDIR), then as a directory when checked.
    assert errors <= {"forbidden", "not_found", "not_a_directory"}, counts
    assert "internal error" not in caplog.text
    # Not vacuous: the swap happened many times, every op both ran and was refused.
    assert swaps > 1000, out
    for op in ("get", "stat", "ls", "put", "rename", "rm", "rm -r"):
        assert counts[(op, "ok")] >= 3, counts
    assert sum(n for (_, code), n in counts.items() if code == "forbidden") >= 10, counts


# -- 3. quota: abandoned overwrites and lost races ----------------------------------


def abandon_put(stream, path: str, data: bytes, sent: int) -> None:
    ack = stream.request("put", path=path, size=len(data), md5=md5(data))
    assert ack["ok"], ack
    stream.sock.sendall(data[ack["offset"] : sent])
    stream.close()


def test_abandoned_overwrites_never_hold_more_than_the_quota(server, raw):
    carol = server.root / "carol"
    storage = server.server.storage
    assert put(raw(user="carol"), "a", b"0" * 600)[1]["ok"]
    sent_each = [599, 100, 399, 400, 50, 300, 599, 1, 250, 450, 398, 200]
    for round_, sent in enumerate(sent_each):
        data = bytes([65 + round_]) * 600  # different bytes each time: a new partial name
        abandon_put(raw(user="carol"), "a", data, sent)
        assert wait_until(lambda: storage.uploads_running == 0)
        assert bytes_held(carol) <= 1000, sorted(os.listdir(carol))
    # Five abandoned at once, each checked against the others under the usage lock.
    streams = [raw(user="carol") for _ in range(5)]
    for i, stream in enumerate(streams):
        data = bytes([97 + i]) * 600
        ack = stream.request("put", path="a", size=600, md5=md5(data))
        assert ack["ok"], ack
        stream.sock.sendall(data[:300])
    time.sleep(0.2)
    for stream in streams:
        stream.close()
    assert wait_until(lambda: storage.uploads_running == 0)
    assert bytes_held(carol) <= 1000, sorted(os.listdir(carol))
    assert (carol / "a").read_bytes() == b"0" * 600
    assert storage.usage.used(("carol",)) == bytes_held(carol)  # the counter matches the disk


def test_an_overwrite_abandoned_while_another_upload_runs_does_not_pass_the_quota(server, raw):
    """The partial it keeps must fit beside what running uploads have reserved."""
    carol = server.root / "carol"
    storage = server.server.storage
    assert put(raw(user="carol"), "a", b"0" * 600)[1]["ok"]
    running, new = raw(user="carol"), b"n" * 400
    assert running.request("put", path="n", size=400, md5=md5(new))["ok"]  # 600 + 400: fits
    running.sock.sendall(new[:200])
    abandon_put(raw(user="carol"), "a", b"b" * 600, 400)  # an overwrite needs no reservation
    assert wait_until(lambda: storage.uploads_running == 1)
    running.sock.sendall(new[200:])
    result = running.recv()
    assert result["ok"] or result["error"] == "quota_exceeded", result
    assert bytes_held(carol) <= 1000, sorted(os.listdir(carol))


def test_the_losing_put_of_an_overwrite_false_race_leaves_no_partial(server, raw):
    carol = server.root / "carol"
    first, second = raw(user="carol"), raw(user="carol")
    one, two = b"1" * 400, b"2" * 400
    assert first.request("put", path="r", size=400, md5=md5(one), overwrite=False)["ok"]
    assert second.request("put", path="r", size=400, md5=md5(two), overwrite=False)["ok"]
    first.sock.sendall(one)
    assert first.recv()["ok"]
    second.sock.sendall(two)
    assert_error(second.recv(), "exists")
    assert names_in(carol) == ["r"] and (carol / "r").read_bytes() == one
    assert server.server.storage.usage.used(("carol",)) == 400
    assert put(raw(user="carol"), "s", b"3" * 600)[1]["ok"]  # the loser's 400 are not held


# -- 4. mkdir -p under concurrency ---------------------------------------------------


def test_240_concurrent_mkdir_parents_of_one_deep_path_all_answer_ok(make_config, serve, raw):
    running = serve(make_config(limits={"max_connections_per_address": 30}))
    connections, rounds, per_round = 20, 4, 3
    streams = [raw(running, user="alice") for _ in range(connections)]
    deep = "/".join(f"level{i}" for i in range(12))
    home = running.root / "alice"
    answers: list[dict] = []
    lock = threading.Lock()
    barrier = threading.Barrier(connections, timeout=20)

    def work(stream) -> None:
        for _ in range(rounds):
            barrier.wait()  # the tree was removed: all race to make it again
            for _ in range(per_round):  # pipelined: the server sees them back to back
                stream.send({"op": "mkdir", "path": deep, "parents": True})
            got = [stream.recv() for _ in range(per_round)]
            with lock:
                answers.extend(got)
            if barrier.wait() == 0:
                shutil.rmtree(home / "level0")

    threads = [threading.Thread(target=work, args=(stream,)) for stream in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    assert not any(thread.is_alive() for thread in threads)
    assert len(answers) == connections * rounds * per_round >= 200
    assert Counter(a.get("error", "ok") for a in answers) == {"ok": len(answers)}


# -- 5. paths too long or too deep, and special files in a home ----------------------


def test_paths_too_long_or_too_deep_to_store_are_forbidden(server, raw):
    stream = raw(user="alice")
    room = 4096 - len(os.fsencode(server.root / "alice"))  # bytes left for "/a/b/..." below the home

    def path_of(length: int) -> str:
        """A path of exactly `length` bytes: names of 200 bytes and one to fill."""
        names, left = [], length
        while left > 203:
            names.append("x" * 200)
            left -= 201
        return "/" + "/".join([*names, "x" * (left - 1)])

    assert len(path_of(4096).encode()) == 4096
    assert_error(stream.request("mkdir", path=path_of(4096), parents=True), "forbidden")
    assert_error(stream.request("mkdir", path=path_of(room), parents=True), "forbidden")
    assert stream.request("mkdir", path=path_of(room - 1), parents=True)["ok"]  # the limit, exactly
    assert_error(stream.request("mkdir", path="/".join(["a"] * 2000), parents=True), "forbidden")
    assert_error(stream.request("mkdir", path="/".join(["b"] * 257), parents=True), "forbidden")
    assert stream.request("mkdir", path="/".join(["b"] * 256), parents=True)["ok"]
    deep = "/".join(["a"] * 2000) + "/f"
    for op, fields in [("stat", {}), ("ls", {}), ("rm", {}), ("get", {"offset": 0})]:
        assert_error(stream.request(op, path=deep, **fields), "forbidden")
    assert_error(put(stream, deep, b"x", parents=True)[0], "forbidden")
    assert not (server.root / "alice" / "a").exists()


def test_a_tree_deeper_than_the_limit_made_on_disk_is_forbidden_when_reached(server, raw):
    """Made behind the server's back and reached through a relative link: still bounded."""
    home = server.root / "alice"
    deep = home.joinpath(*["n"] * 300)
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"deep")
    (home / "link").symlink_to("/".join(["n"] * 300))
    stream = raw(user="alice")
    assert_error(stream.request("stat", path="link/f"), "forbidden")
    assert_error(get(stream, "link/f")[0], "forbidden")
    assert_error(stream.request("ls", path="link"), "forbidden")
    assert stream.request("ls", path="/".join(["n"] * 256))["ok"]  # the limit itself is fine
    assert_error(stream.request("ls", path="/".join(["n"] * 257)), "forbidden")
    assert stream.request("rm", path="link")["ok"]


@pytest.fixture
def specials(server):
    home = server.root / "alice"
    home.mkdir()
    plant_socket(home / "sock")
    (home / "loop").symlink_to("loop")
    (home / "ping").symlink_to("pong")
    (home / "pong").symlink_to("ping")
    with contextlib.suppress(PermissionError):
        os.mknod(home / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return home


@pytest.mark.parametrize("name", ["sock", "loop", "ping", "null"])
def test_a_socket_a_symlink_loop_or_a_device_in_a_home_is_forbidden_never_internal(
    specials, raw, name, caplog
):
    if not (specials / name).is_symlink() and not (specials / name).exists():
        pytest.skip("mknod is not allowed here")
    stream = raw(user="alice")
    stream.sock.settimeout(5)
    assert_error(get(stream, name)[0], "forbidden")
    assert_error(stream.request("stat", path=name), "forbidden")
    assert_error(stream.request("ls", path=name), "forbidden")
    assert_error(put(stream, name, b"data")[0], "forbidden")
    below = "not_a_directory" if name in ("sock", "null") else "forbidden"
    assert_error(put(stream, f"{name}/below", b"data", parents=True)[0], below)
    assert_error(stream.request("mkdir", path=f"{name}/below", parents=True), below)
    assert_error(stream.request("stat", path=f"{name}/below"), below)
    listed = [e["name"] for e in stream.request("ls")["entries"]]
    assert name not in listed
    assert stream.request("rm", path=name)["ok"]  # rm removes the name itself, never follows
    assert not os.path.lexists(specials / name)
    assert "internal error" not in caplog.text


# -- 6. cost in the right terms -------------------------------------------------------


def fill(directory: Path, count: int) -> None:
    """`count` names f00000, f00001... of one empty file: hard links are several times
    quicker to make than files; each made through the directory's descriptor (by
    path, each would cost a lookup per level of a deep directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(os.open("f00000", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        for i in range(1, count):
            os.link("f00000", f"f{i:05}", src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def ls_all(stream, path: str) -> int:
    stream.send({"op": "ls", "path": path})
    count = 0
    while True:
        page = stream.recv()
        assert page["ok"], page
        count += len(page["entries"])
        if not page["more"]:
            return count


def fastest(actions: dict, runs: int) -> dict:
    """The quickest of `runs` timings of each action, the runs interleaved. The minimum is
    what the work itself costs: load on a busy machine only ever adds to it (the
    median of a few runs swings 4x when another process takes a core)."""
    times: dict = {key: [] for key in actions}
    for _ in range(runs):
        for key, action in actions.items():
            times[key].append(timed(action))
    return {key: min(values) for key, values in times.items()}


def test_ls_of_5000_entries_costs_the_same_at_depth_150_as_at_depth_1(server, raw):
    home = server.root / "alice"
    shallow, deep = "s", "/".join(["a"] * 149 + ["s"])
    fill(home / shallow, 5000)
    fill(home / deep, 5000)
    stream = raw(user="alice")
    assert ls_all(stream, shallow) == ls_all(stream, deep) == 5000  # also warms the caches
    took = fastest({"shallow": lambda: ls_all(stream, shallow), "deep": lambda: ls_all(stream, deep)}, 5)
    assert took["deep"] < 2 * took["shallow"], took


def test_ls_of_links_costs_the_same_at_depth_150_as_at_depth_1(server, raw):
    """Links are shown as what they lead to: that check must not walk down from the home.
    (500 links, not 5,000, to keep the test short: the cost is per link.)"""
    home = server.root / "alice"
    shallow, deep = "s", "/".join(["a"] * 149 + ["s"])
    for where in (shallow, deep):
        fill(home / where, 1)
        fd = os.open(home / where, os.O_RDONLY | os.O_DIRECTORY)
        for i in range(500):
            os.symlink("f00000", f"l{i:05}", dir_fd=fd)
        os.close(fd)
    stream = raw(user="alice")
    assert ls_all(stream, shallow) == ls_all(stream, deep) == 501
    took = fastest({"shallow": lambda: ls_all(stream, shallow), "deep": lambda: ls_all(stream, deep)}, 3)
    assert took["deep"] < 2 * took["shallow"], took


OTHER_HOMES = ["aaa", "alice-2", "alice.bak", "alice0", "alicf", "bob", "zed"]


def checksum_rows(md5_hex: str, size: int, count: int, st: os.stat_result) -> list[tuple]:
    """Rows of `count` files of one MD5 in homes that sort around alice's, none in it."""
    return [
        (f"{OTHER_HOMES[i % len(OTHER_HOMES)]}/f{i:05}", size, st.st_mtime_ns, st.st_ino, md5_hex)
        for i in range(count)
    ]


def test_the_instant_upload_lookup_reads_only_the_users_own_rows(tmp_path):
    cache = ChecksumCache(tmp_path / "checksums.sqlite")
    fake = os.stat(tmp_path)
    cache.record("alice/mine", fake, "0" * 32)

    def lookups() -> None:
        for _ in range(200):
            cache.find("0" * 32, fake.st_size, "alice")

    empty = fastest({"lookups": lookups}, 9)["lookups"]
    with cache._lock:
        cache._db.executemany(
            "INSERT INTO checksums VALUES (?, ?, ?, ?, ?)",
            checksum_rows("0" * 32, fake.st_size, 10_000, fake),
        )
    assert cache.find("0" * 32, fake.st_size, "alice") == ["alice/mine"]  # no other home's file
    full = fastest({"lookups": lookups}, 9)["lookups"]
    cache.close()
    # A lookup reading every row of the MD5 costs ~100x more with these 10,000 rows; an
    # indexed range only a level more of the B-tree. 200 lookups take ~1 ms, where the
    # timer's and the machine's noise is a good part of it: hence 5x, not 2x.
    assert full < 5 * empty, (empty, full)


def test_an_instant_upload_stays_flat_with_10000_files_of_its_md5_in_other_homes(server, raw):
    data = os.urandom(500)  # within carol's quota, for the last check
    stream = raw(user="alice")
    assert put(stream, "seed", data)[1]["ok"]  # from now on alice's puts of it are instant
    names = iter(range(1000))

    def instant_put() -> None:
        ack, result = put(stream, f"copy{next(names)}", data)
        assert ack["offset"] == len(data) and result["ok"], (ack, result)

    before = fastest({"put": instant_put}, 9)["put"]
    source = server.root / "bob" / "source"
    source.parent.mkdir()
    source.write_bytes(data)
    for home in OTHER_HOMES:
        (server.root / home).mkdir(exist_ok=True)
    rows = checksum_rows(md5(data), len(data), 10_000, source.stat())
    for path, *_ in rows:
        os.link(source, server.root / path)
    with sqlite3.connect(server.root / ".sockftp" / "checksums.sqlite") as db:
        db.executemany("INSERT OR REPLACE INTO checksums VALUES (?, ?, ?, ?, ?)", rows)
    after = fastest({"put": instant_put}, 9)["put"]
    assert after < 2.5 * before, (before, after)
    # Another user's copy is never used: bob's bytes are not "already there" for carol.
    assert put(raw(user="carol"), "c", data)[0] == {"ok": True, "offset": 0}


def test_a_put_into_a_home_of_100000_files_costs_what_it_does_in_an_empty_one(server, raw):
    carol = server.root / "carol"  # a quota: usage is counted, by a counter, not a walk
    stream = raw(user="carol")
    names = iter(range(1000))

    def small_put() -> None:
        name = f"p{next(names)}"
        assert put(stream, name, name.encode() * 10)[1]["ok"]

    empty = fastest({"put": small_put}, 9)["put"]
    many = carol / "many"
    many.mkdir()
    for source in range(4):  # hard links of a few empty files: quick to make
        os.close(os.open(many / f"s{source}", os.O_WRONLY | os.O_CREAT, 0o644))
    for i in range(100_000):
        os.link(many / f"s{i % 4}", many / f"f{i}")
    full = fastest({"put": small_put}, 9)["put"]
    assert full < 2.5 * empty, (empty, full)


# -- 7. the metadata folder ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["symlink", "world-writable", "foreign", "file"])
def test_a_metadata_folder_that_is_not_the_servers_own_stops_the_server(tmp_path, kind):
    config = write_config(tmp_path)
    metadata = tmp_path / "storage" / ".sockftp"
    decoy = tmp_path / "decoy"
    decoy.mkdir(mode=0o700)
    if kind == "symlink":
        metadata.symlink_to(decoy)
    elif kind == "world-writable":
        metadata.mkdir()
        metadata.chmod(0o777)
    elif kind == "foreign":
        if os.geteuid() != 0:
            pytest.skip("needs root to give the folder away")
        metadata.mkdir(mode=0o700)
        os.chown(metadata, 65534, 65534)
    else:
        metadata.write_bytes(b"not a folder")
    result = subprocess.run(
        [sys.executable, "-m", "ftpserver", "--config", str(config), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=15,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftpserver: "), result.stderr
    assert ".sockftp" in lines[0] and "Traceback" not in result.stderr
    assert os.listdir(decoy) == []  # nothing written through the link


# -- 8. limits of the process: descriptors and file size ----------------------------

DEEP_STAT = r"""
import os, resource, sys
from pathlib import Path
from ftpserver.config import Account
from ftpserver.storage import LocalStorage
root = Path(sys.argv[1])
storage = LocalStorage(root)
alice = Account("alice", (root / "alice").resolve(), "rw")
storage.ensure_home(alice)
deep = "/".join(["d"] * 250)
storage.mkdir(alice, deep, parents=True)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
for _ in range(20):
    storage.stat(alice, deep)
    storage.list(alice, deep)
print("ok")
"""


def test_a_walk_250_deep_needs_a_handful_of_descriptors_not_one_per_level(tmp_path):
    """A deep path must not cost one open descriptor per level: with 64 allowed in all,
    stat and ls at depth 250 still work (a walk holding its ancestors open would fail)."""
    (tmp_path / "root").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", DEEP_STAT, str(tmp_path / "root")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


FILE_SIZE_LIMIT = r"""
import hashlib, os, resource, sys
from pathlib import Path
from ftpproto import ProtocolError
from ftpserver.config import Account
from ftpserver.storage import LocalStorage
root = Path(sys.argv[1])
storage = LocalStorage(root)
carol = Account("carol", (root / "carol").resolve(), "rw", quota=10_000)
storage.ensure_home(carol)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
codes = []
for i in range(6):
    data = bytes([i]) * 5000
    upload = storage.begin_upload(carol, f"p{i}", len(data), hashlib.md5(data).hexdigest(), True, False)
    for start in range(0, len(data), 1000):
        upload.write(memoryview(data)[start : start + 1000])
    try:
        upload.finish()
        codes.append("ok")
    except ProtocolError as exc:
        upload.abort()
        codes.append(exc.code)
on_disk = sum(f.stat().st_size for f in (root / "carol").rglob("*") if f.is_file())
print(",".join(codes), on_disk, storage.usage.used(("carol",)))
"""


def test_a_write_refused_by_the_file_size_limit_leaves_nothing_uncounted(tmp_path):
    """EFBIG part-way through a put answers too_large and keeps no uncounted bytes."""
    (tmp_path / "root").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMIT, str(tmp_path / "root")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    codes, on_disk, counted = done.stdout.split()
    assert codes == ",".join(["too_large"] * 6)
    assert int(on_disk) == int(counted) == 0


def test_an_absolute_link_into_the_home_is_followed_and_one_out_of_it_is_not(world, raw):
    server, outside, _ = world
    home = server.root / "alice"
    (home / "docs").mkdir(parents=True)
    (home / "docs" / "f").write_bytes(b"inside")
    (home / "abs").symlink_to(home / "docs")  # absolute, as v1 servers followed it
    (home / "out").symlink_to(outside)
    stream = raw(user="alice")
    assert get(stream, "abs/f")[1] == b"inside"
    assert [e["name"] for e in stream.request("ls")["entries"]] == ["abs", "docs"]
    assert_error(stream.request("stat", path="out/secret"), "forbidden")


def test_rename_and_recursive_rm_move_or_remove_links_themselves_never_what_they_point_at(world, raw):
    server, outside, bob = world
    home = server.root / "alice"
    (home / "tree" / "sub").mkdir(parents=True)
    (home / "tree" / "sub" / "f").write_bytes(b"inside")
    (home / "tree" / "out").symlink_to(outside)  # a link out, inside the tree
    (home / "tree" / "bobs").symlink_to(bob / "secret")
    (home / "linkout").symlink_to(outside)
    before, before_bob = tree(outside), tree(bob)
    stream = raw(user="alice")
    # The link itself moves; its target is neither moved nor read.
    assert stream.request("rename", path="linkout", to="moved-link")["ok"]
    assert os.readlink(home / "moved-link") == str(outside)
    # A path through a link out of the home is refused, on either side of a rename.
    assert_error(stream.request("rename", path="moved-link/secret", to="stolen"), "forbidden")
    assert_error(stream.request("rename", path="tree/sub/f", to="moved-link/planted"), "forbidden")
    assert_error(stream.request("rm", path="moved-link/secret", recursive=True), "forbidden")
    # rm -r removes the links in the tree and leaves what they point at alone.
    assert stream.request("rm", path="tree", recursive=True)["ok"]
    assert not (home / "tree").exists()
    assert tree(outside) == before and tree(bob) == before_bob
