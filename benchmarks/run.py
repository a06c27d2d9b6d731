"""Benchmark sockftp against pyftpdlib, OpenSSH sftp, rsync and vsftpd on this machine, over 127.0.0.1 only.

    python benchmarks/run.py [--quick] [--reps N] [--peers sockftp,pyftpdlib,sftp,rsync,vsftpd,s3]
                             [--json-out FILE]

Measures the machine's limits (one-core MD5, a raw loopback copy, the same
copy hashed and written to disk, durable small-file writes, the concurrent
clients' own work), then runs every workload `reps` times against each peer it
can start: a big get and put, a repeated put, batches of small files over 1 and
4 connections, many concurrent clients, a series of logins, and a tree of small
files moved by each tool's own command line (rsync and vsftpd take part in the
last two kinds only); and sockftp on its s3 backend next to boto3 on the same object store
(a SeaweedFS on 127.0.0.1). Prints one table (median, min-max, ratios to the limits), the
targets met or not, and writes every figure to JSON. See benchmarks/README.md.

Servers and clients are subprocesses, stopped by PID in `finally`; every wait
has a time-out taken from one global deadline; the temp dir is removed at the end.
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import (
    HERE,
    CpuShare,
    Deadline,
    DeadlineError,
    filesystem_of,
    link_tree,
    machine_info,
    source_version,
    write_data_file,
    write_small_files,
    write_tree,
)
from peers import PEERS, Peer, PeerUnavailableError
from report import Results, render_table, render_targets, table_rows, write_json
from s3 import s3_rows
from workloads import QUICK, Bench, Plan, judge_targets, measure_limits, run_all

BUSY_LOAD = 0.5  # 1-minute load average above which the run warns that it is not alone
BUSY_SHARE = 0.05  # share of the machine's CPU taken by other processes that earns a note
PEER_NAMES = {
    "sockftp": "sockftp",
    "pyftpdlib": "ftp",
    "sftp": "sftp",
    "rsync": "rsync",
    "vsftpd": "vsftpd",
    "s3": "s3",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="the same workloads scaled down (about a minute)"
    )
    parser.add_argument("--reps", type=int, help="repetitions of each workload (default: 3, quick: 1)")
    parser.add_argument(
        "--peers",
        default=",".join(PEER_NAMES),
        help=f"comma-separated peers to run (default: {','.join(PEER_NAMES)})",
    )
    parser.add_argument("--deadline", type=float, help="global time budget in seconds")
    parser.add_argument(
        "--json-out", type=Path, default=HERE / "results.json", help="where to write the figures"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp"),
        help="where the test data, the servers' storage and the downloads live (default: /tmp;"
        " /dev/shm measures without the disk, given about 5 GB of memory)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.peers.split(",")) - set(PEER_NAMES)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))} (choose from {', '.join(PEER_NAMES)})")
    if args.reps is not None and not 1 <= args.reps <= 20:
        parser.error("--reps must be between 1 and 20")
    if not args.workdir.is_dir():
        parser.error(f"--workdir {args.workdir}: not a directory")
    return args


def compile_packages() -> None:
    """Byte-compile sockftp's packages, as `pip install` does for an installed copy: an
    editable install run with PYTHONDONTWRITEBYTECODE would compile them again at every
    `ftpclient` start of the tree workload (about 0.1 s each)."""
    for package in ("ftpproto", "ftpserver", "ftpclient"):
        compileall.compile_dir(HERE.parent / package, quiet=1)


def build_plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else Plan()
    if args.reps is not None:
        plan = dataclasses.replace(plan, reps=args.reps)
    if args.deadline is not None:
        plan = dataclasses.replace(plan, deadline=args.deadline)
    return plan


def make_data(folder: Path, plan: Plan) -> list[str]:
    """Two sets of test files; returns the small files' names (the same in both).

    get/ (big.bin, mid.bin for the concurrent clients, small/, tree/) is hard-linked
    into every server as seed/. put/ (big.bin, small/, tree/) holds other bytes and
    is on no server before it is put: sockftp links in an upload whose MD5 it
    already stores, so putting a copy of a seed file would send nothing.
    """
    for kind in ("get", "put"):
        (folder / kind).mkdir(parents=True)
        write_data_file(folder / kind / "big.bin", plan.big, kind.encode())
        names = write_small_files(folder / kind / "small", plan.small_count, plan.small_size)
        write_tree(folder / kind / "tree", plan.tree_count, plan.tree_folders, plan.small_size)
    write_data_file(folder / "get" / "mid.bin", plan.client_file, b"mid")
    return names


def bench_peer(bench: Bench, peer_class: type[Peer], workdir: Path) -> Peer | None:
    """Start one peer, run every workload against it, stop it. None if it could not run."""
    try:
        peer_class.check_available()
    except PeerUnavailableError as exc:
        print(f"skipping {peer_class.name}: {exc}", flush=True)
        bench.results.notes.append(f"{peer_class.name} skipped: {exc}")
        return None
    peer = peer_class(workdir)
    link_tree(bench.data / "get", peer.storage / "seed")
    print(f"{peer.name}:", flush=True)
    try:
        peer.start(bench.deadline)
        run_all(bench, peer)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"  {peer.name} failed: {exc}", flush=True)
        bench.results.notes.append(f"{peer.name} failed: {exc}")
    finally:
        peer.stop()
    return peer


def bench_s3(bench: Bench, workdir: Path) -> None:
    """The s3 rows (benchmarks/s3.py); a note instead if they cannot run."""
    try:
        s3_rows(bench, workdir)
    except PeerUnavailableError as exc:
        print(f"skipping s3: {exc}", flush=True)
        bench.results.notes.append(f"s3 skipped: {exc}")
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"  s3 failed: {exc}", flush=True)
        bench.results.notes.append(f"s3 failed: {exc}")


def run(args: argparse.Namespace, plan: Plan, results: Results, root: Path) -> list[Peer]:
    """Everything that needs the temp dir; returns the peers that ran."""
    deadline = Deadline(plan.deadline)
    print(f"creating test data in {root}", flush=True)
    names = make_data(root / "data", plan)
    bench = Bench(plan, results, deadline, root / "data", names, root / "scratch")
    ran: list[Peer] = []
    try:
        print("machine limits", flush=True)
        measure_limits(bench)
        wanted = {PEER_NAMES[name] for name in args.peers.split(",")}
        for peer_class in PEERS:
            if peer_class.kind in wanted:
                peer = bench_peer(bench, peer_class, root / peer_class.kind)
                if peer is not None:
                    ran.append(peer)
        if "s3" in wanted:
            bench_s3(bench, root / "s3")
    except DeadlineError as exc:
        print(f"stopping early: {exc}", flush=True)
        results.notes.append(f"stopped early: {exc}; the workloads after that point did not run")
    return ran


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = build_plan(args)
    machine = {**machine_info(), "workdir": filesystem_of(args.workdir)}
    load_before = os.getloadavg()[0]
    print(f"machine: {machine}", flush=True)
    if load_before > BUSY_LOAD:
        print(f"warning: load average {load_before:.2f}: other work may skew the figures", flush=True)
    print(f"plan: {plan}", flush=True)
    results = Results()
    version = source_version()
    compile_packages()
    started = time.monotonic()
    cpu = CpuShare()
    root = Path(tempfile.mkdtemp(prefix="sockftp-bench-", dir=args.workdir))
    try:
        ran = run(args, plan, results, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    targets = judge_targets(results, plan, ran)
    print()
    print(render_table(table_rows(results)))
    print("\ntargets:")
    print(render_targets(targets))
    others, share = cpu.others()
    if share > BUSY_SHARE:
        results.notes.append(
            f"other processes used {others:.0f} CPU-seconds ({share:.0%} of the machine) during the run: "
            "figures may be low or noisy; run again on a quiet machine"
        )
    if results.retried:
        results.notes.append(f"{results.retried} repetitions were run again: other processes were busy")
    for note in results.notes:
        print(f"note: {note}")
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "mode": "quick" if args.quick else "full",
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine,
        "sockftp_version": version,
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "other_processes_cpu": {"seconds": round(others, 1), "share": round(share, 3)},
        "plan": dataclasses.asdict(plan),
    }
    write_json(args.json_out, results, targets, meta)
    print(f"\nfigures written to {args.json_out} ({meta['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
