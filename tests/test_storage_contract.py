"""The storage backend contract: what every backend must do, whatever holds the bytes.

One suite, run by each backend (the shape of fsspec's `fsspec/tests/abstract/` and
SQLAlchemy's `testing/suite/`). The tests use nothing but the `Storage` and `Upload`
interfaces of `ftpserver/storage/base.py` and `Account` to describe users; what the
interface cannot do (build the backend, say where a home is, make an abandoned upload
look old) is each backend's factory's business.

To add a backend, write a factory `<name>_backend(where: Path, *services) -> Backend`
and add it to `FACTORIES` (and to `SERVICES` the fixtures it needs, such as a running
object store): every test then runs against it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ftpproto import (
    BadRequestError,
    ChecksumMismatchError,
    ExistsError,
    ForbiddenError,
    InternalError,
    IsDirectoryError,
    NotDirectoryError,
    NotEmptyError,
    NotFoundError,
    ProtocolError,
    QuotaExceededError,
    TooLargeError,
)
from ftpserver.config import Account
from ftpserver.handler import LS_PAGE
from ftpserver.storage import LocalStorage, Storage, Upload
from ftpserver.storage.local import PARTIAL_PREFIX, TEMP_PREFIX
from ftpserver.storage.s3 import PARTIAL_PREFIX as S3_PARTIAL_PREFIX
from ftpserver.storage.s3 import S3Storage, make_client

from .services import ObjectStore

pytestmark = pytest.mark.timeout(60)


# -- backends ------------------------------------------------------------------------


@dataclass
class Backend:
    """One backend under test, and the few things the suite cannot do through `Storage`.

    `start(max_file_size)` makes a new `Storage` over the backend's data (a server
    start); `home_for(name)` is where an account's home lies (`None`: a home at the
    top of the storage, as an anonymous home at `/` is); `age_partials(seconds)` makes
    every interrupted upload held so far look untouched for that long."""

    name: str
    start: Callable[[int | None], Storage]
    home_for: Callable[[str | None], Path]
    age_partials: Callable[[float], None]
    storage: Storage = field(init=False)
    accounts: list[Account] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.storage = self.start(None)

    def account(self, name: str | None = "alice", quota: int | None = None) -> Account:
        """A read-write account with its home ready, as after a login."""
        account = Account(name, self.home_for(name), "rw", quota)
        self.storage.ensure_home(account)
        self.accounts.append(account)
        return account

    def restart(self, max_file_size: int | None = None) -> Storage:
        """Close the storage and open it again over the same data, as a server restart
        does; every account made so far logs in again."""
        self.storage.close()
        self.storage = self.start(max_file_size)
        for account in self.accounts:
            self.storage.ensure_home(account)
        return self.storage


def local_backend(where: Path) -> Backend:
    """Homes are directories below a storage root; an interrupted upload is a hidden file
    beside its destination, aged by setting its mtime."""
    root = where / "storage"
    root.mkdir()

    def home_for(name: str | None) -> Path:
        return (root / name).resolve() if name else root.resolve()

    def age_partials(seconds: float) -> None:
        then = time.time() - seconds
        for directory, _, files in os.walk(root):
            for name in files:
                if name.startswith((PARTIAL_PREFIX, TEMP_PREFIX)):
                    os.utime(os.path.join(directory, name), (then, then), follow_symlinks=False)

    return Backend("local", lambda max_file_size: LocalStorage(root, max_file_size), home_for, age_partials)


def s3_backend(where: Path, store: ObjectStore) -> Backend:
    """Homes are key prefixes in a bucket of a real SeaweedFS, below a prefix of this
    test's own; an interrupted upload is a state object (and perhaps a multipart upload)
    beside its destination, aged by rewriting the time in its metadata."""
    root = where / "state"
    root.mkdir()
    settings = store.settings(where, prefix=f"contract-{uuid.uuid4().hex[:12]}/")
    client = make_client(settings)

    def home_for(name: str | None) -> Path:
        return (root / name).resolve() if name else root.resolve()

    def age_partials(seconds: float) -> None:
        then = f"{time.time() - seconds:.3f}"
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=store.bucket, Prefix=settings.prefix
        ):
            for item in page.get("Contents", []):
                if item["Key"].rsplit("/", 1)[-1].startswith(S3_PARTIAL_PREFIX):
                    metadata = client.head_object(Bucket=store.bucket, Key=item["Key"])["Metadata"]
                    client.copy_object(
                        Bucket=store.bucket,
                        Key=item["Key"],
                        CopySource={"Bucket": store.bucket, "Key": item["Key"]},
                        MetadataDirective="REPLACE",
                        Metadata={**metadata, "updated": then},
                    )

    def start(max_file_size: int | None) -> Storage:
        return S3Storage(client, settings, root, max_file_size)

    return Backend("s3", start, home_for, age_partials)


FACTORIES: dict[str, Callable[..., Backend]] = {"local": local_backend, "s3": s3_backend}
SERVICES: dict[str, tuple[str, ...]] = {"s3": ("object_store",)}  # fixtures a factory takes after `where`


@pytest.fixture(params=sorted(FACTORIES))
def backend(request, tmp_path: Path) -> Iterator[Backend]:
    services = [request.getfixturevalue(name) for name in SERVICES.get(request.param, ())]
    made = FACTORIES[request.param](tmp_path, *services)
    yield made
    made.storage.close()


@pytest.fixture
def storage(backend: Backend) -> Storage:
    return backend.storage


@pytest.fixture
def alice(backend: Backend) -> Account:
    return backend.account("alice")


# -- helpers: a session's use of the interface -----------------------------------------


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def feed(upload: Upload, data: bytes, chunk: int = 64 * 1024) -> None:
    """Hand `data` to the upload as a session's data phase does: received into
    `space()` when the upload offers it, else into a buffer of our own."""
    view, own = memoryview(data), memoryview(bytearray(chunk))
    while view:
        target = upload.space() or own
        count = min(len(view), len(target), chunk)
        target[:count] = view[:count]
        upload.write(target[:count])
        view = view[count:]


def begin(
    storage: Storage,
    account: Account,
    path: str,
    data: bytes,
    overwrite: bool = True,
    parents: bool = False,
    mtime: float | None = None,
    mode: int | None = None,
) -> Upload:
    return storage.begin_upload(account, path, len(data), md5(data), overwrite, parents, mtime, mode)


def put(
    storage: Storage,
    account: Account,
    path: str,
    data: bytes,
    overwrite: bool = True,
    parents: bool = False,
    mtime: float | None = None,
    mode: int | None = None,
) -> int:
    """A whole `put` as the session runs it; returns the offset the ack would carry."""
    upload = begin(storage, account, path, data, overwrite, parents, mtime, mode)
    offset = upload.offset
    try:
        feed(upload, data[offset:])
        upload.finish()
    except BaseException:
        upload.abort()
        raise
    return offset


def interrupt(storage: Storage, account: Account, path: str, data: bytes, sent: int) -> int:
    """A `put` whose connection drops after `sent` bytes; returns the offset it began at."""
    upload = begin(storage, account, path, data)
    offset = upload.offset
    feed(upload, data[offset:sent])
    upload.abort()
    return offset


def resume_offset(storage: Storage, account: Account, path: str, data: bytes) -> int:
    """The offset a retry of this put would be told, leaving things as they were."""
    upload = begin(storage, account, path, data)
    upload.abort()
    return upload.offset


def read(storage: Storage, account: Account, path: str) -> bytes:
    snapshot = storage.open_snapshot(account, path)
    try:
        snapshot.file.seek(0)
        data = snapshot.file.read()
    finally:
        snapshot.close()
    assert len(data) == snapshot.size
    return data


def names(storage: Storage, account: Account, path: str = "/") -> list[str]:
    return [e["name"] for e in storage.list(account, path)[1]]


def fits(storage: Storage, account: Account, size: int, path: str = "probe") -> bool:
    """Whether a put of `size` new bytes is accepted now; takes nothing (aborts at once)."""
    try:
        upload = storage.begin_upload(account, path, size, md5(b"\xff" * size), True, False)
    except QuotaExceededError:
        return False
    upload.abort()
    return True


def content(size: int, seed: int = 0) -> bytes:
    """`size` bytes that differ with `seed`."""
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"x" * (size % 32)


# -- confinement -----------------------------------------------------------------------

OPERATIONS: dict[str, Callable[[Storage, Account, str], object]] = {
    "ls": lambda s, a, p: s.list(a, p),
    "stat": lambda s, a, p: s.stat(a, p),
    "get": lambda s, a, p: s.open_snapshot(a, p).close(),
    "put": lambda s, a, p: begin(s, a, p, b"abc").abort(),
    "put -p": lambda s, a, p: begin(s, a, p, b"abc", parents=True).abort(),
    "put (no overwrite)": lambda s, a, p: begin(s, a, p, b"abc", overwrite=False).abort(),
    "mkdir": lambda s, a, p: s.mkdir(a, p, False),
    "mkdir -p": lambda s, a, p: s.mkdir(a, p, True),
    "rm": lambda s, a, p: s.remove(a, p),
    "rm -r": lambda s, a, p: s.remove(a, p, True),
    "rename from": lambda s, a, p: s.rename(a, p, "renamed", True),
    "rename to": lambda s, a, p: s.rename(a, "d", p, True),
}


def outcome(call: Callable[[Storage, Account, str], object], *args: object) -> str:
    """The name of the error an operation raised, or "ok"."""
    try:
        call(*args)
    except ProtocolError as exc:
        return type(exc).__name__
    return "ok"


CLIMBS = ["..", "../x", "/..", "/../..", "a/../..", "d/../../x", "../bob", "../bob/secret", "./../alice"]
RESERVED = [
    ".sockftp",
    ".sockftp/checksums.sqlite",
    ".sockftpnotes",
    ".sockftp.part.0123456789abcdef0123456789abcdef",
    ".sockftp.tmp.x",
    "d/.sockftp.part.x",
    ".sockftp.part.x/y",
]


@pytest.mark.parametrize("path", CLIMBS + RESERVED)
def test_climbing_out_and_reserved_names_are_forbidden_for_every_op(backend, storage, alice, path):
    bob = backend.account("bob")
    put(storage, bob, "secret", b"bob's")
    storage.mkdir(alice, "d", False)
    answers = {op: outcome(call, storage, alice, path) for op, call in OPERATIONS.items()}
    assert answers == dict.fromkeys(OPERATIONS, "ForbiddenError")
    assert names(storage, alice) == ["d"] and names(storage, alice, "d") == []
    assert names(storage, bob) == ["secret"] and read(storage, bob, "secret") == b"bob's"


def test_one_users_home_never_shows_anothers_files(backend, storage):
    # "ann" is a prefix of "anna": a backend keyed by strings must not confuse them.
    ann, anna = backend.account("ann", quota=100), backend.account("anna")
    put(storage, anna, "d/secret", b"anna's" * 100, parents=True)
    assert names(storage, ann) == []
    for path in ("d", "d/secret", "/anna/d/secret", "a/d/secret"):
        for call in (storage.stat, storage.list, storage.open_snapshot):
            with pytest.raises(NotFoundError):
                call(ann, path)
    with pytest.raises(NotFoundError):
        storage.remove(ann, "d/secret")
    assert put(storage, ann, "mine", b"x" * 100) == 0  # anna's bytes count for anna, not ann
    assert names(storage, ann) == ["mine"] and names(storage, anna) == ["d"]
    assert read(storage, anna, "d/secret") == b"anna's" * 100


def test_instant_upload_stays_inside_one_home(backend, storage, alice):
    bob = backend.account("bob")
    payload = content(10_000, seed=1)
    assert put(storage, alice, "original", payload) == 0
    # Within one home the server already holds these bytes (protocol: instant upload)...
    assert put(storage, alice, "copy", payload) == len(payload)
    assert read(storage, alice, "copy") == payload
    # ...but another user's identical put learns nothing and sends every byte.
    assert put(storage, bob, "mine", payload) == 0
    assert read(storage, bob, "mine") == payload


def test_a_home_at_the_top_never_lists_the_servers_own_names(backend, storage, alice):
    top = backend.account(None)
    put(storage, alice, "f", b"alice's")
    interrupt(storage, alice, "g", b"0123456789", sent=5)
    listed = names(storage, top)
    assert "alice" in listed and not any(name.startswith(".sockftp") for name in listed)
    assert names(storage, top, "alice") == ["f"]


# -- rename and recursive removal (extensions) -------------------------------------------


def test_rename_moves_a_file_or_a_tree_and_keeps_its_md5(storage, alice):
    payload = content(5000, seed=7)
    put(storage, alice, "a/b/f", payload, parents=True)
    storage.rename(alice, "a/b/f", "a/g", False)
    assert names(storage, alice, "a") == ["b", "g"] and names(storage, alice, "a/b") == []
    assert read(storage, alice, "a/g") == payload and storage.stat(alice, "a/g")["md5"] == md5(payload)
    storage.rename(alice, "a", "z", False)
    assert names(storage, alice) == ["z"] and read(storage, alice, "z/g") == payload
    storage.rename(alice, "z/g", "z/g", False)  # to itself: nothing happens
    assert read(storage, alice, "z/g") == payload


def test_rename_onto_an_existing_name(storage, alice):
    put(storage, alice, "old", b"old bytes")
    put(storage, alice, "new", b"new bytes")
    storage.mkdir(alice, "dir", False)
    with pytest.raises(ExistsError):
        storage.rename(alice, "new", "old", False)
    assert read(storage, alice, "old") == b"old bytes" and read(storage, alice, "new") == b"new bytes"
    storage.rename(alice, "new", "old", True)
    assert names(storage, alice) == ["dir", "old"] and read(storage, alice, "old") == b"new bytes"
    with pytest.raises(IsDirectoryError):
        storage.rename(alice, "old", "dir", True)  # a directory is never replaced
    with pytest.raises(NotDirectoryError):
        storage.rename(alice, "dir", "old", True)
    with pytest.raises(ExistsError):
        storage.rename(alice, "dir", "old", False)
    assert names(storage, alice) == ["dir", "old"] and read(storage, alice, "old") == b"new bytes"


def test_rename_of_one_of_two_identical_files_onto_the_other(storage, alice):
    """An instant upload may make the second name share the first one's bytes."""
    payload = content(3000, seed=8)
    put(storage, alice, "one", payload)
    put(storage, alice, "two", payload)
    with pytest.raises(ExistsError):
        storage.rename(alice, "one", "two", False)
    storage.rename(alice, "one", "two", True)
    assert names(storage, alice) == ["two"] and read(storage, alice, "two") == payload


