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
import os
import threading
import time
from collections.abc import Iterator
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


def source_of(address: str) -> str:
    """The network an address is judged by: the address itself for IPv4, its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
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
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            bans = self.read()
            before = {k: (b.until, b.offences) for k, b in bans.items()}
            yield bans
            if {k: (b.until, b.offences) for k, b in bans.items()} != before:
                self._write(bans)

    def read(self) -> dict[str, Ban]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {
                str(k): Ban(str(k), float(v["until"]), int(v["offences"])) for k, v in data["bans"].items()
            }
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ban file %s is unreadable; starting without bans", self.path)
            return {}

    def _write(self, bans: dict[str, Ban]) -> None:
        data = {"bans": {k: {"until": b.until, "offences": b.offences} for k, b in sorted(bans.items())}}
        temp = self.path.with_name(self.path.name + ".tmp")
        with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "w") as file:
            json.dump(data, file, indent=1)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, self.path)


class Defender:
    """Scores events per source and keeps the bans; safe to call from any thread."""

    def __init__(self, config: DefenderConfig, ban_file: Path) -> None:
        self.config = config
        self.file = BanFile(ban_file)
        self._lock = threading.Lock()
        self._events: dict[str, collections.deque[tuple[float, int]]] = {}
        self._bans: dict[str, Ban] = {}
        self._seen_mtime: float | None = None
        self._next_sweep = 0.0
        if config.enabled:
            self._reload()

    def _safe(self, source: str) -> bool:
        try:
            ip = ipaddress.ip_network(source, strict=False)
        except ValueError:
            return False
        return any(ip.version == net.version and ip.subnet_of(net) for net in self.config.safelist)  # type: ignore[arg-type]

    def _reload(self) -> None:
        """Take bans lifted or added by another process (`ftpserver unban`)."""
        try:
            mtime = self.file.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != self._seen_mtime:
            self._seen_mtime = mtime
            bans, now = self.file.read(), time.time()
            for source, ban in self._bans.items():
                if ban.active(now) and not (source in bans and bans[source].active(now)):
                    log.info("unban %s (lifted outside this server)", source)
            self._bans = bans

    def banned(self, address: str) -> Ban | None:
        """The active ban of the address's source, if it has one."""
        if not self.config.enabled:
            return None
        source, now = source_of(address), time.time()
        with self._lock:
            self._reload()
            ban = self._bans.get(source)
        return ban if ban is not None and ban.active(now) else None

    def record(self, address: str, event: str) -> Ban | None:
        """Score `event` for the address; return the ban it caused, if it caused one."""
        score = self.config.scores.get(event, 0)
        source = source_of(address)
        if not self.config.enabled or score <= 0 or self._safe(source):
            return None
        now = time.monotonic()
        with self._lock:
            self._sweep(now)
            window = self._events.setdefault(source, collections.deque())
            window.append((now, score))
            while window and window[0][0] <= now - self.config.observation_time:
                window.popleft()
            if sum(s for _, s in window) < self.config.threshold:
                return None
            del self._events[source]
            ban = self._ban(source)
        log.warning(
            "ban %s for %.0fs (offence %d, after %s)", source, ban.until - time.time(), ban.offences, event
        )
        return ban

    def _ban(self, source: str) -> Ban:
        now = time.time()
        with self.file.locked() as bans:
            old = bans.get(source)
            offences = 1
            if old is not None and old.until + self.config.forget_after > now:
                offences = old.offences + 1
            length = min(
                self.config.ban_time * self.config.ban_growth ** (offences - 1), self.config.max_ban_time
            )
            bans[source] = ban = Ban(source, max(now + length, old.until if old else 0), offences)
            self._forget_old(bans, now)
            self._bans = dict(bans)
        self._seen_mtime = None  # our own write: read it back at the next look
        return ban

    def _forget_old(self, bans: dict[str, Ban], now: float) -> None:
        for source in [s for s, b in bans.items() if b.until + self.config.forget_after <= now]:
            del bans[source]

    def _sweep(self, now: float) -> None:
        """Drop windows with nothing left in them, so memory follows the active sources."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60
        for source in [
            s for s, w in self._events.items() if not w or w[-1][0] <= now - self.config.observation_time
        ]:
            del self._events[source]

    def unban(self, address: str) -> bool:
        """Lift the ban on the address's source (and forget its offences); False if none was active."""
        source = source_of(address)
        with self._lock, self.file.locked() as bans:
            ban = bans.pop(source, None)
            self._bans = dict(bans)
            self._events.pop(source, None)
        self._seen_mtime = None
        if ban is not None:
            log.info("unban %s", source)
        return ban is not None and ban.active(time.time())

    def bans(self) -> list[Ban]:
        """The active bans, soonest to end first."""
        now = time.time()
        return sorted((b for b in self.file.read().values() if b.active(now)), key=lambda b: b.until)
