"""`FileServer`: a `ThreadingTCPServer` with connection limits and a graceful stop.

Connection limits live in `verify_request()`: a connection over the total or
per-address limit gets a `busy` frame and is closed before a thread starts.
`stop()` ends idle sessions at once and gives running transfers
`shutdown_grace` seconds to finish.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import ipaddress
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from importlib import metadata

from ftpproto import BusyError
from ftpproto.io import RateLimiter, refuse
from ftpproto.io.turn import Turn
from ftpproto.units import endpoint

from .config import Account, ConfigError, ServerConfig, load_config
from .defender import Defender, Event, in_networks, ip_of, source_of
from .handler import HANDSHAKE_TIMEOUT, Session
from .hooks import Hooks
from .metrics import open_metrics
from .proxyproto import ProxyHeaderError, read_header
from .storage import open_storage

__all__ = ["FileServer", "version"]

log = logging.getLogger("ftpserver")

Request = socket.socket | tuple[bytes, socket.socket]  # what socketserver hands its hooks


def _socket(request: Request) -> socket.socket:
    """The connection of a request (a TCP server's requests are sockets already)."""
    return request if isinstance(request, socket.socket) else request[1]


def version() -> str:
    """The installed sockftp version."""
    try:
        return metadata.version("sockftp")
    except metadata.PackageNotFoundError:
        return "unknown"


def address_family(host: str) -> socket.AddressFamily:
    """The family to listen with on `host`: IPv6 for an IPv6 address (`::` is every
    interface, IPv4 included), or for a name with IPv6 addresses only; else IPv4."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host.split("%", 1)[0]).version == 6 else socket.AF_INET
    except ValueError:
        pass
    try:
        families = {info[0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except (socket.gaierror, UnicodeError):
        return socket.AF_INET  # the bind then says what is wrong with the name
    return socket.AF_INET6 if families == {socket.AF_INET6} else socket.AF_INET


def peer_address(address: tuple) -> tuple[str, int]:
    """A peer's (host, port): an IPv4 client of a dual-stack listener as IPv4
    (`::ffff:192.0.2.7` is 192.0.2.7 to the limits, the defender and the logs)."""
    host, port = str(address[0]), int(address[1])
    ip = ip_of(host) if ":" in host else None
    return (str(ip), port) if isinstance(ip, ipaddress.IPv4Address) else (host, port)


class FileServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.storage = open_storage(config)
        self.turn = Turn() if self.storage.turns else None  # see ftpproto/io/turn.py
        try:
            self.metrics = open_metrics(
                config.metrics,
                lambda: self.session_count,
                self.storage.stats,
                lambda: self.turn.timeouts if self.turn is not None else 0,
            )
        except ImportError:
            raise ConfigError(
                f"{config.path}: metrics: needs prometheus_client (pip install 'sockftp[metrics]')"
            ) from None
        except OSError as exc:  # the metrics port is taken: say which listener failed
            self.storage.close()
            raise ConfigError(
                f"{config.path}: metrics: cannot listen on {config.metrics}: {exc.strerror}"
            ) from None
        self.hooks = Hooks(config.hooks)
        self.defender = Defender(
            config.defender, config.storage_root / ".sockftp" / "bans.json", on_ban=self._banned_now
        )
        self._user_sessions: collections.Counter[str] = collections.Counter()
        self._login_slots: dict[str, tuple[threading.Semaphore, list[int]]] = {}
        self.version = version()
        self.stopping = False
        self._lock = threading.Lock()
        self._sessions: set[Session] = set()
        self._per_address: collections.Counter[str] = collections.Counter()
        self._rates: dict[str, RateLimiter] = {}
        self._refusing: set[socket.socket] = set()
        self._awaiting_header: set[socket.socket] = set()  # from a proxy, its PROXY header unread
        self._cleaner = threading.Event()
        self.address_family = address_family(config.host)
        super().__init__((config.host, config.port), Session)
        threading.Thread(target=self._clean_partials, name="partial-cleaner", daemon=True).start()
        if config.anonymous is not None and config.anonymous.can_write and not self._loopback():
            log.warning(
                "anonymous users may write, and the server listens on %s: anyone who reaches it can upload",
                config.host or "every address",
            )
        if config.anonymous is not None:
            exposed = [
                u.name or ""
                for u in config.users.values()
                if u.home == config.anonymous.home or config.anonymous.home in u.home.parents
            ]
            if exposed:
                log.warning(
                    "anonymous users can reach the homes of: %s (give them a home of their own)",
                    ", ".join(exposed),
                )

    @property
    def session_count(self) -> int:
        """Sessions running right now."""
        with self._lock:
            return len(self._sessions)

    @property
    def address(self) -> tuple[str, int]:
        return str(self.server_address[0]), int(self.server_address[1])

    def _loopback(self) -> bool:
        try:
            return ipaddress.ip_address(str(self.server_address[0])).is_loopback
        except ValueError:
            return False

    # -- socketserver hooks ----------------------------------------------------

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # `::` takes IPv4 clients too, as most servers do, whatever the system's default.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple]:
        """Accept; with TLS configured, wrap the socket (the session thread does the handshake)."""
        sock, address = super().get_request()
        address = peer_address(address)
        if self._from_proxy(address[0]):  # decided once: its header first, then TLS
            with self._lock:
                self._awaiting_header.add(sock)
        elif self.config.tls is not None:
            sock = self.config.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def _from_proxy(self, host: str) -> bool:
        """Whether `host` is a trusted balancer, whose connections begin with a PROXY header."""
        return bool(self.config.proxies) and in_networks(host, self.config.proxies)

    def verify_request(self, request: Request, client_address: tuple) -> bool:
        request = _socket(request)
        limits = self.config.limits
        host = client_address[0]
        with self._lock:
            proxied = request in self._awaiting_header  # its client is judged once the header names it
        if not proxied and self._banned(request, host):
            return False
        with self._lock:
            if self.stopping:
                reason = "the server is shutting down"
            elif sum(self._per_address.values()) >= limits.max_connections:
                reason = "the server is at its connection limit"
            elif not proxied and self._per_address[host] >= limits.max_connections_per_address:
                reason = "too many connections from your address"
            else:
                self._per_address[host] += 1
                return True
            self._awaiting_header.discard(request)
        log.warning("refused %s: %s", endpoint(host, client_address[1]), reason)
        if proxied and self.config.tls is not None:
            return False  # unread header, no TLS yet: closed without a word
        if reason == "too many connections from your address":
            self.defender.record(host, Event.LIMIT_EXCEEDED)
        with self._lock:
            self._refusing.add(request)
        # Its own thread: with TLS the refusal needs a handshake, which a silent peer
        # could otherwise drag out while every new connection waits behind it.
        threading.Thread(target=self._refuse, args=(request, reason), daemon=True).start()
        return False

    def _banned(self, request: socket.socket, host: str) -> bool:
        """Turn a banned address away on the accepting thread, at the cost of one
        non-blocking send (none with TLS, which would need a handshake)."""
        ban = self.defender.banned(host)
        if ban is None:
            return False
        if self.defender.worth_logging(host):
            log.info("refused %s: banned for %.0fs more (one line a minute)", host, ban.until - time.time())
        if self.config.tls is None:
            refuse(
                request, BusyError(f"your address is banned for {max(1, round(ban.until - time.time()))}s")
            )
        return True

    def _refuse(self, request: socket.socket, reason: str) -> None:
        try:
            refuse(request, BusyError(reason), wait=1.0)
        finally:
            with self._lock:
                self._refusing.discard(request)
            super().shutdown_request(request)

    def shutdown_request(self, request: Request) -> None:
        with self._lock:
            self._awaiting_header.discard(_socket(request))
            if request in self._refusing:
                return  # its refusal thread closes it
        super().shutdown_request(request)

    def process_request_thread(self, request: Request, client_address: tuple) -> None:
        counted: str | None = client_address[0]  # the address this connection is counted under
        try:
            with self._lock:
                proxied = request in self._awaiting_header
            if proxied:
                try:
                    request, named, counted = self._through_proxy(_socket(request), client_address)
                except Exception:
                    self.handle_error(request, client_address)
                    named = None
                if named is None:
                    self.shutdown_request(request)
                    return
                client_address = named
            super().process_request_thread(request, client_address)
        finally:
            if counted is not None:
                with self._lock:
                    self._uncount(counted)

    def _uncount(self, host: str) -> None:
        """One connection fewer from `host` (the caller holds the lock)."""
        self._per_address[host] -= 1
        if self._per_address[host] <= 0:
            del self._per_address[host]

    def _through_proxy(
        self, request: socket.socket, proxy: tuple[str, int]
    ) -> tuple[socket.socket, tuple[str, int] | None, str | None]:
        """Read the PROXY header a trusted balancer sends first, then judge the client it
        names as `verify_request` judges a direct one. Returns the request (wrapped for TLS
        now, after the header), the client's address (None: dropped or refused) and the
        address the connection is now counted under (None: no longer counted). A header
        naming no client (a health check's LOCAL) keeps the balancer's own address, which
        the defender's safelist holds."""
        try:
            named = read_header(request, min(self.config.limits.idle_timeout, HANDSHAKE_TIMEOUT))
        except (ProxyHeaderError, OSError) as exc:  # OSError: TimeoutError, a reset, stop()
            log.warning("dropped %s from the proxy: %s", endpoint(*proxy), exc)
            return request, None, proxy[0]
        finally:
            with self._lock:
                self._awaiting_header.discard(request)
        if self.stopping:
            return request, None, proxy[0]
        if self.config.tls is not None:
            request = self.config.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        if named is None:
            return request, proxy, proxy[0]
        client = peer_address(named)
        host = client[0]
        if self._banned(request, host):
            return request, None, proxy[0]
        with self._lock:
            self._uncount(proxy[0])
            if self._per_address[host] < self.config.limits.max_connections_per_address:
                self._per_address[host] += 1
                return request, client, host
        reason = "too many connections from your address"
        log.warning("refused %s (through %s): %s", endpoint(*client), endpoint(*proxy), reason)
        self.defender.record(host, Event.LIMIT_EXCEEDED)
        if self.config.tls is None:  # one non-blocking send; with TLS it would need a handshake
            refuse(request, BusyError(reason))
        return request, None, None

    def handle_error(self, request: Request, client_address: tuple) -> None:
        log.exception("unexpected error with %s", endpoint(*client_address[:2]))

    # -- session bookkeeping, for stop() ---------------------------------------

    def session_started(self, session: Session) -> None:
        with self._lock:
            self._sessions.add(session)

    def session_ended(self, session: Session) -> None:
        with self._lock:
            self._sessions.discard(session)

    @contextlib.contextmanager
    def login_slot(self, host: str) -> Iterator[None]:
        """One password check at a time per source: a flood from one address queues
        behind itself, and the shared scrypt pool stays fair to everyone else."""
        source = source_of(host)
        with self._lock:
            semaphore, users = self._login_slots.setdefault(source, (threading.Semaphore(1), [0]))
            users[0] += 1
        try:
            with semaphore:
                yield
        finally:
            with self._lock:
                users[0] -= 1
                if not users[0]:
                    del self._login_slots[source]

    def user_session_started(self, account: Account) -> bool:
        """Count a session logged in as `account`; False (and not counted) if it would
        pass the account's `max_sessions`."""
        name = account.name or ""
        with self._lock:
            if account.max_sessions is not None and self._user_sessions[name] >= account.max_sessions:
                return False
            self._user_sessions[name] += 1
            return True

    def user_session_ended(self, account: Account) -> None:
        name = account.name or ""
        with self._lock:
            self._user_sessions[name] -= 1
            if self._user_sessions[name] <= 0:
                del self._user_sessions[name]

    def rate_limiter(self, account: Account) -> RateLimiter | None:
        """The bandwidth limit shared by all sessions of `account`, if it has one."""
        if not account.bandwidth:
            return None
        with self._lock:
            key = account.name or ""
            if key not in self._rates:
                self._rates[key] = RateLimiter(account.bandwidth)
            return self._rates[key]

    def _banned_now(self, source: str) -> None:
        self.metrics.ban()
        self.hooks.emit("ban", address=source)

    def reload(self, overrides: dict | None = None) -> bool:
        """Read the config file and its users file again and apply what can change while
        serving: users, anonymous access, limits, the defender. Running sessions keep the
        settings they started with. A file with an error changes nothing (logged)."""
        try:
            new = dataclasses.replace(load_config(self.config.path), **(overrides or {}))
        except ConfigError as exc:
            log.error("reload refused, the running settings stay: %s", exc)
            return False
        old = self.config
        fixed = {
            "listen": (new.host, new.port) != (old.host, old.port),
            "storage": (new.storage_root, new.storage_backend, new.s3)
            != (old.storage_root, old.storage_backend, old.s3),
            "tls": (new.tls is None) != (old.tls is None),
            "limits.max_file_size": new.limits.max_file_size != old.limits.max_file_size,
            "metrics": new.metrics != old.metrics,
            "log_format": new.log_format != old.log_format,
            "hooks": new.hooks != old.hooks,
        }
        self.config = dataclasses.replace(
            new,
            host=old.host,
            port=old.port,
            storage_root=old.storage_root,
            storage_backend=old.storage_backend,
            s3=old.s3,
            tls=old.tls,
            limits=dataclasses.replace(new.limits, max_file_size=old.limits.max_file_size),
            metrics=old.metrics,
            log_format=old.log_format,
            hooks=old.hooks,
        )
        self.defender.config = new.defender
        log.info("reloaded %s: %d users", new.path, len(new.users))
        if any(fixed.values()):
            changed = ", ".join(name for name, differs in fixed.items() if differs)
            log.warning("reload: changes to %s need a restart; the running values stay", changed)
        return True

    def _clean_partials(self) -> None:
        """Remove abandoned partial uploads at start, then every so often."""
        max_age = self.config.limits.partial_max_age
        while True:
            try:
                removed = self.storage.remove_stale_partials(max_age)
            except OSError as exc:  # out of descriptors, say: try again next time
                log.warning("sweep of stale partial uploads failed: %s", exc)
                removed = 0
            if removed:
                log.info("removed %d partial uploads older than %gs", removed, max_age)
            if self._cleaner.wait(min(max(max_age / 4, 1.0), 3600.0)):
                return

    def stop(self) -> None:
        """Stop accepting, end idle sessions, wait for transfers to finish or time out."""
        self.stopping = True
        self._cleaner.set()
        self.shutdown()
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            if not session.busy:
                with contextlib.suppress(OSError):
                    session.request.shutdown(socket.SHUT_RDWR)
        with self._lock:
            awaiting = list(self._awaiting_header)
        for sock in awaiting:  # no session yet: its header is read, then it is dropped
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + self.config.limits.shutdown_grace
        while self._sessions and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            stragglers = list(self._sessions)
        if stragglers:
            log.warning(
                "%d sessions still running after %gs; closing them",
                len(stragglers),
                self.config.limits.shutdown_grace,
            )
            for session in stragglers:
                with contextlib.suppress(OSError):
                    session.request.shutdown(socket.SHUT_RDWR)
            deadline = time.monotonic() + 5
            while self._sessions and time.monotonic() < deadline:
                time.sleep(0.05)
        self.server_close()
        self.defender.save()  # bans not yet on disk
        self.metrics.close()
        self.hooks.close()
        self.storage.close()