def test_rename_refusals(storage, alice):
    storage.mkdir(alice, "d/e", True)
    put(storage, alice, "f", b"x")
    for path, to, error in [
        ("missing", "x", NotFoundError),
        ("f", "no/such/dir/f", NotFoundError),
        ("d", "d/e/d", ForbiddenError),  # into itself
        ("d", "d/d", ForbiddenError),
        ("/", "home", ForbiddenError),
        ("f", "/", ForbiddenError),
    ]:
        with pytest.raises(error):
            storage.rename(alice, path, to, True)
    assert names(storage, alice) == ["d", "f"] and names(storage, alice, "d") == ["e"]


def test_rename_keeps_the_quota_and_a_replace_frees_the_old_bytes(backend, storage):
    alice = backend.account("alice", quota=1000)
    put(storage, alice, "a", b"x" * 600)
    put(storage, alice, "b", b"y" * 300)
    storage.rename(alice, "a", "moved", False)
    assert storage.home_usage(alice)["used"] == 900
    storage.rename(alice, "b", "moved", True)
    assert storage.home_usage(alice)["used"] == 300
    assert fits(storage, alice, 700) and not fits(storage, alice, 701)


def test_a_rename_between_nested_homes_moves_the_bytes_between_their_usage(backend, storage):
    """A home at the top holds the users' homes: what it moves out of one leaves that one's usage."""
    alice = backend.account("alice", quota=1000)
    top = backend.account(None)
    put(storage, alice, "d/f", b"x" * 400, parents=True)
    storage.rename(top, "alice/d", "from-alice", False)
    assert storage.home_usage(alice)["used"] == 0 and names(storage, alice) == []
    storage.rename(top, "from-alice", "alice/back", False)
    assert storage.home_usage(alice)["used"] == 400 and read(storage, alice, "back/f") == b"x" * 400


