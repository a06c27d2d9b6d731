"""The server under attack (issue 10): the defender, logins under a flood, per-user
session limits, and TLS failures that end a session quietly.

Attackers speak from 127.0.0.1 and legitimate users from 127.0.0.2 (both loopback on
Linux). Every client here frames its own messages (a 4-byte length, then JSON) rather
than using ftpproto, so a bug shared by both sides cannot hide. conftest safelists
127.0.0.0/8 for the other suites; every config here turns that off.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
import yaml

from ftpserver.__main__ import main as ftpserver_main
from ftpserver.config import ServerConfig, load_config
from ftpserver.defender import Defender, DefenderConfig, Event

from .conftest import PASSWORDS, password_hash, wait_until, write_config

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
HEADER = struct.Struct("!I")
ATTACKER, LEGIT = "127.0.0.1", "127.0.0.2"


# -- a bare client, bound to a chosen source address ------------------------------------


class Peer:
    """One connection from `source`: frames written and read here, not by ftpproto."""

    def __init__(self, port: int, source: str = ATTACKER, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, message: dict) -> None:
        body = json.dumps(message).encode()
        self.sock.sendall(HEADER.pack(len(body)) + body)

    def _exactly(self, count: int) -> bytes | None:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                if data:
                    raise ConnectionError("the server closed inside a frame")
                return None
            data += chunk
        return data

    def recv(self) -> dict | None:
        """The next frame, or None when the server has closed the connection."""
        header = self._exactly(HEADER.size)
        if header is None:
            return None
        body = self._exactly(HEADER.unpack(header)[0])
        if body is None:
            raise ConnectionError("the server closed inside a frame")
        return json.loads(body)

    def request(self, op: str, **fields: object) -> dict | None:
        self.send({"op": op, **fields})
        return self.recv()

    def closed_within(self, seconds: float) -> bool:
        """True if the server closes (EOF or reset) within `seconds`, sending nothing more."""
        self.sock.settimeout(seconds)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def greeted(port: int, source: str = ATTACKER) -> dict | None:
    """The first frame a new connection from `source` gets (hello, or a busy refusal)."""
    try:
        with Peer(port, source) as peer:
            return peer.recv()
    except ConnectionResetError:
        return None


def is_banned_answer(frame: dict | None) -> bool:
    return frame is not None and frame.get("error") == "busy" and "banned" in frame.get("message", "")


def timed_login(port: int, source: str = LEGIT, user: str = "alice", steps: list | None = None) -> float:
    """Seconds from connect to the `ok` answer of a right login from `source`; `steps`
    gets the (connect, greeting, login) parts of it."""
    started = time.monotonic()
    with Peer(port, source) as peer:
        connected = time.monotonic()
        hello = peer.recv()
        assert hello is not None and hello.get("type") == "hello", hello
        greeted_at = time.monotonic()
        answer = peer.request("login", user=user, password=PASSWORDS[user])
        done = time.monotonic()
        assert answer is not None and answer.get("ok"), answer
        peer.request("quit")
    if steps is not None:
        steps.append((connected - started, greeted_at - connected, done - greeted_at))
    return done - started


def wrong_logins(port: int, count: int, source: str = ATTACKER, user: str = "alice") -> list[str]:
    """Send `count` wrong passwords, reconnecting when the server closes; the answers' codes
    ("closed" for a connection turned away before a login could be sent)."""
    codes: list[str] = []
    while len(codes) < count:
        with Peer(port, source) as peer:
            hello = peer.recv()
            if hello is None or hello.get("type") != "hello":
                codes.append((hello or {}).get("error", "closed"))
                continue
            while len(codes) < count:
                try:
                    answer = peer.request("login", user=user, password=f"wrong-{len(codes)}")
                except (ConnectionResetError, BrokenPipeError):
                    break  # closed after its last failure
                if answer is None:
                    break
                codes.append(answer.get("error", "ok"))
                if answer.get("error") == "busy":
                    break
    return codes


def quick_hash(password: str) -> str:
    """A hash in the stored scrypt format with a tiny N, so that tests which only
    count failures need not pay for 2^14 (the server reads N from the hash)."""
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=16, r=8, p=1, dklen=32)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    return f"scrypt$16$8$1${b64(salt)}${b64(key)}"


def defended(
    tmp_path: Path, defender: dict | None = None, users: dict | None = None, **sections
) -> ServerConfig:
    """A config with no safelist (unless `defender` gives one), `sections` merged in,
    and in users.yaml only `users` (by default alice, with a quick hash)."""
    path = write_config(tmp_path, defender={"safelist": [], **(defender or {})}, **sections)
    if users is None:
        users = {"alice": {"password": quick_hash(PASSWORDS["alice"])}}
    (tmp_path / "users.yaml").write_text(yaml.safe_dump({"users": users}))
    return load_config(path)


def ban_file(config: ServerConfig, waiting_for: str | None = None) -> dict:
    """The bans on disk. The server writes them from a thread of its own, a moment
    after the ban: with `waiting_for`, wait (up to 5 s) until that source is there."""
    path = config.storage_root / ".sockftp" / "bans.json"
    deadline = time.monotonic() + 5
    while True:
        bans = json.loads(path.read_text())["bans"] if path.exists() else {}
        if waiting_for is None or waiting_for in bans or time.monotonic() > deadline:
            return bans
        time.sleep(0.02)


# -- attackers in threads ---------------------------------------------------------------


@dataclass
class Tally:
    guesses: int = 0  # auth_failed answers: passwords the server checked
    busy: int = 0  # busy answers to a login on an open connection
    refused: int = 0  # connections turned away before a login could be sent
    logged_in: int = 0
    connections: int = 0
    first_refusal: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, what: str, started: float) -> None:
        with self.lock:
            setattr(self, what, getattr(self, what) + 1)
            if what in ("busy", "refused") and self.first_refusal is None:
                self.first_refusal = time.monotonic() - started


class Attack:
    """`threads` threads guessing alice's password from 127.0.0.1 as fast as the server
    answers, reconnecting when closed; after a refusal a thread waits `pause` seconds.
    Each thread makes at most `max_connections` connections."""

    def __init__(self, port: int, threads: int, pause: float = 0.1, max_connections: int = 1000) -> None:
        self.port, self.pause, self.max_connections = port, pause, max_connections
        self.tally = Tally()
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        for _ in range(self.max_connections):
            if self._stop.is_set():
                return
            with contextlib.suppress(OSError, ValueError):
                self._connection()

    def _connection(self) -> None:
        try:
            peer = Peer(self.port, ATTACKER, timeout=15)
        except OSError:
            self.tally.add("refused", self.started)
            self._stop.wait(self.pause)
            return
        with self._lock:
            self._open.add(peer.sock)
        try:
            self.tally.add("connections", self.started)
            hello = peer.recv()
            if hello is None or hello.get("type") != "hello":
                self.tally.add("refused", self.started)
                self._stop.wait(self.pause)
                return
            for guess in range(10):
                if self._stop.is_set():
                    return
                answer = peer.request("login", user="alice", password=f"guess-{guess}")
                if answer is None:
                    return
                if answer.get("ok"):
                    self.tally.add("logged_in", self.started)
                elif answer.get("error") == "auth_failed":
                    self.tally.add("guesses", self.started)
                elif answer.get("error") == "busy":
                    self.tally.add("busy", self.started)
                    self._stop.wait(self.pause)
                    return
        finally:
            with self._lock:
                self._open.discard(peer.sock)
            peer.sock.close()

    def stop(self) -> Tally:
        self._stop.set()
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(20)
        assert not any(thread.is_alive() for thread in self._threads)
        return self.tally


# -- the shipped configuration, run as a subprocess -----------------------------------


def shipped_config(tmp_path: Path, **changes: object) -> Path:
    """conf/server.yaml as shipped, with storage and users under tmp_path, alice's
    password hashed with the real scrypt parameters, and `changes` applied."""
    config = yaml.safe_load((REPO / "conf" / "server.yaml").read_text())
    (tmp_path / "storage").mkdir(exist_ok=True)
    (tmp_path / "users.yaml").write_text(
        yaml.safe_dump({"users": {"alice": {"password": password_hash("alice")}}})
    )
    config.update(storage=str(tmp_path / "storage"), users_file=str(tmp_path / "users.yaml"), **changes)
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def memory_kib(pid: int, key: str) -> int:
    """VmRSS or VmHWM (peak RSS) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def ftpserver_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ftpserver", *args], capture_output=True, text=True, timeout=30
    )


