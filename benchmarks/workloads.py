"""The workloads, each run `plan.reps` times per peer, and the targets judged from them.

Each workload prepares the server's storage and the client's scratch folder
outside the timed span, hands one spec to `clients.py` per repetition, and
records its figures. Server memory is sampled around every repetition.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import limits
from harness import (
    MIB,
    CpuShare,
    Deadline,
    PeakRss,
    await_children_gone,
    run_worker,
    set_aside,
    tree_seconds,
)
from peers import BATCH, BIG, MANY, TREE, Peer
from report import LIMIT_WORKLOAD, LIMITS, THROUGHPUT, Results, Target

KIB = 1024
RSS_BUDGET_MIB = 100
BUSY_SHARE = 0.10  # others' share of the CPU during a repetition that makes it run again
BUSY_RETRIES = 2
SERVER_RSS = "server peak RSS (MiB)"
CLIENT_RSS = "client peak RSS (MiB)"
RATE = f"rate ({THROUGHPUT})"
FILES_RATE = "files/s"
SERVER_CPU = "server CPU per file (ms)"  # one core's worth at most for a Python server: its GIL
WALL = "wall time (s)"
DURABLE_LIMIT = f"durable small-file writes, {limits.DURABLE_THREADS} threads ({FILES_RATE})"


def size_label(size: int) -> str:
    if size >= 1024 * MIB and size % (1024 * MIB) == 0:
        return f"{size // (1024 * MIB)} GiB"
    return f"{size // MIB} MiB" if size >= MIB else f"{size // KIB} KiB"


@dataclass(frozen=True)
class Plan:
    """How big each workload is and how often it runs."""

    big: int = 1024 * MIB
    small_count: int = 2000
    small_size: int = 8 * KIB
    clients: int = 100
    client_file: int = 10 * MIB
    logins: int = 300  # sftp takes 0.3 s each: 1,000 were a third of the run
    tree_count: int = 2000  # the CLI tree: this many files of `small_size`...
    tree_folders: int = 20  # ...spread evenly over this many folders
    reps: int = 3
    deadline: float = 1200.0  # the full run takes about 17 minutes here
    op_timeout: float = 300.0

    @property
    def big_get(self) -> str:
        return f"{size_label(self.big)} get"

    @property
    def big_put(self) -> str:
        return f"{size_label(self.big)} put, fresh"

    @property
    def big_put_again(self) -> str:
        return f"{size_label(self.big)} put, repeated"

    def batch(self, direction: str, workers: int) -> str:
        return f"{self.small_count} x {size_label(self.small_size)} {direction}, {workers} conn"

    @property
    def concurrent(self) -> str:
        return f"{self.clients} clients x {size_label(self.client_file)} get"

    def clients_work(self, durable: bool) -> str:
        """The limit row of the concurrent clients' own work (seconds)."""
        work = "MD5 + write + fsync" if durable else "MD5"
        return f"{self.clients} clients' own work: {work} of {size_label(self.client_file)} each (s)"

    def tree(self, step: str) -> str:
        return f"CLI tree {self.tree_count} x {size_label(self.small_size)}, {step}"

    @property
    def logins_per_rep(self) -> int:
        """The logins are split over the repetitions: `logins` in all, not per repetition."""
        return -(-self.logins // self.reps)

    @property
    def logins_label(self) -> str:
        return f"{self.reps} x {self.logins_per_rep} connect+login+quit"


QUICK = Plan(
    big=64 * MIB,
    small_count=200,
    clients=20,
    logins=100,
    tree_count=200,
    reps=1,
    deadline=300.0,
    op_timeout=60.0,
)
TREE_UPLOAD, TREE_AGAIN, TREE_DOWNLOAD = "upload", "upload again, unchanged", "download"
LOCKSTEP = "v1"  # the label suffix of sockftp's batches moved one v1 exchange per file


@dataclass
class Bench:
    """What every workload needs: the plan, the test data, a scratch folder, the clock."""

    plan: Plan
    results: Results
    deadline: Deadline
    data: Path  # get/ (big.bin, mid.bin, small/: seeded on every server) and put/ (big.bin, small/)
    names: list[str]  # the small files' names
    scratch: Path  # where clients download to; emptied before each repetition

    def fresh_scratch(self) -> Path:
        set_aside(self.scratch)  # not deleted: see harness.set_aside
        self.scratch.mkdir(parents=True)
        return self.scratch

    def run(
        self,
        workload: str,
        peer: Peer,
        metric: str,
        spec: dict,
        label: str | None = None,
        tolerate_failures: bool = False,
        prepare: Callable[[], object] | None = None,
    ) -> tuple[dict, float] | None:
        """One repetition in a worker process: (its result, server peak RSS), or None if it
        failed. `spec` may name its own client as `peer`; `label` is the table's peer column.
        Failures inside the op fail the repetition unless `tolerate_failures`. `prepare`
        runs before each attempt (an attempt run again must start from the same state)."""
        label = label or peer.name
        try:
            result, rss, busy = self._measure({"peer": peer.client, **spec}, peer.pid, label, prepare)
            if result.get("failures") and not tolerate_failures:
                raise RuntimeError(f"{result['failures']} failed: {result.get('errors')}")
        except RuntimeError as exc:
            self.results.fail(workload, label, metric, str(exc))
            print(f"    {label}: {workload}: FAILED: {exc}", flush=True)
            return None
        if busy > BUSY_SHARE:
            self.results.notes.append(
                f"{label}, {workload}: measured while others took {busy:.0%} of the CPU"
            )
        return result, rss

    def _measure(
        self, spec: dict, server: int, label: str, prepare: Callable[[], object] | None
    ) -> tuple[dict, float, float]:
        """Run the worker, again (at most BUSY_RETRIES times) while other processes
        take more than BUSY_SHARE of the CPU; (result, server peak RSS, others' share)."""
        for attempt in range(1 + BUSY_RETRIES):
            if prepare is not None:
                prepare()
            cpu = CpuShare(server)
            server_started = tree_seconds(server)
            timeout = self.deadline.timeout(self.plan.op_timeout)
            with PeakRss(server) as rss:  # the op stops itself (budget) before it is killed
                result = run_worker({**spec, "budget": 0.9 * timeout}, timeout)
            await_children_gone(server)
            result["server_cpu"] = tree_seconds(server) - server_started
            busy = cpu.others()[1]
            if busy <= BUSY_SHARE or attempt == BUSY_RETRIES:
                break
            self.results.retried += 1
            print(f"    {label}: other processes took {busy:.0%} of the CPU; once more", flush=True)
        return result, rss.mib, busy


# -- machine limits ---------------------------------------------------------------


def measure_limits(bench: Bench) -> None:
    """The limits, `reps` times each, after one unrecorded warm-up round."""
    sink = bench.fresh_scratch() / "limit.bin"
    source = bench.data / "get" / "big.bin"
    measures: dict[str, Callable[[], float]] = {
        "md5": limits.md5_rate,
        "copy": lambda: limits.loopback_rate(source, timeout=bench.deadline.timeout(120)),
        "hash+write": lambda: limits.loopback_rate(source, sink, bench.deadline.timeout(120)),
    }
    for rep in range(bench.plan.reps + 1):
        for key, measure in measures.items():
            bench.deadline.check()
            rate = measure()
            if rep > 0:
                bench.results.add(LIMIT_WORKLOAD, "-", f"{LIMITS[key]} ({THROUGHPUT})", rate)
        bench.deadline.check()
        rate = limits.durable_files_rate(
            sink.parent / "durable", bench.plan.small_count, bench.plan.small_size
        )
        if rep > 0:
            bench.results.add(LIMIT_WORKLOAD, "-", DURABLE_LIMIT, rate)
        for durable in (False, True):
            bench.deadline.check()
            seconds = limits.clients_work_seconds(
                sink.parent / "clients", bench.plan.clients, bench.plan.client_file, durable
            )
            if rep > 0:
                bench.results.add(LIMIT_WORKLOAD, "-", bench.plan.clients_work(durable), seconds)


# -- workloads --------------------------------------------------------------------


def big_get(bench: Bench, peer: Peer) -> None:
    workload, size = bench.plan.big_get, bench.plan.big
    for _ in range(bench.plan.reps):
        local = bench.fresh_scratch() / "big.bin"
        spec = {"op": "transfer", "direction": "get", "remote": peer.remote("seed/big.bin")}
        outcome = bench.run(workload, peer, RATE, {**spec, "local": str(local), "size": size})
        if outcome:
            record_transfer(bench, workload, peer, outcome, size)


def big_put(bench: Bench, peer: Peer) -> None:
    workload, size = bench.plan.big_put, bench.plan.big
    for _ in range(bench.plan.reps):
        spec = {"op": "transfer", "direction": "put", "local": str(bench.data / "put" / "big.bin")}
        spec.update(remote=peer.remote("up/big.bin"), size=size)
        outcome = bench.run(workload, peer, RATE, spec, prepare=peer.reset_uploads)
        if outcome:
            record_transfer(bench, workload, peer, outcome, size)


def record_transfer(bench: Bench, workload: str, peer: Peer, outcome: tuple[dict, float], size: int) -> None:
    result, server_rss = outcome
    bench.results.add(workload, peer.name, RATE, size / MIB / result["seconds"])
    bench.results.add(workload, peer.name, SERVER_RSS, server_rss)
    bench.results.add(workload, peer.name, CLIENT_RSS, result["client_rss_mib"])


def big_put_again(bench: Bench, peer: Peer) -> None:
    """The same put once more: sockftp should find the file on the server and send nothing."""
    workload = bench.plan.big_put_again
    if not (peer.storage / "up" / "big.bin").exists():
        peer.reset_uploads()
        (peer.storage / "up" / "big.bin").hardlink_to(bench.data / "put" / "big.bin")
    for _ in range(bench.plan.reps):
        spec = {"op": "transfer", "direction": "put", "local": str(bench.data / "put" / "big.bin")}
        outcome = bench.run(workload, peer, "seconds", {**spec, "remote": peer.remote("up/big.bin")})
        if outcome:
            result, server_rss = outcome
            bench.results.add(workload, peer.name, "seconds", result["seconds"])
            bench.results.add(workload, peer.name, "bytes sent", result["sent"])
            bench.results.add(workload, peer.name, SERVER_RSS, server_rss)


def batch(bench: Bench, peer: Peer, direction: str, workers: int, lockstep: bool = False) -> None:
    """The small files over `workers` connections; sockftp pipelines them unless `lockstep`
    (one v1 exchange per file: the "sockftp v1" rows)."""
    workload = bench.plan.batch(direction, workers)
    label = f"{peer.name} {LOCKSTEP}" if lockstep else peer.name
    for _ in range(bench.plan.reps):
        if direction == "put":
            local_dir, remote_dir, prepare = bench.data / "put" / "small", "up/small", peer.reset_uploads
        else:
            local_dir, remote_dir, prepare = bench.scratch / "small", "seed/small", bench.fresh_scratch
        spec = {
            "op": "batch",
            "direction": direction,
            "workers": workers,
            "names": bench.names,
            "local_dir": str(local_dir),
            "remote_dir": peer.remote(remote_dir),
            "size": bench.plan.small_size,
            "lockstep": lockstep,
        }
        outcome = bench.run(workload, peer, FILES_RATE, spec, label, prepare=prepare)
        if outcome:
            result = outcome[0]
            bench.results.add(workload, label, FILES_RATE, result["files"] / result["seconds"])
            bench.results.add(workload, label, SERVER_CPU, 1000 * result["server_cpu"] / result["files"])
            if peer.kind == "sockftp" and not lockstep and not result["pipelined"]:
                bench.results.notes.append(f"{label}, {workload}: the server offers no `eager`: v1 exchanges")


def concurrent(bench: Bench, peer: Peer, label: str, client: dict) -> None:
    workload, plan = bench.plan.concurrent, bench.plan
    for _ in range(plan.reps):
        spec = {
            "peer": client,
            "op": "concurrent",
            "clients": plan.clients,
            "remote": peer.remote("seed/mid.bin"),
            "local_dir": str(bench.fresh_scratch() / "concurrent"),
            "size": plan.client_file,
        }
        outcome = bench.run(workload, peer, "failures", spec, label, tolerate_failures=True)
        if outcome:
            result, server_rss = outcome
            done = result["clients"] - result["failures"]
            bench.results.add(workload, label, WALL, result["seconds"])
            bench.results.add(workload, label, RATE, done * plan.client_file / MIB / result["seconds"])
            bench.results.add(workload, label, "failures", result["failures"])
            bench.results.add(workload, label, SERVER_RSS, server_rss)
            for error in result.get("errors", []):
                bench.results.notes.append(f"{label}, {workload}: {error}")


def logins(bench: Bench, peer: Peer, label: str, client: dict) -> None:
    workload = bench.plan.logins_label
    for _ in range(bench.plan.reps):
        spec = {"peer": client, "op": "logins", "count": bench.plan.logins_per_rep}
        outcome = bench.run(workload, peer, "p50 (ms)", spec, label, tolerate_failures=True)
        if not outcome:
            continue
        result = outcome[0]
        latencies = [seconds * 1000 for seconds in result["latencies"]]
        if len(latencies) < 2:
            bench.results.fail(workload, label, "p50 (ms)", f"only {len(latencies)} logins succeeded")
            continue
        bench.results.add(workload, label, "p50 (ms)", statistics.median(latencies))
        bench.results.add(workload, label, "p99 (ms)", statistics.quantiles(latencies, n=100)[98])
        bench.results.add(workload, label, "failures", result["failures"])


def cli_label(peer: Peer) -> str:
    """The tree rows' peer column: the server and the command-line client that drives it."""
    return f"{peer.name} ({peer.cli_name})"


def tree_problem(folder: Path, count: int, size: int) -> str | None:
    """What is wrong with a tree that should hold `count` files of `size` bytes, or None."""
    if not folder.is_dir():
        return f"{folder} is missing"
    files = [path for path in folder.rglob("*") if not path.is_dir()]
    wrong = [path.name for path in files if not path.is_file() or path.stat().st_size != size]
    if len(files) != count or wrong:
        return f"{folder}: {len(files)} files (expected {count}), {len(wrong)} not {size} bytes: {wrong[:3]}"
    return None


def tree_upload(bench: Bench, peer: Peer, again: bool) -> None:
    """The test tree uploaded by the peer's own command line into `up/tree`: fresh (`up/`
    emptied before each attempt), or `again` onto the complete tree, unchanged."""
    workload = bench.plan.tree(TREE_AGAIN if again else TREE_UPLOAD)
    command = peer.tree_command("put", bench.data / "put" / "tree", "up/tree")
    if command is None:
        return
    spec = {"op": "command", "argv": command.argv, "env": command.env, "stdin": command.stdin}
    target, plan = peer.storage / "up" / "tree", bench.plan
    if again and tree_problem(target, plan.tree_count, plan.small_size):  # the fresh uploads failed
        peer.reset_uploads()
        timeout = bench.deadline.timeout(plan.op_timeout)
        try:
            run_worker({"peer": peer.client, **spec, "budget": timeout}, timeout)
        except RuntimeError as exc:
            bench.results.fail(workload, cli_label(peer), FILES_RATE, f"no tree to upload again: {exc}")
            return
    for _ in range(plan.reps):
        prepare = None if again else peer.reset_uploads
        outcome = bench.run(workload, peer, FILES_RATE, spec, cli_label(peer), prepare=prepare)
        record_tree(bench, workload, peer, outcome, target)


def tree_download(bench: Bench, peer: Peer) -> None:
    """`seed/tree` downloaded by the peer's own command line into an empty scratch folder."""
    workload = bench.plan.tree(TREE_DOWNLOAD)
    target = bench.scratch / "tree"
    command = peer.tree_command("get", target, "seed/tree")
    if command is None:
        return
    spec = {"op": "command", "argv": command.argv, "env": command.env, "stdin": command.stdin}
    for _ in range(bench.plan.reps):
        outcome = bench.run(workload, peer, FILES_RATE, spec, cli_label(peer), prepare=bench.fresh_scratch)
        record_tree(bench, workload, peer, outcome, target)


def record_tree(
    bench: Bench, workload: str, peer: Peer, outcome: tuple[dict, float] | None, target: Path
) -> None:
    """files/s of one tree command, once the tree it made is checked (outside the timed span)."""
    if outcome is None:
        return
    label, plan = cli_label(peer), bench.plan
    problem = tree_problem(target, plan.tree_count, plan.small_size)
    if problem:
        bench.results.fail(workload, label, FILES_RATE, problem)
        print(f"    {label}: {workload}: FAILED: {problem}", flush=True)
        return
    bench.results.add(workload, label, FILES_RATE, plan.tree_count / outcome[0]["seconds"])


def run_all(bench: Bench, peer: Peer) -> None:
    """Every workload the peer takes part in (`peer.workloads`), in the table's order."""
    plan = bench.plan
    steps: list[tuple[str, Callable[[], None]]] = []
    if BIG in peer.workloads:
        steps.append((plan.big_get, lambda: big_get(bench, peer)))
        steps.append((plan.big_put, lambda: big_put(bench, peer)))
        if peer.kind == "sockftp":
            steps.append((plan.big_put_again, lambda: big_put_again(bench, peer)))
    for direction in ("put", "get") if BATCH in peer.workloads else ():
        for workers in (1, 4):
            # sockftp also lock-step with 4 connections, the targets' row (1 more would cost time)
            for lockstep in (False, True) if peer.kind == "sockftp" and workers == 4 else (False,):
                name = plan.batch(direction, workers) + (f" ({LOCKSTEP})" if lockstep else "")
                steps.append((name, lambda d=direction, w=workers, v=lockstep: batch(bench, peer, d, w, v)))
    if MANY in peer.workloads:
        for workload, step in ((plan.concurrent, concurrent), (plan.logins_label, logins)):
            for label, client in peer.login_variants():
                steps.append((workload, lambda s=step, n=label, c=client: s(bench, peer, n, c)))
    if TREE in peer.workloads and peer.cli_name:
        steps.append((plan.tree(TREE_UPLOAD), lambda: tree_upload(bench, peer, again=False)))
        steps.append((plan.tree(TREE_AGAIN), lambda: tree_upload(bench, peer, again=True)))
        steps.append((plan.tree(TREE_DOWNLOAD), lambda: tree_download(bench, peer)))
    for workload, step in steps:
        print(f"  {peer.name}: {workload}", flush=True)
        step()


# -- targets ----------------------------------------------------------------------


def judge_targets(results: Results, plan: Plan, ran: list[Peer]) -> list[Target]:
    """Issue #12's targets, then the older ones still measured, from the peers that ran."""
    ours = next((peer for peer in ran if peer.kind == "sockftp"), None)
    name = ours.name if ours else "sockftp"
    others = [peer for peer in ran if peer.kind != "sockftp"]
    md5 = results.limit("md5")
    return [
        _batch_target(results, plan, "put", name, [peer.name for peer in others]),
        _batch_target(results, plan, "get", name, [peer.name for peer in others]),
        _tree_target(results, plan, TREE_UPLOAD, ours, [peer for peer in others if peer.cli_name]),
        _tree_target(results, plan, TREE_DOWNLOAD, ours, [peer for peer in others if peer.cli_name]),
        _tree_target(results, plan, TREE_AGAIN, ours, [peer for peer in others if peer.kind == "rsync"]),
        _rate_target(results, plan.big_put, name, "fresh put >= 0.85 x MD5 / 2", 0.425, md5),
        _rate_target(results, plan.big_get, name, "verified get >= 0.85 x MD5", 0.85, md5),
        _concurrent_wall_target(results, plan, ours, others),
        _repeat_target(results, plan, name),
        _concurrent_target(results, plan, name),
        _big_rss_target(results, plan, name),
    ]


def _rate_target(
    results: Results, workload: str, ours: str, name: str, factor: float, md5: float | None
) -> Target:
    rate = results.median(workload, ours, RATE)
    if rate is None or not md5:
        return Target(f"{workload}: {name}", None, "not measured")
    need = factor * md5
    return Target(f"{workload}: {name}", rate >= need, f"{rate:.0f} MiB/s vs {need:.0f} needed")


def _repeat_target(results: Results, plan: Plan, ours: str) -> Target:
    name = f"{plan.big_put_again}: sends no bytes"
    sent = results.figures.get((plan.big_put_again, ours, "bytes sent"))
    if sent is None or not sent.values:
        return Target(name, None, "not measured")
    seconds = results.median(plan.big_put_again, ours, "seconds")
    return Target(name, max(sent.values) == 0, f"bytes sent {sent.values}, {seconds:.2f} s each (median)")


def _batch_target(results: Results, plan: Plan, direction: str, ours: str, peers: list[str]) -> Target:
    name = f"{plan.batch(direction, 4)}: >= 2 x the best peer's files/s"
    rate = results.median(plan.batch(direction, 4), ours, FILES_RATE)
    best = [
        (results.median(plan.batch(direction, workers), peer, FILES_RATE) or 0, peer, workers)
        for peer in peers
        for workers in (1, 4)
    ]
    best_rate, best_peer, best_workers = max(best, default=(0, "", 0))
    if rate is None or not best_rate:
        return Target(name, None, "not measured")
    detail = f"{rate:.0f} files/s vs 2 x {best_rate:.0f} ({best_peer}, {best_workers} conn)"
    durable = results.median(LIMIT_WORKLOAD, "-", DURABLE_LIMIT)
    if durable and direction == "put":
        detail += f"; durable writes alone: {durable:.0f} files/s"
    return Target(name, rate >= 2 * best_rate, detail)


def _tree_target(results: Results, plan: Plan, step: str, ours: Peer | None, peers: list[Peer]) -> Target:
    """sockftp's CLI faster than each of `peers`' (for the re-run: at least as fast)."""
    workload = plan.tree(step)
    if step == TREE_AGAIN:
        name = f"{workload}: at least as fast as {', '.join(cli_label(p) for p in peers) or 'rsync'}"
    else:
        name = f"{workload}: faster than every peer's CLI"
    rate = results.median(workload, cli_label(ours), FILES_RATE) if ours else None
    theirs = [(cli_label(peer), results.median(workload, cli_label(peer), FILES_RATE)) for peer in peers]
    measured = [(label, value) for label, value in theirs if value]
    if rate is None or not measured:
        return Target(name, None, "not measured")
    met = all(rate >= value if step == TREE_AGAIN else rate > value for _, value in measured)
    detail = f"{rate:.0f} files/s vs " + ", ".join(f"{label} {value:.0f}" for label, value in measured)
    return Target(name, met, detail)


def _concurrent_wall_target(results: Results, plan: Plan, ours: Peer | None, others: list[Peer]) -> Target:
    """Anonymous sockftp's wall time within 2 x pyftpdlib's; the clients' own work printed beside."""
    workload = plan.concurrent
    name = f"{workload}, anonymous: wall time within 2 x pyftpdlib's"
    label = ours.login_variants()[0][0] if ours else "sockftp anonymous"
    wall = results.median(workload, label, WALL)
    pyftpdlib = next((peer.name for peer in others if peer.kind == "ftp"), "pyftpdlib")
    theirs = results.median(workload, pyftpdlib, WALL)
    if wall is None or not theirs:
        return Target(name, None, "not measured")
    detail = f"{wall:.2f} s vs 2 x {theirs:.2f} s ({pyftpdlib})"
    floor = results.median(LIMIT_WORKLOAD, "-", plan.clients_work(durable=True))
    if floor is not None:
        detail += f"; the clients' own MD5 + write + fsync alone: {floor:.2f} s"
    return Target(name, wall <= 2 * theirs, detail)


def _concurrent_target(results: Results, plan: Plan, ours: str) -> Target:
    name = f"{plan.concurrent}: no failures, server RSS < {RSS_BUDGET_MIB} MiB"
    failures = results.figures.get((plan.concurrent, ours, "failures"))
    rss = results.figures.get((plan.concurrent, ours, SERVER_RSS))
    if failures is None or not failures.values or rss is None:
        return Target(name, None, "not measured")
    met = max(failures.values) == 0 and not failures.errors and max(rss.values) < RSS_BUDGET_MIB
    return Target(name, met, f"failures {failures.values}, peak RSS {max(rss.values):.0f} MiB (worst rep)")


def _big_rss_target(results: Results, plan: Plan, ours: str) -> Target:
    name = f"{size_label(plan.big)} get and put: server RSS < {RSS_BUDGET_MIB} MiB"
    peaks = [
        max(figure.values)
        for workload in (plan.big_get, plan.big_put)
        if (figure := results.figures.get((workload, ours, SERVER_RSS))) and figure.values
    ]
    if len(peaks) < 2:
        return Target(name, None, "not measured")
    return Target(name, max(peaks) < RSS_BUDGET_MIB, f"peak {max(peaks):.0f} MiB (worst rep)")