def test_recursive_rm_removes_a_tree_and_its_usage(backend, storage):
    alice = backend.account("alice", quota=10_000)
    for path in ("t/a", "t/b/c", "t/b/d/e", "keep"):
        put(storage, alice, path, content(500, seed=len(path)), parents=True)
    storage.mkdir(alice, "t/empty", False)
    interrupt(storage, alice, "t/b/half", content(900, seed=9), 300)  # a kept partial goes too
    with pytest.raises(NotEmptyError):
        storage.remove(alice, "t")
    storage.remove(alice, "t", True)
    assert names(storage, alice) == ["keep"]
    assert storage.home_usage(alice)["used"] == 500
    storage.remove(alice, "keep", True)  # a file: removed as by plain rm
    assert names(storage, alice) == [] and storage.home_usage(alice)["used"] == 0
    with pytest.raises(NotFoundError):
        storage.remove(alice, "t", True)
    with pytest.raises(ForbiddenError):
        storage.remove(alice, "/", True)


def test_recursive_rm_stops_at_an_upload_in_progress(storage, alice):
    storage.mkdir(alice, "t/busy", True)
    put(storage, alice, "t/done", b"x")
    upload = begin(storage, alice, "t/busy/f", content(1000))
    try:
        feed(upload, content(1000)[:100])
        with pytest.raises(NotEmptyError):
            storage.remove(alice, "t", True)
        feed(upload, content(1000)[100:])
        upload.finish()
    except BaseException:
        upload.abort()
        raise
    assert read(storage, alice, "t/busy/f") == content(1000)  # the upload was not disturbed
    storage.remove(alice, "t", True)
    assert names(storage, alice) == []


# -- attributes (extension): modification time and the execute bit -------------------------

WHEN = 1_600_000_000.25  # a time in the past, to the quarter second


def test_a_put_keeps_the_modification_time_and_the_execute_bit(storage, alice):
    put(storage, alice, "tool", b"#!/bin/sh\n", mtime=WHEN, mode=0o755)
    put(storage, alice, "data", b"plain", mtime=WHEN + 1, mode=0o600)
    tool, data = storage.stat(alice, "tool"), storage.stat(alice, "data")
    assert tool["mtime"] == pytest.approx(WHEN, abs=1e-6) and tool["mode"] & 0o100
    assert data["mtime"] == pytest.approx(WHEN + 1, abs=1e-6) and not data["mode"] & 0o111
    snapshot = storage.open_snapshot(alice, "tool")
    snapshot.close()
    assert snapshot.mtime == pytest.approx(WHEN, abs=1e-6) and snapshot.mode == tool["mode"]
    put(storage, alice, "plain", b"no attributes")  # without them: the time of the upload
    assert abs(storage.stat(alice, "plain")["mtime"] - time.time()) < 60