# -- the guessing attacker and the flood -------------------------------------------------


@pytest.mark.timeout(90)
def test_a_guesser_for_30s_against_the_shipped_defaults(tmp_path, server_process):
    path = shipped_config(tmp_path)
    config = load_config(path)
    defender, limits = config.defender, config.limits
    assert defender.enabled and defender.safelist == ()
    guesses_to_ban = defender.threshold // defender.scores[Event.LOGIN_FAILED]  # 15
    process = server_process(path)

    duration, latencies = 30.0, []
    attack = Attack(process.port, threads=limits.max_connections_per_address)
    try:
        while time.monotonic() - attack.started < duration:
            latencies.append(timed_login(process.port))
            time.sleep(max(0.0, min(2.5, duration - (time.monotonic() - attack.started))))
    finally:
        tally = attack.stop()
    elapsed = time.monotonic() - attack.started
    bans = [line.strip() for line in process.log if "ban 127.0.0.1" in line]
    print(
        f"\nguesser, {elapsed:.1f}s: {tally.guesses} evaluated guesses ({tally.guesses / elapsed:.2f}/s), "
        f"{tally.connections} connections, {tally.refused} refused, {tally.busy} busy answers, "
        f"first refusal (the ban) at {tally.first_refusal:.2f}s; server log: {bans}\n"
        f"legit logins from 127.0.0.2: {len(latencies)}, "
        f"max {max(latencies):.3f}s median {statistics.median(latencies):.3f}s"
    )
    assert tally.logged_in == 0
    # The ban is looked at inside the per-address login slot, so not one guess queued
    # behind the 15th is evaluated. (Refusals over the per-address limit also score,
    # and can bring the ban a little sooner.)
    assert guesses_to_ban - 5 <= tally.guesses <= guesses_to_ban
    assert tally.guesses / elapsed < 0.75  # well under one guess per second
    assert tally.first_refusal is not None and tally.first_refusal < 10
    assert len(bans) >= 1
    assert len(latencies) >= 10 and max(latencies) < 0.5


