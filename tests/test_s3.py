"""The s3 backend beyond the contract suite: its config, credentials, what it keeps in
the store, bounded memory, several storages (servers) on one bucket, the sweep of stale
uploads, and a server on it driven by the client. Against a real SeaweedFS
(tests/services.py); the contract suite (test_storage_contract.py) runs on it too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import tracemalloc
import uuid
from pathlib import Path

import pytest

from ftpclient import Client
from ftpproto import ChecksumMismatchError, ExistsError, ForbiddenError, QuotaExceededError
from ftpserver.config import Account, ConfigError, S3Settings, load_config
from ftpserver.storage import open_storage
from ftpserver.storage.md5state import ResumableMD5
from ftpserver.storage.s3 import S3Storage, S3Upload, make_client, read_credentials

from .conftest import write_config
from .test_storage_contract import feed, md5, names, put

pytestmark = pytest.mark.timeout(90)
MiB = 1024 * 1024


@pytest.fixture
def settings(tmp_path: Path, object_store) -> S3Settings:
    return object_store.settings(tmp_path, prefix=f"s3-{uuid.uuid4().hex[:12]}/")


def node(tmp_path: Path, settings: S3Settings, name: str = "node") -> S3Storage:
    """A storage over the bucket as one server has it (its own state folder)."""
    root = tmp_path / name
    root.mkdir(exist_ok=True)
    return S3Storage(make_client(settings), settings, root)


def account(storage: S3Storage, name: str = "alice", quota: int | None = None) -> Account:
    made = Account(name, storage.root / name, "rw", quota)
    storage.ensure_home(made)
    return made


def keys(object_store, prefix: str) -> list[str]:
    client = object_store.client()
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=object_store.bucket, Prefix=prefix):
        found += [item["Key"] for item in page.get("Contents", [])]
    return found


def multipart_uploads(object_store, prefix: str) -> list[dict]:
    answer = object_store.client().list_multipart_uploads(Bucket=object_store.bucket, Prefix=prefix)
    return answer.get("Uploads", [])


# -- the MD5 that goes on in another process ---------------------------------------------


def test_a_saved_md5_state_goes_on_where_it_stopped():
    data = os.urandom(3 * MiB + 17)
    first = ResumableMD5()
    first.update(data[: 2 * MiB])
    saved = first.save()  # a short ASCII string: it travels in an object's body
    assert saved.isascii() and len(saved) < 200
    second = ResumableMD5.restore(saved)
    second.update(memoryview(bytearray(data[2 * MiB :])))
    assert second.hexdigest() == md5(data) and second.length == len(data)
    assert first.hexdigest() == md5(data[: 2 * MiB])  # the first is untouched
    for broken in ("", "not base64!", saved[:-8]):
        with pytest.raises(ValueError):
            ResumableMD5.restore(broken)


# -- config and credentials --------------------------------------------------------------


def s3_section(object_store, **more: object) -> dict:
    return {
        "backend": "s3",
        "state": "storage",
        "endpoint": object_store.endpoint,
        "bucket": object_store.bucket,
        "prefix": "/some//place/",
        "credentials_file": "s3-credentials",
        **more,
    }


def test_the_s3_section_of_the_config(tmp_path, object_store):
    object_store.credentials_file(tmp_path)
    config = load_config(write_config(tmp_path, storage=s3_section(object_store, part_size="16MiB")))
    assert config.storage_backend == "s3" and config.storage_root == (tmp_path / "storage").resolve()
    assert config.s3 is not None
    assert (config.s3.bucket, config.s3.prefix, config.s3.part_size) == (
        object_store.bucket,
        "some/place/",
        16 * MiB,
    )
    assert config.s3.credentials_file == tmp_path / "s3-credentials"
    assert object_store.secret_key not in repr(config)  # the config holds where the keys are, not them


@pytest.mark.parametrize(
    ("more", "message"),
    [
        ({"root": "storage"}, "storage.root: unknown key"),
        ({"bucket": "B"}, "storage.bucket: must be a bucket name"),
        ({"part_size": "1MiB"}, "storage.part_size: must be between 5MiB and 5GiB"),
        ({"endpoint": "ftp://x"}, "storage.endpoint: must start with http:// or https://"),
        ({"credentials_file": "nowhere"}, "storage.credentials_file: "),
        ({"prefix": "a/.sockftp/b"}, "storage.prefix: "),
        ({"upload_concurrency": 0}, "storage.upload_concurrency: must be at least 1"),
        ({"state": "nowhere"}, "storage.state: "),
    ],
)
def test_a_wrong_s3_setting_names_its_key(tmp_path, object_store, more, message):
    object_store.credentials_file(tmp_path)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(write_config(tmp_path, storage=s3_section(object_store, **more)))


def test_a_credentials_file_must_be_private_and_complete(tmp_path, object_store):
    path = object_store.credentials_file(tmp_path)
    assert read_credentials(path, "default") == {
        "aws_access_key_id": object_store.access_key,
        "aws_secret_access_key": object_store.secret_key,
    }
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by every local user"):
        read_credentials(path, "default")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=r"no \[other\] section"):
        read_credentials(path, "other")
    path.write_text(f"[default]\naws_access_key_id = {object_store.access_key}\n")
    with pytest.raises(ConfigError, match="has no aws_secret_access_key") as caught:
        read_credentials(path, "default")
    assert object_store.access_key not in str(caught.value)


def test_wrong_keys_stop_the_start_and_no_key_is_logged(tmp_path, object_store, caplog):
    caplog.set_level(logging.DEBUG)
    good = object_store.credentials_file(tmp_path)
    config = load_config(write_config(tmp_path, storage=s3_section(object_store)))
    open_storage(config).close()
    good.write_text(
        f"[default]\naws_access_key_id = {object_store.access_key}\naws_secret_access_key = wrong\n"
    )
    with pytest.raises(ConfigError, match=f"bucket {object_store.bucket!r}"):
        open_storage(config)
    assert object_store.secret_key not in caplog.text and "wrong" not in caplog.text.replace("wrong keys", "")


# -- what the store holds ----------------------------------------------------------------


def test_files_directories_and_checksums_live_in_the_store(tmp_path, settings, object_store):
    storage = node(tmp_path, settings)
    alice = account(storage)
    put(storage, alice, "docs/a.txt", b"alpha", parents=True)
    storage.mkdir(alice, "empty", False)
    found = keys(object_store, settings.prefix)
    assert {"alice/", "alice/docs/", "alice/docs/a.txt", "alice/empty/"} <= {
        k[len(settings.prefix) :] for k in found
    }
    head = object_store.client().head_object(Bucket=settings.bucket, Key=f"{settings.prefix}alice/docs/a.txt")
    assert head["Metadata"]["md5"] == md5(b"alpha")
    storage.close()


def test_an_object_written_by_another_tool_is_served_and_hashed_once(tmp_path, settings, object_store):
    """No md5 in its metadata, and an ETag that is not one (a multipart upload's)."""
    storage = node(tmp_path, settings)
    alice = account(storage)
    client, key = object_store.client(), f"{settings.prefix}alice/foreign.bin"
    data = os.urandom(6 * MiB)
    upload = client.create_multipart_upload(Bucket=settings.bucket, Key=key)["UploadId"]
    parts = []
    for number, start in enumerate((0, 5 * MiB), start=1):
        answer = client.upload_part(
            Bucket=settings.bucket,
            Key=key,
            UploadId=upload,
            PartNumber=number,
            Body=data[start : start + 5 * MiB],
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    client.complete_multipart_upload(
        Bucket=settings.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )
    assert storage.stat(alice, "foreign.bin")["md5"] == md5(data)
    assert storage.stats() == {"hit": 0, "miss": 1}
    assert storage.stat(alice, "foreign.bin")["md5"] == md5(data)  # kept in its metadata now
    assert storage.stats() == {"hit": 1, "miss": 1}
    storage.close()


def test_a_get_with_an_offset_reads_a_range_and_memory_stays_bounded(tmp_path, settings):
    storage = node(tmp_path, settings)
    alice = account(storage)
    data = os.urandom(40 * MiB)  # well over what either direction may hold at once
    tracemalloc.start()
    try:
        upload = storage.begin_upload(alice, "big", len(data), md5(data), True, False)
        feed(upload, data, chunk=256 * 1024)
        upload.finish()
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        snapshot = storage.open_snapshot(alice, "big")
        snapshot.file.seek(30 * MiB + 7)
        digest = hashlib.md5()
        while chunk := snapshot.file.read(64 * 1024):
            digest.update(chunk)
        snapshot.close()
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.hexdigest() == md5(data[30 * MiB + 7 :])
    # A put holds its (upload_concurrency + 1) part buffers and what the HTTP client reads
    # of each part in flight; a get its read buffer. Neither grows with the file.
    assert put_peak < (settings.upload_concurrency + 1) * settings.part_size + 8 * MiB
    assert get_peak - before < 4 * MiB
    storage.close()


def test_a_group_of_sealed_uploads_is_committed_together(tmp_path, settings):
    storage = node(tmp_path, settings)
    alice = account(storage)
    files = {"a": os.urandom(6 * MiB), "b": b"small", "late": b"second"}
    group = []
    for name, data in files.items():
        upload = storage.begin_upload(alice, name, len(data), md5(data), name != "late", False)
        feed(upload, data, chunk=MiB)
        upload.seal()  # checked, nothing visible yet
        group.append(upload)
    assert names(storage, alice) == []
    put(storage, alice, "late", b"first")  # takes the name the last one may not replace
    results = storage.commit_group(group)
    assert results[:2] == [None, None] and isinstance(results[2], ExistsError)
    assert names(storage, alice) == ["a", "b", "late"]
    assert storage.stat(alice, "a")["md5"] == md5(files["a"])
    assert storage.stat(alice, "late")["md5"] == md5(b"first")
    bad = storage.begin_upload(alice, "c", 5, md5(b"right"), True, False)
    feed(bad, b"wrong")
    with pytest.raises(ChecksumMismatchError):
        bad.seal()
    assert bad.abort() == 0 and names(storage, alice) == ["a", "b", "late"]
    storage.close()


# -- several servers on one bucket -------------------------------------------------------------


def test_an_upload_broken_on_one_server_resumes_on_another(tmp_path, settings, object_store):
    """The first server dies with parts stored (no abort): the second finds them by the
    state in the store and receives only the rest."""
    first, second = node(tmp_path, settings, "a"), node(tmp_path, settings, "b")
    data = os.urandom(17 * MiB)
    upload = first.begin_upload(account(first), "f", len(data), md5(data), True, False)
    assert isinstance(upload, S3Upload)
    feed(upload, data[: 12 * MiB], chunk=MiB)
    deadline = time.monotonic() + 30
    while upload.saved < 2 and time.monotonic() < deadline:  # two parts stored and recorded
        time.sleep(0.05)
    assert upload.saved == 2
    resumed = second.begin_upload(account(second), "f", len(data), md5(data), True, False)
    assert resumed.offset == 2 * settings.part_size
    feed(resumed, data[resumed.offset :], chunk=MiB)
    resumed.finish()
    assert names(second, account(second)) == ["f"]
    snapshot = second.open_snapshot(account(second), "f")
    assert hashlib.md5(snapshot.file.read()).hexdigest() == md5(data)
    snapshot.close()
    assert not [k for k in keys(object_store, settings.prefix) if ".sockftp.part." in k]
    assert multipart_uploads(object_store, settings.prefix) == []
    first.close()
    second.close()


def test_a_quota_sees_the_other_servers_writes_within_the_refresh(tmp_path, object_store):
    settings = object_store.settings(tmp_path, prefix=f"s3-{uuid.uuid4().hex[:12]}/", usage_refresh=1)
    first, second = node(tmp_path, settings, "a"), node(tmp_path, settings, "b")
    on_first, on_second = account(first, quota=10_000), account(second, quota=10_000)
    assert second.home_usage(on_second)["used"] == 0
    put(first, on_first, "f", b"x" * 6000)
    deadline = time.monotonic() + 10
    while second.home_usage(on_second)["used"] != 6000 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert second.home_usage(on_second)["used"] == 6000
    with pytest.raises(QuotaExceededError):
        second.begin_upload(on_second, "g", 5000, md5(b"y" * 5000), True, False)
    first.close()
    second.close()


def test_stale_uploads_and_orphaned_multipart_uploads_are_swept(tmp_path, settings, object_store):
    storage = node(tmp_path, settings)
    alice = account(storage)
    data = os.urandom(12 * MiB)
    upload = storage.begin_upload(alice, "half", len(data), md5(data), True, False)
    feed(upload, data[: 7 * MiB], chunk=MiB)
    assert upload.abort() == 7 * MiB  # one part in the store, the rest in the state's body
    client = object_store.client()
    orphan = client.create_multipart_upload(Bucket=settings.bucket, Key=f"{settings.prefix}alice/orphan")
    time.sleep(1.1)
    assert storage.remove_stale_partials(3600) == 0
    assert storage.remove_stale_partials(1) == 2  # the state (with its upload) and the orphan
    assert multipart_uploads(object_store, settings.prefix) == []
    assert not [k for k in keys(object_store, settings.prefix) if ".sockftp.part." in k]
    assert orphan["UploadId"]
    storage.close()


def test_a_directory_rename_is_refused_above_its_limit_and_while_an_upload_runs_into_it(
    tmp_path, object_store
):
    settings = object_store.settings(tmp_path, prefix=f"s3-{uuid.uuid4().hex[:12]}/", max_rename_objects=3)
    storage = node(tmp_path, settings)
    alice = account(storage)
    for name in ("a", "b", "c"):
        put(storage, alice, f"big/{name}", name.encode(), parents=True)
    with pytest.raises(ForbiddenError, match="more than 3 objects"):
        storage.rename(alice, "big", "moved", False)
    put(storage, alice, "small/a", b"a", parents=True)
    running = storage.begin_upload(alice, "small/b", 3, md5(b"bbb"), True, False)
    feed(running, b"b")
    with pytest.raises(ForbiddenError, match="upload into it is in progress"):
        storage.rename(alice, "small", "moved", False)
    feed(running, b"bb")
    running.finish()
    storage.rename(alice, "small", "moved", False)
    assert names(storage, alice) == ["big", "moved"] and names(storage, alice, "moved") == ["a", "b"]
    storage.close()


# -- a server on the s3 backend, through the client -------------------------------------------


def test_a_reload_keeps_the_running_s3_settings_and_says_they_need_a_restart(
    tmp_path, object_store, make_config, serve, caplog
):
    object_store.credentials_file(tmp_path)
    prefix = f"s3-{uuid.uuid4().hex[:12]}/"
    running = serve(make_config(storage=s3_section(object_store, prefix=prefix, part_size="5MiB")))
    write_config(tmp_path, storage=s3_section(object_store, prefix=prefix, part_size="6MiB"))
    assert running.server.reload()
    assert "need a restart" in caplog.text and "storage" in caplog.text
    assert running.server.config.s3 is not None and running.server.config.s3.part_size == 5 * MiB


def test_a_server_on_s3_serves_the_client(tmp_path, object_store, make_config, serve):
    object_store.credentials_file(tmp_path)
    prefix = f"s3-{uuid.uuid4().hex[:12]}/"
    running = serve(make_config(storage=s3_section(object_store, prefix=prefix, part_size="5MiB")))
    assert running.server.turn is None  # its calls wait on the network: no session holds others up
    data = os.urandom(11 * MiB + 5)
    (tmp_path / "big.bin").write_bytes(data)
    client = object_store.client()
    with Client("127.0.0.1", running.port, user="alice", password="alice-pw") as session:
        session.put(tmp_path / "big.bin", "/in/big.bin", parents=True)
        assert session.stat("/in/big.bin").md5 == md5(data)
        session.get("/in/big.bin", tmp_path / "copy.bin")
        assert (tmp_path / "copy.bin").read_bytes() == data

        # Objects another tool wrote show up too, in pages of the protocol's size.
        def write(numbers: range) -> None:
            for n in numbers:
                client.put_object(Bucket=object_store.bucket, Key=f"{prefix}alice/many/{n:04}", Body=b"x")

        threads = [threading.Thread(target=write, args=(range(start, 1005, 8),)) for start in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        listed = session.ls("/many")
        assert [e.name for e in listed] == [f"{n:04}" for n in range(1005)]
        session.rename("/in/big.bin", "/in/moved.bin")
        session.rm("/in", recursive=True)
        assert [e.name for e in session.ls("/")] == ["many"]
    assert not [k for k in keys(object_store, f"{prefix}alice/in") if not k.endswith("/")]