def test_an_identical_file_gets_new_attributes_without_a_byte_sent(storage, alice):
    payload = content(20_000, seed=11)
    put(storage, alice, "f", payload, mtime=WHEN)
    assert put(storage, alice, "f", payload, mtime=WHEN + 100, mode=0o755) == len(payload)
    entry = storage.stat(alice, "f")
    assert entry["mtime"] == pytest.approx(WHEN + 100, abs=1e-6) and entry["mode"] & 0o100
    assert read(storage, alice, "f") == payload and storage.stat(alice, "f")["md5"] == md5(payload)


def test_files_sharing_content_keep_their_own_attributes(storage, alice):
    """An instant upload may share the bytes of another file; never its attributes."""
    payload = content(20_000, seed=12)
    put(storage, alice, "first", payload, mtime=WHEN, mode=0o644)
    assert put(storage, alice, "second", payload, mtime=WHEN + 5, mode=0o755) == len(payload)
    assert put(storage, alice, "third", payload) == len(payload)  # a plain put may share the first's
    first, second = storage.stat(alice, "first"), storage.stat(alice, "second")
    assert first["mtime"] == pytest.approx(WHEN, abs=1e-6) and not first["mode"] & 0o111
    assert second["mtime"] == pytest.approx(WHEN + 5, abs=1e-6) and second["mode"] & 0o100
    put(storage, alice, "third", payload, mtime=WHEN + 9)  # third may share first's inode
    assert storage.stat(alice, "third")["mtime"] == pytest.approx(WHEN + 9, abs=1e-6)
    assert storage.stat(alice, "first")["mtime"] == pytest.approx(WHEN, abs=1e-6)
    assert [read(storage, alice, name) for name in ("first", "second", "third")] == [payload] * 3


def test_without_overwrite_an_identical_file_keeps_its_attributes(storage, alice):
    put(storage, alice, "f", b"same", mtime=WHEN)
    upload = storage.begin_upload(alice, "f", 4, md5(b"same"), False, False, WHEN + 50, 0o755)
    assert upload.offset == 4
    upload.finish()
    entry = storage.stat(alice, "f")
    assert entry["mtime"] == pytest.approx(WHEN, abs=1e-6) and not entry["mode"] & 0o111


# -- atomic upload -----------------------------------------------------------------------


def test_nothing_is_visible_under_the_name_until_finish(storage, alice):
    put(storage, alice, "old", b"old bytes")
    payload = content(100_000, seed=2)
    new, replacing = begin(storage, alice, "new", payload), begin(storage, alice, "old", payload)
    for upload in (new, replacing):
        assert upload.offset == 0
        feed(upload, payload)
    with pytest.raises(NotFoundError):
        storage.stat(alice, "new")
    with pytest.raises(NotFoundError):
        storage.open_snapshot(alice, "new")
    assert names(storage, alice) == ["old"]
    assert read(storage, alice, "old") == b"old bytes" and storage.stat(alice, "old")["size"] == 9
    new.finish()
    replacing.finish()
    assert names(storage, alice) == ["new", "old"]
    assert read(storage, alice, "new") == payload and read(storage, alice, "old") == payload
    assert storage.stat(alice, "old")["md5"] == md5(payload)


def test_a_wrong_md5_keeps_the_previous_file_and_leaves_nothing(backend, storage):
    alice = backend.account("alice", quota=1000)
    put(storage, alice, "f", b"o" * 400)
    sent, announced = b"n" * 500, md5(b"m" * 500)
    upload = storage.begin_upload(alice, "f", 500, announced, True, False)
    feed(upload, sent)
    with pytest.raises(ChecksumMismatchError):
        upload.finish()
    upload.abort()  # as the session does after any failure
    assert read(storage, alice, "f") == b"o" * 400 and storage.stat(alice, "f")["md5"] == md5(b"o" * 400)
    assert names(storage, alice) == ["f"]
    retry = storage.begin_upload(alice, "f", 500, announced, True, False)
    retry.abort()
    assert retry.offset == 0  # the bad bytes are not kept for a resume
    assert fits(storage, alice, 600)  # nor counted: 400 + 600 is the whole quota


def test_a_resumed_upload_that_fails_its_md5_gives_back_what_it_held(backend, storage):
    alice = backend.account("alice", quota=1000)
    put(storage, alice, "f", b"o" * 400)
    wanted = b"r" * 300
    interrupt(storage, alice, "r", wanted, sent=200)  # 200 bytes held for a resume
    upload = begin(storage, alice, "r", wanted)
    assert upload.offset == 200
    feed(upload, b"X" * 100)  # the rest arrives damaged
    with pytest.raises(ChecksumMismatchError):
        upload.finish()
    upload.abort()
    assert names(storage, alice) == ["f"]
    assert resume_offset(storage, alice, "r", wanted) == 0
    assert fits(storage, alice, 600)  # the 200 held bytes went and are no longer counted


def test_short_data_is_a_checksum_mismatch_and_publishes_nothing(storage, alice):
    payload = content(1000, seed=3)
    upload = begin(storage, alice, "f", payload)
    feed(upload, payload[:600])
    with pytest.raises(ChecksumMismatchError):
        upload.finish()
    upload.abort()
    assert names(storage, alice) == []


def test_abort_never_makes_the_file_visible(storage, alice):
    put(storage, alice, "old", b"previous")
    for path in ("new", "old"):
        upload = begin(storage, alice, path, b"every byte arrived")
        feed(upload, b"every byte arrived")
        upload.abort()
    assert names(storage, alice) == ["old"] and read(storage, alice, "old") == b"previous"
    with pytest.raises(NotFoundError):
        storage.stat(alice, "new")


def test_overwrite_false_on_an_existing_file_is_refused_before_any_data(storage, alice):
    put(storage, alice, "f", b"first")
    with pytest.raises(ExistsError):
        begin(storage, alice, "f", b"second", overwrite=False)
    assert read(storage, alice, "f") == b"first" and names(storage, alice) == ["f"]