@pytest.mark.timeout(60)
@pytest.mark.parametrize("defender", ["shipped", "off"])
def test_a_flood_of_200_connections_does_not_slow_other_logins(tmp_path, server_process, defender):
    changes = {} if defender == "shipped" else {"defender": False}
    path = shipped_config(tmp_path, **changes)
    assert load_config(path).limits.login_delay == 1.0
    process = server_process(path)
    pid = process.process.pid
    timed_login(process.port)  # one login first, so that the scrypt pool exists
    rss_before = memory_kib(pid, "VmRSS")

    attack = Attack(process.port, threads=200, pause=0.2)
    latencies: list[float] = []
    steps: list[tuple[float, float, float]] = []
    try:
        for _ in range(6):
            time.sleep(0.6)
            latencies.append(timed_login(process.port, steps=steps))
    finally:
        tally = attack.stop()
    rss_peak = memory_kib(pid, "VmHWM")
    elapsed = time.monotonic() - attack.started
    print(
        f"\nflood (defender {defender}), {elapsed:.1f}s: {tally.connections} connections, "
        f"{tally.refused} refused, {tally.guesses} evaluated guesses, {tally.busy} busy answers; "
        f"legit logins {', '.join(f'{t:.3f}' for t in latencies)} s; "
        f"server RSS {rss_before / 1024:.1f} MiB before, peak {rss_peak / 1024:.1f} MiB"
    )
    assert tally.logged_in == 0 and tally.refused > 0
    # The bounds of the issue hold with the defaults; without the defender, only the
    # per-address login slot keeps it fair, which this checks with some room for load.
    slowest, growth = (1.0, 60) if defender == "shipped" else (1.5, 100)
    assert max(latencies) < slowest, f"(connect, greeting, login) seconds: {steps}"
    assert rss_peak - rss_before < growth * 1024
    assert timed_login(process.port) < slowest
    if defender == "shipped":
        assert is_banned_answer(greeted(process.port))
    else:
        assert tally.guesses > 20  # the flood did get its guesses checked


# -- bans: how long, who, and for how long they last -------------------------------------


