"""Plumbing for the benchmark: time limits, test data, worker processes, memory sampling.

Nothing here knows about a particular peer or workload: `run.py` composes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

MIB = 1024 * 1024
HERE = Path(__file__).resolve().parent
CLIENTS = HERE / "clients.py"


class DeadlineError(Exception):
    """The run's global time budget is spent; what is left is skipped."""


class Deadline:
    """The run's global time budget; every wait and subprocess takes its time-out from here."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def check(self) -> None:
        """Raise `DeadlineError` once the budget is spent."""
        if self.remaining() <= 1:
            raise DeadlineError(f"the {self.seconds:.0f} s budget is spent")

    def timeout(self, cap: float) -> float:
        """`cap` seconds, or what is left of the budget if that is less; raises once it is spent."""
        self.check()
        return min(cap, self.remaining())


# -- test data --------------------------------------------------------------------


def write_data_file(path: Path, size: int, seed: bytes) -> None:
    """`size` bytes: one random MiB repeated, each copy stamped with its index and `seed`,
    so no two MiB (and no two files) are the same and nothing compresses trivially."""
    block = bytearray(os.urandom(min(size, MIB)))
    with open(path, "wb") as file:
        for index in range(0, size, len(block)):
            stamp = seed + index.to_bytes(8, "little")
            block[: len(stamp)] = stamp
            file.write(block[: min(len(block), size - index)])


def write_small_files(folder: Path, count: int, size: int) -> list[str]:
    """`count` files of `size` random bytes each; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"f{index:05d}.bin" for index in range(count)]
    for name in names:
        (folder / name).write_bytes(os.urandom(size))
    return names


def write_tree(folder: Path, count: int, folders: int, size: int) -> None:
    """`count` files of `size` random bytes spread evenly over `folders` sub-folders."""
    for index in range(folders):
        share = count // folders + (1 if index < count % folders else 0)
        write_small_files(folder / f"d{index:02d}", share, size)


def link_tree(source: Path, target: Path) -> None:
    """Hard-link every file of `source` into `target` (instant, and costs no space)."""
    for path in source.rglob("*"):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, dest)


# -- worker processes -------------------------------------------------------------


def set_aside(path: Path) -> None:
    """Move `path` (if it exists) into `.set-aside/` next to it, instead of deleting it;
    the run's folder, removed at the end, takes it away.

    On this VM's ext4 a file created within about 30 s of many deletions pays for them:
    the inode allocator looks at each recently freed inode before it skips it
    (`recently_deleted()` in the kernel, 0.1-1 ms a file, worse from several threads at
    once; seen with perf). Emptying 2,000 files before every repetition would make every
    peer's next repetition measure that, more with each repetition. A rename frees none."""
    if not path.exists():
        return
    aside = path.parent / ".set-aside"
    aside.mkdir(exist_ok=True)
    path.rename(aside / f"{path.name}.{time.monotonic_ns()}")


def run_worker(spec: dict, timeout: float) -> dict:
    """Run one measurement in `clients.py`, in its own process group; kill the group on time-out."""
    process = subprocess.Popen(
        [sys.executable, str(CLIENTS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(json.dumps(spec), timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise RuntimeError(f"client worker timed out after {timeout:.0f} s") from None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"client worker exited {process.returncode}: {err.strip()[-400:]}")
    try:
        return json.loads(out)
    except ValueError:
        raise RuntimeError(f"client worker printed no result: {out[-200:]!r} {err.strip()[-200:]}") from None


# -- memory -----------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(root: int) -> list[int]:
    """`root` and every process below it, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def await_children_gone(pid: int, timeout: float = 1.0) -> None:
    """Wait (at most `timeout` s) until process `pid` has no children left. A forking server's
    session processes end a little after their clients, and their CPU time counts as the
    server's own only once it has reaped them: until then it looks like other processes'."""
    end = time.monotonic() + timeout
    while len(_descendants(pid)) > 1 and time.monotonic() < end:
        time.sleep(0.01)


class PeakRss:
    """Peak resident memory of a server process and its children while the block runs.

    Resets the root's VmHWM on entry (`/proc/PID/clear_refs`), samples the summed
    VmRSS of the whole process tree every `interval` seconds (sshd forks per
    connection), and reports the larger of the two, in MiB, as `.mib`.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.mib = 0.0
        self._peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        with contextlib.suppress(OSError):  # not ours to reset: the sampled figure still stands
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        hwm = _status_kib(self.pid, "VmHWM")
        self.mib = max(self._peak_kib, hwm) / 1024

    def _sample(self) -> None:
        while True:
            total = sum(_status_kib(pid, "VmRSS") for pid in _descendants(self.pid))
            self._peak_kib = max(self._peak_kib, total)
            if self._stop.wait(self.interval):
                return


# -- the machine ------------------------------------------------------------------


def _busy_seconds() -> float:
    """CPU seconds the machine has spent busy since boot: user, nice, system, irq and
    softirq time. Without CONFIG_IRQ_TIME_ACCOUNTING (as here) the kernel charges
    interrupt work (loopback traffic is softirq work) to the running process too."""
    user, nice, system, _idle, _iowait, irq, softirq = (
        int(value) for value in Path("/proc/stat").read_text().split()[1:8]
    )
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds used by this process and every child it has waited for (servers, workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def tree_seconds(root: int) -> float:
    """CPU seconds of a live process tree, each process with the children it has reaped."""
    total = 0
    for pid in _descendants(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile: its time is in its parent's reaped children
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


class CpuShare:
    """How much CPU other processes took from here on: the machine's process time minus
    ours (this process, its reaped children, and the live `server` tree if given).
    Kernel threads working for us (writeback) count as others, so a few percent is
    normal; much more means another job shared the machine."""

    def __init__(self, server: int | None = None) -> None:
        self.server = server
        self.started = time.monotonic()
        self._start = self._others_clock()

    def _others_clock(self) -> float:
        own = _own_seconds() + (tree_seconds(self.server) if self.server else 0.0)
        return _busy_seconds() - own

    def others(self) -> tuple[float, float]:
        """(CPU seconds used by others, as a share of all the machine's CPU time so far)."""
        others = max(0.0, self._others_clock() - self._start)
        capacity = (time.monotonic() - self.started) * (os.cpu_count() or 1)
        return others, others / capacity if capacity else 0.0


def machine_info() -> dict:
    """What the figures were measured on."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = _meminfo_kib("MemTotal")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / MIB, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def filesystem_of(path: Path) -> str:
    """`path` and the type of the filesystem it is on ("/tmp (ext4)")."""
    path = path.resolve()
    best, kind = Path("/"), "unknown"
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3:
            mount = Path(fields[1])
            if (mount == path or mount in path.parents) and len(mount.parts) >= len(best.parts):
                best, kind = mount, fields[2]
    return f"{path} ({kind})"


def source_version() -> str:
    """The sockftp commit measured (`git describe --always --dirty`), or "unknown"."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def _meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0