def test_the_loser_of_an_overwrite_false_race_keeps_nothing(backend, storage):
    alice = backend.account("alice", quota=600)
    late = b"L" * 300
    upload = begin(storage, alice, "f", late, overwrite=False)
    feed(upload, late)
    put(storage, alice, "f", b"W" * 200, overwrite=False)  # another session wins the name
    with pytest.raises(ExistsError):
        upload.finish()
    upload.abort()
    assert read(storage, alice, "f") == b"W" * 200 and names(storage, alice) == ["f"]
    assert resume_offset(storage, alice, "f", late) == 0  # its partial is gone...
    assert fits(storage, alice, 400)  # ...and no longer counted: 200 + 400 is the quota


@pytest.mark.parametrize("overwrite", [True, False])
def test_an_identical_file_already_there_needs_no_data(storage, alice, overwrite):
    payload = content(5000, seed=4)
    put(storage, alice, "f", payload)
    upload = begin(storage, alice, "f", payload, overwrite=overwrite)
    assert upload.offset == len(payload)
    upload.finish()
    assert read(storage, alice, "f") == payload and names(storage, alice) == ["f"]


def test_parents_creates_missing_directories(storage, alice):
    with pytest.raises(NotFoundError):
        put(storage, alice, "a/b/f", b"deep")
    assert names(storage, alice) == []
    put(storage, alice, "a/b/f", b"deep", parents=True)
    assert read(storage, alice, "a/b/f") == b"deep"
    assert storage.stat(alice, "a/b")["type"] == "dir"


# -- resume ------------------------------------------------------------------------------


def test_an_interrupted_upload_resumes_where_it_stopped(storage, alice):
    payload = content(200_000, seed=5)
    assert interrupt(storage, alice, "f", payload, sent=123_457) == 0
    assert names(storage, alice) == []
    upload = begin(storage, alice, "f", payload)
    assert upload.offset == 123_457
    feed(upload, payload[upload.offset :])
    upload.finish()
    assert read(storage, alice, "f") == payload
    assert storage.stat(alice, "f")["md5"] == md5(payload)


def test_only_the_same_path_size_and_md5_resume(storage, alice):
    payload = content(10_000, seed=6)
    interrupt(storage, alice, "f", payload, sent=4000)
    other_md5 = content(10_000, seed=7)
    assert resume_offset(storage, alice, "f", other_md5) == 0
    assert resume_offset(storage, alice, "f", payload + b"!") == 0
    assert resume_offset(storage, alice, "g", payload) == 0
    put(storage, alice, "f", other_md5)  # a different upload of f does not touch this one's bytes
    assert resume_offset(storage, alice, "f", payload) == 4000
    assert put(storage, alice, "f", payload) == 4000 and read(storage, alice, "f") == payload


def test_an_interrupted_upload_survives_a_restart(backend, alice):
    payload = content(50_000, seed=8)
    backend.storage.mkdir(alice, "d", False)
    interrupt(backend.storage, alice, "d/f", payload, sent=20_000)
    storage = backend.restart()
    assert put(storage, alice, "d/f", payload) == 20_000
    assert read(storage, alice, "d/f") == payload


# -- snapshots ---------------------------------------------------------------------------


def test_an_open_snapshot_keeps_reading_the_old_bytes_after_a_replace(storage, alice):
    old, new = content(300_000, seed=9), content(1000, seed=10)
    put(storage, alice, "f", old)
    snapshot = storage.open_snapshot(alice, "f")
    try:
        assert snapshot.size == len(old) and snapshot.md5 == md5(old)
        snapshot.file.seek(0)
        head = snapshot.file.read(1000)
        put(storage, alice, "f", new)
        assert head + snapshot.file.read() == old
        assert (snapshot.size, snapshot.md5) == (len(old), md5(old))
    finally:
        snapshot.close()
    fresh = storage.open_snapshot(alice, "f")
    fresh.close()
    assert (fresh.size, fresh.md5) == (len(new), md5(new))
    assert read(storage, alice, "f") == new
    stat = storage.stat(alice, "f")
    assert (stat["type"], stat["size"], stat["md5"]) == ("file", len(new), md5(new))


def test_md5_is_the_md5_of_the_bytes_served(storage, alice):
    for i, size in enumerate((0, 1, 65_536, 65_537, 1_000_003)):
        payload = content(size, seed=i)
        put(storage, alice, f"f{i}", payload)
        snapshot = storage.open_snapshot(alice, f"f{i}")
        snapshot.file.seek(0)
        served = snapshot.file.read()
        snapshot.close()
        assert served == payload and snapshot.md5 == md5(payload)
        assert storage.stat(alice, f"f{i}")["md5"] == md5(payload)


# -- quota -------------------------------------------------------------------------------


def test_a_put_over_the_quota_is_refused_before_any_data(backend, storage):
    alice = backend.account("alice", quota=1000)
    for path, parents in (("big", False), ("new/dirs/big", True)):
        with pytest.raises(QuotaExceededError):
            begin(storage, alice, path, b"x" * 1001, parents=parents)
    assert names(storage, alice) == []  # not even the directories of `parents`
    assert put(storage, alice, "full", b"x" * 1000) == 0
    with pytest.raises(QuotaExceededError):
        begin(storage, alice, "one more", b"x")


def test_home_usage_follows_puts_and_removals(backend, storage):
    alice, bob = backend.account("alice", quota=1000), backend.account("bob")
    assert storage.home_usage(alice) | {"disk_free": 0} == {
        "used": 0,
        "quota": 1000,
        "free": 1000,
        "disk_free": 0,
    }
    put(storage, alice, "a", b"x" * 300)
    put(storage, alice, "dir/b", b"y" * 200, parents=True)
    put(storage, bob, "c", b"z" * 50)
    usage = storage.home_usage(alice)
    assert (usage["used"], usage["quota"], usage["free"]) == (500, 1000, 500)
    assert isinstance(usage["disk_free"], int) and usage["disk_free"] > 0
    assert storage.home_usage(bob)["used"] == 50 and storage.home_usage(bob)["free"] is None
    put(storage, alice, "a", b"x" * 100)  # a replace counts the difference
    storage.remove(alice, "dir/b")
    assert storage.home_usage(alice)["used"] == 100
    interrupt(storage, alice, "half", content(400), 150)  # a partial kept for a resume is held too
    assert storage.home_usage(alice)["used"] == 250
    assert backend.restart().home_usage(alice)["used"] == 250  # and counted the same after a restart