def test_a_login_waiting_when_the_ban_falls_gets_no_password_check(tmp_path, serve):
    """Logins queue one at a time per address; one queued behind the guess that
    brings the ban must be answered busy, even with the right password."""
    config = defended(
        tmp_path,
        defender={"threshold": 3},
        users={"alice": {"password": password_hash("alice")}},  # real scrypt: checks take a while
        limits={"login_delay": 0},
    )
    running = serve(config)
    peers = [Peer(running.port) for _ in range(8)]
    try:
        for peer in peers:
            assert peer.recv()["type"] == "hello"
        for n, peer in enumerate(peers[:-1]):
            peer.send({"op": "login", "user": "alice", "password": f"wrong-{n}"})
        time.sleep(0.05)
        peers[-1].send({"op": "login", "user": "alice", "password": PASSWORDS["alice"]})
        answers = [peer.recv() for peer in peers]
    finally:
        for peer in peers:
            peer.sock.close()
    codes = [a.get("error", "ok") if a else "closed" for a in answers]
    print(f"\nanswers to 7 wrong logins and then the right one, queued at once: {codes}")
    assert codes.count("auth_failed") == 3
    assert codes[-1] == "busy"


def test_a_second_offence_bans_for_longer(tmp_path, serve, capsys):
    config = defended(tmp_path, defender={"threshold": 3, "ban_time": 1, "ban_growth": 3})
    running = serve(config)
    lengths, recorded = [], []
    for offence in (1, 2):
        assert wrong_logins(running.port, 3) == ["auth_failed"] * 3
        banned_at = time.time()
        wait_until(lambda n=offence: ban_file(config, ATTACKER).get(ATTACKER, {}).get("offences") == n, 5)
        entry = ban_file(config)[ATTACKER]
        assert entry["offences"] == offence
        recorded.append(entry["until"] - banned_at)
        if offence == 2:
            capsys.readouterr()
            assert ftpserver_main(["bans", "--config", str(tmp_path / "server.yaml")]) == 0
            listed = capsys.readouterr().out.splitlines()
            assert len(listed) == 1 and listed[0].startswith(ATTACKER) and "offence 2" in listed[0]
        assert is_banned_answer(greeted(running.port))
        # Measure the ban from outside: poll until a connection is greeted again.
        while (frame := greeted(running.port)) is None or frame.get("type") != "hello":
            assert is_banned_answer(frame) and time.time() - banned_at < 10
            time.sleep(0.05)
        lengths.append(time.time() - banned_at)
    print(
        f"\nban lengths: recorded {recorded[0]:.2f}s then {recorded[1]:.2f}s; seen {lengths[0]:.2f}s then {lengths[1]:.2f}s"
    )
    assert 0.8 < recorded[0] <= 1.05 and 2.8 < recorded[1] <= 3.05
    assert 0.8 < lengths[0] < 1.6 and 2.8 < lengths[1] < 3.6
    assert 2.2 < lengths[1] / lengths[0] < 3.8


def test_events_older_than_the_observation_time_are_forgotten(tmp_path, serve):
    config = defended(tmp_path, defender={"threshold": 3, "observation_time": 1})
    running = serve(config)
    assert wrong_logins(running.port, 2) == ["auth_failed"] * 2
    time.sleep(1.2)
    assert wrong_logins(running.port, 2) == ["auth_failed"] * 2
    assert greeted(running.port)["type"] == "hello"
    assert wrong_logins(running.port, 1) == ["auth_failed"]  # 3 within the window
    assert is_banned_answer(greeted(running.port))


def test_a_safelisted_address_is_never_banned(tmp_path, serve):
    config = defended(tmp_path, defender={"threshold": 5, "safelist": ["127.0.0.1/32"]})
    running = serve(config)
    assert wrong_logins(running.port, 100) == ["auth_failed"] * 100
    assert timed_login(running.port, source=ATTACKER) < 1
    assert ban_file(config) == {}
    assert wrong_logins(running.port, 5, source=LEGIT) == ["auth_failed"] * 5
    assert is_banned_answer(greeted(running.port, LEGIT))
    assert list(ban_file(config, LEGIT)) == [LEGIT]
    assert greeted(running.port, ATTACKER)["type"] == "hello"


def test_a_banned_address_gets_one_busy_frame_and_an_open_connection_no_more_checks(tmp_path, serve):
    config = defended(tmp_path, defender={"threshold": 3})
    running = serve(config)
    with Peer(running.port) as already_open:
        assert already_open.recv()["type"] == "hello"
        assert wrong_logins(running.port, 3) == ["auth_failed"] * 3
        started = time.monotonic()
        with Peer(running.port) as turned_away:
            frame = turned_away.recv()
            assert is_banned_answer(frame) and frame["ok"] is False, frame
            assert turned_away.closed_within(1.0)
        assert time.monotonic() - started < 1.0
        for _ in range(20):  # each turned away on the accepting thread: no session starts
            assert is_banned_answer(greeted(running.port))
        assert running.server.session_count == 1
        answer = already_open.request("login", user="alice", password=PASSWORDS["alice"])
        assert is_banned_answer(answer), answer
        assert already_open.closed_within(1.0)
    assert greeted(running.port, LEGIT)["type"] == "hello"


