"""Several servers, one bucket: two `ftpserver` processes on a real SeaweedFS behind a
real HAProxy in TCP mode (docs/scale-out.md).

The client uploads a file of several parts through the balancer; the server holding the
session is SIGKILLed half-way; the client's `--retries` reconnect lands on the other server,
which finds the parts already stored (by the upload's state object, not by anything the
dead server knew) and takes the rest only.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .conftest import client_environ, write_config

pytestmark = pytest.mark.timeout(120)

PART = 5 * 1024 * 1024
SIZE = 6 * PART  # six parts: enough to stop half-way, small enough to be quick
RATE = "6MB"  # the client's pace, so that "half-way" happens while it is still sending


def node(where: Path, store, prefix: str) -> Path:
    """One server's own folder: its config (the same settings as every node's), users
    file, credentials file and state folder; returns the config's path."""
    where.mkdir()
    (where / "state").mkdir()
    store.credentials_file(where)
    storage = {
        "backend": "s3",
        "state": "state",
        "endpoint": store.endpoint,
        "region": "us-east-1",
        "bucket": store.bucket,
        "prefix": prefix,
        "credentials_file": "s3-credentials",
        "part_size": "5MiB",
    }
    return write_config(where, storage=storage)


def state_objects(client, bucket: str, prefix: str) -> list[dict]:
    """The upload states under the prefix, each with the bytes it holds (HEAD metadata)."""
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].rsplit("/", 1)[-1].startswith(".sockftp.part."):
                head = client.head_object(Bucket=bucket, Key=item["Key"])
                found.append({"key": item["Key"], "held": int(head["Metadata"].get("held", "0"))})
    return found


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_a_put_resumes_on_the_other_server_after_the_first_is_killed(
    tmp_path, object_store, server_process, balancer
):
    prefix = f"scale-{uuid.uuid4().hex[:12]}/"
    servers = [server_process(node(tmp_path / name, object_store, prefix)) for name in ("a", "b")]
    front = balancer([server.port for server in servers])
    data = os.urandom(SIZE)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    s3 = object_store.client()

    client = subprocess.Popen(
        [sys.executable, "-m", "ftpclient", "put", str(source), "--retries", "5", "--limit-rate", RATE],
        env=client_environ(front.port),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Half-way: the store holds at least two parts of the upload.
        wait_for(
            lambda: any(s["held"] >= 2 * PART for s in state_objects(s3, object_store.bucket, prefix)),
            60,
            "two stored parts",
        )
        stats = front.stats()
        holder = wait_for(
            lambda: [i for i in range(2) if int(front.stats()[f"ftp/s{i}"]["scur"]) > 0],
            10,
            "the server holding the session",
        )[0]
        servers[holder].process.kill()  # SIGKILL: no abort, no goodbye
        servers[holder].process.wait(10)
        out, err = client.communicate(timeout=90)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)
    assert client.returncode == 0, f"stdout: {out}\nstderr: {err}"

    # The client sent well under one and a half times the file: the rest was resumed.
    sent = int(front.stats()["front/FRONTEND"]["bin"])
    assert SIZE < sent < 1.5 * SIZE, (sent, stats)
    other = servers[1 - holder]
    log = "".join(other.log)
    assert "resuming the upload of /big.bin at" in log
    assert "transfer put" in log and "result=ok" in log

    head = s3.head_object(Bucket=object_store.bucket, Key=f"{prefix}big.bin")
    assert head["ContentLength"] == SIZE and head["Metadata"]["md5"] == hashlib.md5(data).hexdigest()
    body = s3.get_object(Bucket=object_store.bucket, Key=f"{prefix}big.bin")["Body"].read()
    assert hashlib.md5(body).hexdigest() == hashlib.md5(data).hexdigest()
    # No state of the upload is left: neither its state object nor a multipart upload.
    assert state_objects(s3, object_store.bucket, prefix) == []
    uploads = s3.list_multipart_uploads(Bucket=object_store.bucket, Prefix=prefix).get("Uploads", [])
    assert uploads == []