def test_uploads_running_at_once_cannot_pass_the_quota_together(backend, storage):
    alice = backend.account("alice", quota=1000)
    first = begin(storage, alice, "a", b"a" * 600)
    with pytest.raises(QuotaExceededError):
        begin(storage, alice, "b", b"b" * 600)
    second = begin(storage, alice, "b", b"b" * 400)
    for upload, payload in ((first, b"a" * 600), (second, b"b" * 400)):
        feed(upload, payload)
        upload.finish()
    assert not fits(storage, alice, 1)


def test_many_threads_beginning_at_once_get_no_more_than_the_quota(backend, storage):
    alice = backend.account("alice", quota=1000)
    start = threading.Barrier(12)

    def attempt(i: int) -> Upload | None:
        start.wait()
        try:
            return begin(storage, alice, f"f{i}", bytes([i]) * 300)
        except QuotaExceededError:
            return None

    with ThreadPoolExecutor(12) as pool:
        uploads = list(pool.map(attempt, range(12)))
    begun = [u for u in uploads if u is not None]
    for upload in begun:
        upload.abort()
    assert len(begun) == 3


def test_replacing_a_file_counts_the_difference(backend, storage):
    alice = backend.account("alice", quota=1000)
    put(storage, alice, "f", b"a" * 800)
    put(storage, alice, "f", b"b" * 900)  # adds 100, not 900
    assert fits(storage, alice, 100) and not fits(storage, alice, 101)
    put(storage, alice, "f", b"c" * 100)  # frees 800
    assert fits(storage, alice, 900) and not fits(storage, alice, 901)
    storage.remove(alice, "f")
    assert fits(storage, alice, 1000)


def test_instant_upload_counts_its_full_size(backend, storage):
    alice = backend.account("alice", quota=1000)
    put(storage, alice, "f", b"x" * 600)
    with pytest.raises(QuotaExceededError):
        put(storage, alice, "copy", b"x" * 600)
    assert names(storage, alice) == ["f"] and fits(storage, alice, 400)


def test_an_abandoned_uploads_bytes_count(backend, storage):
    alice = backend.account("alice", quota=1000)
    interrupt(storage, alice, "f", b"p" * 800, sent=500)
    assert not fits(storage, alice, 501)
    assert put(storage, alice, "g", b"g" * 500) == 0
    storage = backend.restart()  # counted again from what is stored
    assert not fits(storage, alice, 1)
    storage.remove(alice, "g")
    assert resume_offset(storage, alice, "f", b"p" * 800) == 500


def test_abandoned_overwrites_never_hold_more_than_the_quota(backend, storage):
    alice = backend.account("alice", quota=1000)
    put(storage, alice, "f", b"f" * 500)
    attempts = [content(500, seed=100 + i) for i in range(5)]
    for attempt in attempts:  # each adds nothing, so each is accepted
        assert interrupt(storage, alice, "f", attempt, sent=499) == 0
    # What the backend still holds for these uploads is what they would resume from.
    kept = sum(resume_offset(storage, alice, "f", attempt) for attempt in attempts)
    assert 500 + kept <= 1000
    assert read(storage, alice, "f") == b"f" * 500
    room = 1000 - 500 - kept
    assert not fits(storage, alice, room + 1) and fits(storage, alice, room)


def test_an_abandoned_overwrite_leaves_room_for_uploads_running_meanwhile(backend, storage):
    alice = backend.account("alice", quota=1000)
    put(storage, alice, "f", b"f" * 500)
    running = begin(storage, alice, "g", b"g" * 500)  # holds the rest of the quota
    attempt = content(500, seed=30)
    assert interrupt(storage, alice, "f", attempt, sent=499) == 0  # adds nothing: accepted
    feed(running, b"g" * 500)
    running.finish()
    kept = resume_offset(storage, alice, "f", attempt)
    assert 500 + 500 + kept <= 1000


def test_a_replace_whose_old_file_went_meanwhile_cannot_pass_the_quota(backend, storage):
    alice = backend.account("alice", quota=1000)
    put(storage, alice, "f", b"f" * 800)
    new = b"A" * 900
    replacing = begin(storage, alice, "f", new)  # adds 100 while the old f is there
    feed(replacing, new)
    storage.remove(alice, "f")
    with contextlib.suppress(QuotaExceededError):  # refusing either put keeps the quota
        put(storage, alice, "g", b"g" * 900)
    try:
        replacing.finish()
    except QuotaExceededError:
        replacing.abort()
    files = {e["name"]: e["size"] for e in storage.list(alice, "/")[1]}
    held = sum(files.values())
    if "f" not in files:  # what is still held for the replace, with room made to ask
        for name in files:
            storage.remove(alice, name)
        held += resume_offset(storage, alice, "f", new)
    assert held <= 1000


def test_an_upload_refused_at_finish_keeps_nothing_uncounted(backend, storage):
    alice = backend.account("alice", quota=1000)
    payload = b"x" * 800
    upload = begin(storage, alice, "f", payload)
    feed(upload, payload)
    storage.mkdir(alice, "f", False)  # another session takes the name for a directory
    with pytest.raises(IsDirectoryError):
        upload.finish()
    upload.abort()
    storage.remove(alice, "f")
    kept = resume_offset(storage, alice, "f", payload)  # 0 if dropped, else held and counted
    assert not fits(storage, alice, 1000 - kept + 1)


def test_an_upload_that_adds_nothing_is_accepted_at_a_full_quota(backend, storage):
    alice = backend.account("alice", quota=1000)
    put(storage, alice, "f", b"a" * 1000)
    assert put(storage, alice, "f", b"a" * 1000) == 1000  # identical
    put(storage, alice, "f", b"b" * 1000)  # same size, new bytes
    put(storage, alice, "f", b"c" * 10)
    assert read(storage, alice, "f") == b"c" * 10 and fits(storage, alice, 990)


def test_max_file_size(backend):
    storage = backend.restart(max_file_size=1000)
    alice = backend.account("alice")
    with pytest.raises(TooLargeError):
        begin(storage, alice, "f", b"x" * 1001)
    with pytest.raises(TooLargeError):
        begin(storage, alice, "a/b/f", b"x" * 1001, parents=True)
    assert names(storage, alice) == []
    assert put(storage, alice, "f", b"x" * 1000) == 0


# -- ls, stat, mkdir, rm ---------------------------------------------------------------


