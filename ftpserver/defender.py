"""The defender: scores what each client address does wrong, and bans past a threshold.

Modelled on SFTPGo's defender and OpenSSH's `PerSourcePenalties`. Each event
(a failed login, a protocol violation, a refused connection...) adds its score
to the address's sliding window of `observation_time` seconds; when the
window's total reaches `threshold`, the address is banned for `ban_time`
seconds, and each later ban of the same address lasts `ban_growth` times
longer than the one before (up to `max_ban_time`). IPv6 addresses are judged
by their /64, since one host usually holds a whole /64. A safelist of networks
is never banned.

Bans are kept in a small JSON file in the server's metadata folder, written
atomically under an advisory lock, so they survive a restart and so that
`ftpserver unban` (another process) can lift one while the server runs: the
server reloads the file when its modification time changes.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import ipaddress
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Ban", "Defender", "DefenderConfig", "Event", "source_of"]

log = logging.getLogger("ftpserver.defender")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Event:
    """What an address can be scored for; each is a key of `DefenderConfig.scores`."""

    LOGIN_FAILED = "login_failed"  # a wrong password for a real user
    UNKNOWN_USER = "unknown_user"  # a login for a user that does not exist
    NO_LOGIN = "no_login"  # a connection that ended without trying to log in, where login is required
    PROTOCOL_VIOLATION = "protocol_violation"  # garbage frames, a TLS handshake that is not TLS
    LIMIT_EXCEEDED = "limit_exceeded"  # refused for having too many connections open


# Not scored for an address that logged in successfully within the observation time.
TRUSTED_EVENTS = (Event.NO_LOGIN, Event.LIMIT_EXCEEDED)
MAX_SOURCES = 100_000  # addresses scored at once; past it the oldest windows are forgotten

DEFAULT_SCORES = {
    Event.LOGIN_FAILED: 1,
    Event.UNKNOWN_USER: 2,
    Event.NO_LOGIN: 1,
    Event.PROTOCOL_VIOLATION: 2,
    Event.LIMIT_EXCEEDED: 1,
}


@dataclass(frozen=True)
class DefenderConfig:
    enabled: bool = True
    threshold: int = 15
    observation_time: float = 3600.0
    ban_time: float = 900.0
    ban_growth: float = 2.0
    max_ban_time: float = 7 * 24 * 3600.0
    forget_after: float = 7 * 24 * 3600.0  # after a ban ends, how long it still makes the next longer
    safelist: tuple[Network, ...] = ()
    scores: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SCORES))


@dataclass
class Ban:
    """One address's record: banned until `until` (epoch seconds), `offences` bans so far."""

    source: str
    until: float
    offences: int

    def active(self, now: float) -> bool:
        return self.until > now