def test_a_ban_survives_a_restart_and_unban_lifts_it(tmp_path, server_process):
    path = shipped_config(tmp_path, defender={"threshold": 3})
    first = server_process(path)
    assert wrong_logins(first.port, 3) == ["auth_failed"] * 3
    assert is_banned_answer(greeted(first.port))
    assert first.stop() == 0
    assert sum("ban 127.0.0.1" in line for line in first.log) == 1

    listed = ftpserver_cli("bans", "--config", str(path))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 1 and lines[0].split()[0] == ATTACKER, listed.stdout

    second = server_process(path)
    assert is_banned_answer(greeted(second.port))
    assert greeted(second.port, LEGIT)["type"] == "hello"
    lifted = ftpserver_cli("unban", ATTACKER, "--config", str(path))
    assert lifted.returncode == 0 and "lifted" in lifted.stderr, lifted.stderr
    assert greeted(second.port)["type"] == "hello"  # the running server obeys at once
    assert timed_login(second.port, source=ATTACKER) < 1
    assert ftpserver_cli("bans", "--config", str(path)).stdout == ""
    again = ftpserver_cli("unban", ATTACKER, "--config", str(path))
    assert again.returncode == 1 and "not banned" in again.stderr
    assert ftpserver_cli("unban", "127.0.0.9", "--config", str(path)).returncode == 1


# -- what gets scored --------------------------------------------------------------------