def test_ls_sorts_by_name_and_shows_type_size_and_mtime(storage, alice):
    before = time.time()
    for name in ("b", "a", "é", "B", "a0", "Z"):
        put(storage, alice, name, name.encode() * 3)
    storage.mkdir(alice, "dir", False)
    path, entries = storage.list(alice, "/")
    assert path == "/"
    assert [e["name"] for e in entries] == ["B", "Z", "a", "a0", "b", "dir", "é"]  # code point order
    by_name = {e["name"]: e for e in entries}
    assert (by_name["dir"]["type"], by_name["dir"]["size"]) == ("dir", 0)
    assert (by_name["é"]["type"], by_name["é"]["size"]) == ("file", 6)
    for e in entries:
        assert set(e) >= {"name", "type", "size", "mtime"}
        assert isinstance(e["mtime"], float) and before - 5 <= e["mtime"] <= time.time() + 5


def test_ls_with_md5_gives_the_same_entries_and_only_true_checksums(storage, alice):
    put(storage, alice, "d/a", b"aaa", parents=True)
    put(storage, alice, "d/b", b"bbbb")
    storage.mkdir(alice, "d/sub", False)
    path, plain = storage.list(alice, "d")
    assert all("md5" not in entry for entry in plain)
    assert storage.list(alice, "d", md5=True)[0] == path
    listed = storage.list(alice, "d", md5=True)[1]
    assert [{k: v for k, v in entry.items() if k != "md5"} for entry in listed] == plain
    by_name = {entry["name"]: entry for entry in listed}
    assert "md5" not in by_name["sub"]
    for name, data in (("a", b"aaa"), ("b", b"bbbb")):  # stored through the backend: known
        assert by_name[name]["md5"] == md5(data)
    [one] = storage.list(alice, "d/a", md5=True)[1]
    assert one["md5"] == md5(b"aaa")


def test_ls_of_a_file_lists_that_file_and_paths_come_back_canonical(storage, alice):
    put(storage, alice, "d/e/f", b"12345", parents=True)
    path, entries = storage.list(alice, "d/./e/../e//f")
    assert path == "/d/e/f"
    assert [(e["name"], e["type"], e["size"]) for e in entries] == [("f", "file", 5)]
    assert storage.list(alice, "d/")[0] == "/d" and storage.list(alice, "")[0] == "/"
    assert storage.list(alice, "d/e") == ("/d/e", entries)


def test_reserved_names_are_never_listed(storage, alice):
    storage.mkdir(alice, "d", False)
    interrupt(storage, alice, "d/gone", b"x" * 100, sent=50)
    running = begin(storage, alice, "d/running", b"y" * 100)
    feed(running, b"y" * 50)
    try:
        assert names(storage, alice, "d") == [] and names(storage, alice) == ["d"]
    finally:
        running.abort()


def test_ls_returns_every_entry_of_a_big_directory(storage, alice):
    storage.mkdir(alice, "many", False)
    expected = [f"{i:05}" for i in range(2500)]
    for name in reversed(expected):
        storage.mkdir(alice, f"many/{name}", False)
    assert names(storage, alice, "many") == expected


def test_stat_of_a_file_and_a_directory(storage, alice):
    put(storage, alice, "d/f", b"hello", parents=True)
    stat = storage.stat(alice, "d/f")
    assert (stat["name"], stat["type"], stat["size"], stat["md5"]) == ("f", "file", 5, md5(b"hello"))
    stat = storage.stat(alice, "d")
    assert (stat["name"], stat["type"], stat["size"]) == ("d", "dir", 0)
    assert storage.stat(alice, "/")["type"] == "dir"


def test_mkdir(storage, alice):
    storage.mkdir(alice, "a", False)
    with pytest.raises(ExistsError):
        storage.mkdir(alice, "a", False)
    storage.mkdir(alice, "a", True)  # like mkdir -p
    with pytest.raises(NotFoundError):
        storage.mkdir(alice, "x/y/z", False)
    storage.mkdir(alice, "x/y/z", True)
    assert names(storage, alice) == ["a", "x"] and names(storage, alice, "x/y") == ["z"]
    put(storage, alice, "f", b"file")
    for parents in (False, True):
        with pytest.raises(ExistsError):
            storage.mkdir(alice, "f", parents)
        with pytest.raises(NotDirectoryError):
            storage.mkdir(alice, "f/sub", parents)
        with pytest.raises(NotDirectoryError):
            storage.mkdir(alice, "f/sub/deeper", parents)
    with pytest.raises(ExistsError):
        storage.mkdir(alice, "/", False)
    storage.mkdir(alice, "/", True)
    assert read(storage, alice, "f") == b"file"


def test_mkdir_with_parents_is_idempotent_under_concurrency(storage, alice):
    start = threading.Barrier(32)

    def make(_: int) -> None:
        start.wait()
        storage.mkdir(alice, "p/q/r/s", True)

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(make, range(32)))  # re-raises the first failure
    assert names(storage, alice, "p/q/r") == ["s"]


def test_rm(storage, alice):
    put(storage, alice, "f", b"bytes")
    storage.mkdir(alice, "empty", False)
    put(storage, alice, "full/g", b"g", parents=True)
    storage.remove(alice, "f")
    storage.remove(alice, "empty")
    with pytest.raises(NotEmptyError):
        storage.remove(alice, "full")
    with pytest.raises(ForbiddenError):
        storage.remove(alice, "/")
    for missing in ("f", "nothing", "nothing/below"):
        with pytest.raises(NotFoundError):
            storage.remove(alice, missing)
    assert names(storage, alice) == ["full"] and read(storage, alice, "full/g") == b"g"
    with pytest.raises(NotFoundError):
        storage.stat(alice, "f")


def test_rm_of_a_directory_holding_only_an_abandoned_upload(backend, storage):
    alice = backend.account("alice", quota=1000)
    storage.mkdir(alice, "d", False)
    interrupt(storage, alice, "d/f", b"x" * 900, sent=800)
    assert not fits(storage, alice, 201)
    storage.remove(alice, "d")
    assert names(storage, alice) == []
    assert fits(storage, alice, 1000)  # its bytes went with it
    storage.mkdir(alice, "d", False)
    assert resume_offset(storage, alice, "d/f", b"x" * 900) == 0


def test_rm_of_a_directory_with_an_upload_running_into_it_is_not_empty(storage, alice):
    storage.mkdir(alice, "d", False)
    running = begin(storage, alice, "d/f", b"z" * 100)
    feed(running, b"z" * 40)
    with pytest.raises(NotEmptyError):
        storage.remove(alice, "d")
    feed(running, b"z" * 60)
    running.finish()
    assert read(storage, alice, "d/f") == b"z" * 100