def ip_of(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address, an IPv4-mapped IPv6 one as IPv4; None if it is not an IP address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def in_networks(address: str, networks: tuple[Network, ...]) -> bool:
    """Whether the peer `address` (an IPv4-mapped one as IPv4) lies in one of `networks`."""
    ip = ip_of(address)
    return ip is not None and any(ip.version == net.version and ip in net for net in networks)


def source_of(address: str) -> str:
    """The network an address is judged by: the address itself for IPv4, its /64 for IPv6."""
    ip = ip_of(address)
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


class BanFile:
    """The bans on disk: read and replaced whole, under an advisory lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Ban]]:
        """The bans, to read or change; changes are written back when the block ends."""
        fd = self._create(self.path.with_name(self.path.name + ".lock"), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            bans = self.read()
            before = {k: (b.until, b.offences) for k, b in bans.items()}
            yield bans
            if {k: (b.until, b.offences) for k, b in bans.items()} != before:
                self._write(bans)
        finally:
            os.close(fd)

    def read(self) -> dict[str, Ban]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            bans = {
                str(k): Ban(str(k), float(v["until"]), int(v["offences"])) for k, v in data["bans"].items()
            }
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ban file %s is unreadable; starting without bans", self.path)
            return {}
        return {k: b for k, b in bans.items() if math.isfinite(b.until)}

    def mtime(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _write(self, bans: dict[str, Ban]) -> None:
        data = {"bans": {k: {"until": b.until, "offences": b.offences} for k, b in sorted(bans.items())}}
        temp = self.path.with_name(self.path.name + ".tmp")
        with open(self._create(temp, os.O_WRONLY | os.O_TRUNC), "w") as file:
            json.dump(data, file, indent=1)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, self.path)

    def _create(self, path: Path, flags: int) -> int:
        """Open (making it if needed) a file of the metadata folder. Run as root (say, an
        admin's `ftpserver unban`), it gives the file to the folder's owner, so that a
        server running as its own user can still read and replace it."""
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with contextlib.suppress(OSError):
            folder = os.stat(path.parent)
            if os.geteuid() == 0 and folder.st_uid != 0:
                os.fchown(fd, folder.st_uid, folder.st_gid)
        return fd


class Defender:
    """Scores events per source and keeps the bans; safe to call from any thread.

    It never raises: the bans in memory are the truth, and the file only their copy,
    written by a thread of its own (so neither the accepting thread nor a session waits
    on a disk) and re-read when another process (`ftpserver unban`) changed it."""

    def __init__(
        self, config: DefenderConfig, ban_file: Path, on_ban: Callable[[str], object] | None = None
    ) -> None:
        self.config = config
        self.on_ban = on_ban  # told of each ban (metrics)
        self.file = BanFile(ban_file)
        self._lock = threading.Lock()
        self._events: dict[str, collections.deque[tuple[float, int]]] = {}
        self._trusted: dict[str, float] = {}  # source -> when it last logged in (monotonic)
        self._bans: dict[str, Ban] = {}
        self._unsaved: dict[str, Ban | None] = {}  # None: lifted
        self._saver = threading.Event()
        self._seen_mtime: int | None = None
        self._next_sweep = 0.0
        self._quiet_until: dict[str, float] = {}  # refusal log lines, at most one a minute a source
        if config.enabled:
            self._reload()
            threading.Thread(target=self._save_forever, name="defender-saver", daemon=True).start()

    # -- looking up ------------------------------------------------------------

    def _safe(self, address: str) -> bool:
        return in_networks(address, self.config.safelist)

    def _reload(self) -> None:
        """Take bans lifted or added by another process (`ftpserver unban`)."""
        try:
            mtime = self.file.mtime()
            if mtime == self._seen_mtime:
                return
            bans = self.file.read()
        except OSError as exc:
            log.warning("cannot read the ban file %s (keeping the bans in memory): %s", self.file.path, exc)
            return
        self._seen_mtime = mtime
        now = time.time()
        for source, ban in self._bans.items():
            if (
                ban.active(now)
                and not (source in bans and bans[source].active(now))
                and source not in self._unsaved
            ):
                log.info("unban %s (lifted outside this server)", source)
        bans.update({k: b for k, b in self._unsaved.items() if b is not None})
        self._bans = bans

    def banned(self, address: str) -> Ban | None:
        """The active ban of the address's source, if it has one."""
        if not self.config.enabled or self._safe(address):
            return None
        source, now = source_of(address), time.time()
        with self._lock:
            self._reload()
            ban = self._bans.get(source)
        return ban if ban is not None and ban.active(now) else None

    def worth_logging(self, address: str) -> bool:
        """Whether to log a refusal of this banned address now (one line a minute a source)."""
        source, now = source_of(address), time.monotonic()
        with self._lock:
            if self._quiet_until.get(source, 0.0) > now:
                return False
            if len(self._quiet_until) > MAX_SOURCES:
                self._quiet_until.clear()
            self._quiet_until[source] = now + 60
            return True

    # -- scoring ---------------------------------------------------------------

    def logged_in(self, address: str) -> None:
        """A successful login: for a while, the address's refused and idle connections are
        its users' doing (a batch with many workers), not an attack, and are not scored."""
        if self.config.enabled:
            with self._lock:
                self._trusted[source_of(address)] = time.monotonic()

    def record(self, address: str, event: str) -> Ban | None:
        """Score `event` for the address; return the ban it caused, if it caused one."""
        score = self.config.scores.get(event, 0)
        if not self.config.enabled or score <= 0 or self._safe(address):
            return None
        source, now = source_of(address), time.monotonic()
        with self._lock:
            self._sweep(now)
            ban = self._bans.get(source)
            if ban is not None and ban.active(time.time()):
                return None  # already banned: what it does meanwhile is not a new offence
            trusted = self._trusted.get(source)
            if (
                event in TRUSTED_EVENTS
                and trusted is not None
                and trusted > now - self.config.observation_time
            ):
                return None
            window = self._events.setdefault(source, collections.deque())
            window.append((now, score))
            while window and window[0][0] <= now - self.config.observation_time:
                window.popleft()
            if sum(s for _, s in window) < self.config.threshold:
                return None
            del self._events[source]
            ban = self._ban(source)
        log.warning(
            "ban %s for %.0fs (offence %d, after %s)",
            source,
            ban.until - time.time(),
            ban.offences,
            event,
            extra={"event": "ban", "source": source, "seconds": round(ban.until - time.time())},
        )
        if self.on_ban is not None:
            self.on_ban(source)
        return ban

    def _ban(self, source: str) -> Ban:
        now = time.time()
        old = self._bans.get(source)
        offences = 1
        if old is not None and old.until + self.config.forget_after > now:
            offences = old.offences + 1
        try:
            length = min(
                self.config.ban_time * self.config.ban_growth ** min(offences - 1, 64),
                self.config.max_ban_time,
            )
        except OverflowError:
            length = self.config.max_ban_time
        ban = Ban(source, now + length, offences)
        self._bans[source] = self._unsaved[source] = ban
        self._saver.set()
        return ban

    def _sweep(self, now: float) -> None:
        """Drop windows and trust that ran out, so memory follows the active sources."""
        if now < self._next_sweep and len(self._events) < MAX_SOURCES:
            return
        self._next_sweep = now + 60
        horizon = now - self.config.observation_time
        for source in [s for s, w in self._events.items() if not w or w[-1][0] <= horizon]:
            del self._events[source]
        for source in [s for s, t in self._trusted.items() if t <= horizon]:
            del self._trusted[source]
        while len(self._events) >= MAX_SOURCES:  # a crowd of addresses: forget the oldest
            del self._events[next(iter(self._events))]

    # -- saving ----------------------------------------------------------------

    def _save_forever(self) -> None:
        while True:
            self._saver.wait()
            self._saver.clear()
            self.save()
            time.sleep(0.05)  # let a burst of bans go to disk as one write

    def save(self) -> None:
        """Write the bans not yet on disk (merged with what another process changed)."""
        with self._lock:
            unsaved, self._unsaved = self._unsaved, {}
        if not unsaved:
            return
        try:
            now = time.time()
            with self.file.locked() as bans:
                for source, ban in unsaved.items():
                    if ban is None:
                        bans.pop(source, None)
                    else:
                        bans[source] = ban
                for source in [s for s, b in bans.items() if b.until + self.config.forget_after <= now]:
                    del bans[source]
            with self._lock:
                self._seen_mtime = self.file.mtime()  # our own write: no need to read it back
        except OSError as exc:
            log.warning("cannot write the ban file %s (bans stay in memory): %s", self.file.path, exc)
            with self._lock:
                self._unsaved = {**unsaved, **self._unsaved}

    # -- administration (the `bans` and `unban` commands) -----------------------

    def unban(self, address: str) -> bool:
        """Lift the ban on the address's source (and forget its offences); False if none was active."""
        source = source_of(address)
        with self._lock:
            self._reload()
            ban = self._bans.pop(source, None)
            self._events.pop(source, None)
            self._unsaved[source] = None
        self.save()
        if ban is not None:
            log.info("unban %s", source)
        return ban is not None and ban.active(time.time())

    def bans(self) -> list[Ban]:
        """The active bans, soonest to end first."""
        now = time.time()
        return sorted((b for b in self.file.read().values() if b.active(now)), key=lambda b: b.until)