def test_garbage_frames_get_an_address_banned(tmp_path, serve):
    config = defended(tmp_path)  # the default scores: 2 per violation, 15 to ban
    running = serve(config)
    needed = -(-config.defender.threshold // config.defender.scores[Event.PROTOCOL_VIOLATION])  # 8
    for n in range(needed):
        assert greeted(running.port)["type"] == "hello", f"banned after {n} violations"
        with Peer(running.port) as peer:
            assert peer.recv()["type"] == "hello"
            peer.sock.sendall(HEADER.pack(9) + b"not json!")
            answer = peer.recv()
            assert answer["error"] == "bad_request", answer
    assert is_banned_answer(greeted(running.port))


@pytest.mark.parametrize("anonymous", [False, True])
def test_connections_that_never_log_in(tmp_path, serve, anonymous):
    config = defended(tmp_path, anonymous={"enabled": anonymous})
    running = serve(config)
    needed = config.defender.threshold // config.defender.scores[Event.NO_LOGIN]  # 15
    for _ in range(needed - 1):
        assert greeted(running.port)["type"] == "hello"
    assert wait_until(lambda: running.server.session_count == 0)
    assert running.server.defender.banned(ATTACKER) is None
    for _ in range(needed):
        greeted(running.port)
    assert wait_until(lambda: running.server.session_count == 0)  # each scored in finish()
    banned = running.server.defender.banned(ATTACKER)
    if anonymous:
        assert banned is None
        assert greeted(running.port)["type"] == "hello"
    else:
        assert banned is not None
        assert is_banned_answer(greeted(running.port))


def test_refusals_over_the_per_address_limit_are_scored(tmp_path, serve):
    config = defended(tmp_path, limits={"max_connections_per_address": 2})
    running = serve(config)
    held = [Peer(running.port) for _ in range(2)]
    try:
        for peer in held:
            assert peer.recv()["type"] == "hello"
        for _ in range(config.defender.threshold):
            frame = greeted(running.port)
            assert frame["error"] == "busy" and "too many connections" in frame["message"]
        assert is_banned_answer(greeted(running.port))
    finally:
        for peer in held:
            peer.sock.close()


def test_refusals_of_an_address_that_logged_in_are_its_own_batch_not_an_attack(tmp_path, serve):
    """A user's `-j 30` over the per-address limit must not get the user banned."""
    config = defended(tmp_path, limits={"max_connections_per_address": 2})
    running = serve(config)
    assert timed_login(running.port, source=ATTACKER) < 1
    assert wait_until(lambda: running.server.session_count == 0)  # that login's session is over
    held = [Peer(running.port) for _ in range(2)]
    try:
        for peer in held:
            assert peer.recv()["type"] == "hello"
        for _ in range(3 * config.defender.threshold):
            assert "too many connections" in greeted(running.port)["message"]
    finally:
        for peer in held:
            peer.sock.close()
    assert wait_until(lambda: running.server.session_count == 0)
    assert greeted(running.port)["type"] == "hello"


def test_what_a_banned_address_does_meanwhile_is_not_a_new_offence(tmp_path):
    defender = Defender(DefenderConfig(threshold=2, ban_time=60), tmp_path / "bans.json")
    defender.record(ATTACKER, Event.UNKNOWN_USER)
    assert defender.banned(ATTACKER).offences == 1
    for _ in range(10):
        assert defender.record(ATTACKER, Event.NO_LOGIN) is None
    assert defender.banned(ATTACKER).offences == 1


def test_a_safelist_entry_narrower_than_a_64_and_one_added_after_a_ban(tmp_path):
    safe = DefenderConfig(threshold=1, safelist=(ipaddress.ip_network("2001:db8::5/128"),))
    defender = Defender(safe, tmp_path / "bans.json")
    assert defender.record("2001:db8::5", Event.LOGIN_FAILED) is None
    assert defender.record("2001:db8::6", Event.LOGIN_FAILED) is not None
    assert defender.banned("2001:db8::5") is None  # its /64 is banned, the address itself is safe


def test_a_ban_file_that_cannot_be_written_leaves_the_server_serving(tmp_path, serve, caplog):
    config = defended(tmp_path, defender={"threshold": 3})
    (config.storage_root / ".sockftp").mkdir(mode=0o700)
    (config.storage_root / ".sockftp" / "bans.json").mkdir()  # neither readable nor replaceable
    running = serve(config)
    assert wrong_logins(running.port, 3) == ["auth_failed"] * 3
    assert is_banned_answer(greeted(running.port))  # the ban holds in memory
    assert timed_login(running.port) < 1  # and everyone else is served
    assert wait_until(lambda: any("cannot write the ban file" in r.message for r in caplog.records))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_ipv6_addresses_are_judged_by_their_64(tmp_path):
    defender = Defender(DefenderConfig(threshold=2), tmp_path / "bans.json")
    defender.record("2001:db8:1:2::1", Event.LOGIN_FAILED)
    assert defender.record("2001:db8:1:2:ffff::9", Event.LOGIN_FAILED) is not None
    assert defender.banned("2001:db8:1:2::abcd") is not None
    assert defender.banned("2001:db8:1:3::1") is None
    assert defender.banned("::ffff:127.0.0.1") is None


def test_defender_false_switches_it_off(tmp_path, serve):
    path = write_config(tmp_path, defender=False, limits={"login_delay": 0})
    (tmp_path / "users.yaml").write_text(yaml.safe_dump({"users": {"alice": {"password": quick_hash("x")}}}))
    running = serve(load_config(path))
    assert not running.server.config.defender.enabled
    assert wrong_logins(running.port, 30) == ["auth_failed"] * 30
    assert greeted(running.port)["type"] == "hello"


# -- max_sessions --------------------------------------------------------------------------


def test_max_sessions_per_user(tmp_path, serve):
    users = {
        "alice": {"password": quick_hash(PASSWORDS["alice"]), "max_sessions": 2},
        "bob": {"password": quick_hash(PASSWORDS["bob"])},
    }
    running = serve(defended(tmp_path, users=users))
    sessions = [Peer(running.port, LEGIT) for _ in range(3)]
    try:
        answers = []
        for peer in sessions:
            assert peer.recv()["type"] == "hello"
            answers.append(peer.request("login", user="alice", password=PASSWORDS["alice"]))
        assert [a["ok"] for a in answers[:2]] == [True, True]
        assert answers[2]["error"] == "busy" and "sessions" in answers[2]["message"], answers[2]
        assert sessions[2].closed_within(1.0)
        assert timed_login(running.port, user="bob") < 1  # other users are not counted
        assert sessions[0].request("quit") == {"ok": True}
        assert sessions[0].closed_within(1.0)
        assert wait_until(lambda: running.server.session_count == 1)
        assert timed_login(running.port) < 1
        sessions[1].sock.close()  # a session that just drops frees its place too
        assert wait_until(lambda: running.server.session_count == 0)
        with Peer(running.port, LEGIT) as one, Peer(running.port, LEGIT) as two:
            for peer in (one, two):
                assert peer.recv()["type"] == "hello"
                assert peer.request("login", user="alice", password=PASSWORDS["alice"])["ok"]
    finally:
        for peer in sessions:
            peer.sock.close()


# -- TLS failures after the handshake ------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(tmp_path, ca, serve):
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return serve(defended(tmp_path, tls={"cert": "server.pem"}))


class TlsPeer:
    """TLS through memory BIOs over a plain socket, so raw bytes can be slipped in
    beside the TLS records once the handshake is done."""

    def __init__(self, port: int, cafile: Path, version: ssl.TLSVersion) -> None:
        context = ssl.create_default_context(cafile=str(cafile))
        context.minimum_version = context.maximum_version = version
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")
        self._pump(self.tls.do_handshake)

    def _pump(self, step, *args):
        while True:
            try:
                result = step(*args)
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during TLS") from None
                self.incoming.write(data)
            else:
                self._flush()
                return result

    def _flush(self) -> None:
        if data := self.outgoing.read():
            self.sock.sendall(data)

    def recv(self) -> dict:
        data = b""
        while len(data) < HEADER.size or len(data) < HEADER.size + HEADER.unpack(data[:4])[0]:
            data += self._pump(self.tls.read, 65536)
        return json.loads(data[HEADER.size :])

    def rest(self, seconds: float) -> tuple[bool, bytes]:
        """Read raw bytes until the server closes (or `seconds` pass): (closed, the
        application data the server sent in them, decrypted)."""
        deadline, closed = time.monotonic() + seconds, False
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            except TimeoutError:
                break
            if not data:
                closed = True
                break
            self.incoming.write(data)
        plain = b""
        with contextlib.suppress(ssl.SSLError):
            while chunk := self.tls.read(65536):
                plain += chunk
        return closed, plain


def client_hello() -> bytes:
    """The bytes of a fresh ClientHello, as a renegotiating client would send."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    hello = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).wrap_bio(incoming, outgoing, server_hostname="x")
    with pytest.raises(ssl.SSLWantReadError):
        hello.do_handshake()
    data = outgoing.read()
    assert data[:1] == b"\x16"  # a handshake record
    return data


ATTACKS = {
    "corrupt record": lambda: b"\x17\x03\x03\x00\x40" + os.urandom(64),
    "garbage bytes": lambda: b"this is not TLS at all\r\n" * 4,
    "renegotiation": client_hello,
}


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_tls_failure_after_the_handshake_ends_the_session_quietly(
    tls_server, tmp_path, caplog, attack, version
):
    caplog.set_level(logging.INFO)
    cafile = tmp_path / "ca.pem"
    peer = TlsPeer(tls_server.port, cafile, version)
    try:
        assert peer.recv()["type"] == "hello"
        assert wait_until(lambda: tls_server.server.session_count == 1)
        peer.sock.sendall(ATTACKS[attack]())
        closed, sent = peer.rest(5.0)
    finally:
        peer.sock.close()
    assert closed, "the session did not end"
    assert sent == b"", f"the server sent {sent!r} after the failure"
    assert wait_until(lambda: tls_server.server.session_count == 0)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    assert any("ended: SSLError" in r.getMessage() for r in caplog.records)

    again = TlsPeer(tls_server.port, cafile, version)
    try:
        assert again.recv()["type"] == "hello"
        again.tls.write(HEADER.pack(13) + b'{"op":"quit"}')
        again._flush()
        assert again.recv() == {"ok": True}
    finally:
        again.sock.close()


def test_failed_tls_handshakes_are_scored_as_protocol_violations(tls_server):
    """defender.Event says a failed TLS handshake is a protocol violation."""
    needed = -(
        -tls_server.config.defender.threshold // tls_server.config.defender.scores[Event.PROTOCOL_VIOLATION]
    )
    for _ in range(needed):
        with Peer(tls_server.port) as peer:
            peer.sock.sendall(b"\x00\x00\x00\x0e" + b'{"op": "quit"}')
            assert peer.closed_within(5.0)
    assert wait_until(lambda: tls_server.server.session_count == 0)
    assert wait_until(lambda: tls_server.server.defender.banned(ATTACKER), 2) is not None