# -- stale partials --------------------------------------------------------------------


def test_remove_stale_partials_keeps_fresh_ones_and_running_ones(backend, storage):
    alice = backend.account("alice", quota=10_000)
    old, running_data, fresh = content(3000, seed=20), content(3000, seed=21), content(3000, seed=22)
    storage.mkdir(alice, "sub", False)
    interrupt(storage, alice, "sub/old", old, sent=2000)
    running = begin(storage, alice, "running", running_data)
    feed(running, running_data[:1000])
    backend.age_partials(3600)
    interrupt(storage, alice, "fresh", fresh, sent=2500)

    assert storage.remove_stale_partials(600) == 1
    assert resume_offset(storage, alice, "sub/old", old) == 0
    assert resume_offset(storage, alice, "fresh", fresh) == 2500
    feed(running, running_data[1000:])
    running.finish()
    assert read(storage, alice, "running") == running_data
    # The removed bytes no longer count: 3000 (running) + 2500 (fresh) + 4500 fills the quota.
    assert fits(storage, alice, 4500) and not fits(storage, alice, 4501)


def test_remove_stale_partials_with_nothing_old(backend, storage, alice):
    interrupt(storage, alice, "f", b"x" * 100, sent=10)
    assert storage.remove_stale_partials(3600) == 0
    assert resume_offset(storage, alice, "f", b"x" * 100) == 10


# -- every error as its protocol class -------------------------------------------------

DEEP = "a/" * 2000  # 2,000 levels, under the 4096-byte limit on a path
LONG = "/".join(["n" * 200] * 20 + ["n" * 70])  # 4090 bytes: too long once stored anywhere
MALFORMED = ["a\x00b", "a\\b", "tab\there", "x" * 256, "\ud800", "x/" * 2100]

ERROR_CASES = [
    ("ls", "missing", NotFoundError),
    ("ls", "missing/x", NotFoundError),
    ("ls", "f/x", NotDirectoryError),
    ("stat", "missing", NotFoundError),
    ("stat", "f/x", NotDirectoryError),
    ("get", "missing", NotFoundError),
    ("get", "d", IsDirectoryError),
    ("get", "/", IsDirectoryError),
    ("get", "f/x", NotDirectoryError),
    ("put", "/", IsDirectoryError),
    ("put", "d", IsDirectoryError),
    ("put", "missing/x", NotFoundError),
    ("put", "f/x", NotDirectoryError),
    ("put -p", "d", IsDirectoryError),
    ("put -p", "f/x/y", NotDirectoryError),
    ("put (no overwrite)", "f", ExistsError),
    ("mkdir", "d", ExistsError),
    ("mkdir", "f", ExistsError),
    ("mkdir", "/", ExistsError),
    ("mkdir", "missing/x", NotFoundError),
    ("mkdir", "f/x", NotDirectoryError),
    ("mkdir -p", "f", ExistsError),
    ("mkdir -p", "f/x/y", NotDirectoryError),
    ("rm", "missing", NotFoundError),
    ("rm", "missing/x", NotFoundError),
    ("rm", "f/x", NotDirectoryError),
    ("rm", "d", NotEmptyError),
    ("rm", "/", ForbiddenError),
    *[(op, DEEP, ForbiddenError) for op in OPERATIONS],
    *[(op, LONG, ForbiddenError) for op in OPERATIONS],
    *[(op, path, BadRequestError) for op in OPERATIONS for path in MALFORMED],
]


@pytest.fixture
def populated(storage, alice) -> Account:
    """alice's home holding a file `f` (b"hello"), a directory `d` with `d/g`, an empty `e`."""
    put(storage, alice, "f", b"hello")
    put(storage, alice, "d/g", b"g", parents=True)
    storage.mkdir(alice, "e", False)
    return alice


@pytest.mark.parametrize(
    ("op", "path", "error"), ERROR_CASES, ids=[f"{op}-{path[:20]!r}" for op, path, _ in ERROR_CASES]
)
def test_each_error_comes_back_as_its_protocol_class(storage, populated, op, path, error):
    with pytest.raises(error):
        OPERATIONS[op](storage, populated, path)
    assert names(storage, populated) == ["d", "e", "f"] and names(storage, populated, "d") == ["g"]
    assert read(storage, populated, "f") == b"hello"


ANY_PATHS = [
    *dict.fromkeys(path for _, path, _ in ERROR_CASES),
    *CLIMBS,
    *RESERVED,
    "f",
    "d",
    "e",
    "d/g",
    "d/g/",
    "d/g/x",
    "e/new",
    "f/..",
    "d/../f",
    "n" * 255,
    "é" * 127,
    "d/" + "n" * 255,
    "",
    "//",
    "./",
]


def test_no_op_on_any_path_raises_anything_but_a_protocol_error(storage, populated):
    for op, call in OPERATIONS.items():
        for path in ANY_PATHS:
            try:
                call(storage, populated, path)
            except InternalError as exc:
                pytest.fail(f"{op} {path[:40]!r}: internal ({exc.message})")
            except ProtocolError:
                pass


# -- over the wire: the backend chosen by the config's mapping form --------------------


def test_ls_pages_over_the_wire_with_the_storage_mapping_form(make_config, serve, raw):
    running = serve(make_config(storage={"backend": "local", "root": "storage"}))
    assert running.config.storage_backend == "local"
    storage, anonymous = running.server.storage, running.config.anonymous
    storage.mkdir(anonymous, "many", False)
    expected = [f"{i:05}" for i in range(2500)]
    for name in expected:
        put(storage, anonymous, f"many/{name}", name.encode())
    stream = raw(running)
    stream.send({"op": "ls", "path": "many"})
    pages = [stream.recv()]
    while pages[-1]["more"]:
        pages.append(stream.recv())
    assert all(p["ok"] and p["path"] == "/many" for p in pages)
    assert [len(p["entries"]) for p in pages] == [LS_PAGE, LS_PAGE, 2500 - 2 * LS_PAGE]
    assert [p["more"] for p in pages] == [True, True, False]
    assert [e["name"] for p in pages for e in p["entries"]] == expected
    assert all(e["type"] == "file" and e["size"] == 5 for p in pages for e in p["entries"])
    assert stream.request("stat", path="many/02499")["md5"] == md5(b"02499")  # still in step
