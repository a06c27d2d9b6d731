"""`Connection`: a `Client` opened on first use and opened again after the link broke.

The command line holds one; each worker of a `Batch` holds its own. Retries
of both wait `backoff(attempt)` seconds, and `is_retryable()` says which
failures are worth another try.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ftpproto import ProtocolError, State
from ftpproto.io import RateLimiter

from .client import Client, HandshakeError
from .errors import CLIENT_ERRORS, ConnectFailedError
from .formatting import reason

__all__ = ["BUSY_RETRIES", "Connection", "backoff", "is_busy", "is_retryable"]

MAX_BACKOFF = 10.0  # seconds
BUSY_RETRIES = (
    6  # a server that says busy is tried again this often, --retries or not: 0.5 s to 10 s, ~28 s in all
)


def backoff(attempt: int, base: float = 0.5) -> float:
    """Seconds to wait after failed attempt number `attempt` (0 for the first):
    `base`, doubling each time, at most `MAX_BACKOFF`."""
    return min(base * 2**attempt, MAX_BACKOFF)


def is_busy(exc: BaseException) -> bool:
    """The server turned the connection away for now: too many connections."""
    return isinstance(exc, ProtocolError) and exc.code == "busy"


def is_retryable(exc: BaseException) -> bool:
    """A dropped or refused connection, a time-out, or a server that said busy."""
    if isinstance(exc, ProtocolError):
        return exc.closes and exc.code in ("busy", "timeout")
    return isinstance(exc, ConnectionError | TimeoutError)


class Connection:
    """A client from `connect()`, made when first needed and made again once it closed.

    A refused or dropped connect is tried `retries` more times, `backoff()` apart; a
    `busy` greeting at least `busy_retries` more times (a server at its connection
    limit frees a place soon). With an `address` (the command line's), a connect
    that fails for good raises `ConnectFailedError` naming it, as does a failed
    handshake (never retried: TLS on one side only will not heal); a protocol
    error answer (`busy`, `auth_failed`) is raised as itself. Without one, every
    error is raised as itself, for the caller's own retries (a batch worker's).
    `pace` is set on every client, `client` is one already open to start with.
    """

    def __init__(
        self,
        connect: Callable[[], Client],
        *,
        retries: int = 0,
        address: str | None = None,
        pace: RateLimiter | None = None,
        client: Client | None = None,
        busy_retries: int = BUSY_RETRIES,
    ) -> None:
        self.connect, self.retries, self.address, self.pace = connect, retries, address, pace
        self.busy_retries = busy_retries
        self._client = client
        if client is not None:
            client.pace = pace

    @property
    def client(self) -> Client:
        if self._client is None or self._client.closed:
            self._client = self._open()
            self._client.pace = self.pace
        return self._client

    def _open(self) -> Client:
        attempt = 0
        while True:
            try:
                return self.connect()
            except HandshakeError as exc:
                if self.address is None:
                    raise
                raise ConnectFailedError(str(exc)) from exc
            except CLIENT_ERRORS as exc:
                limit = max(self.retries, self.busy_retries) if is_busy(exc) else self.retries
                if attempt < limit and is_retryable(exc):
                    time.sleep(backoff(attempt))
                    attempt += 1
                    continue
                if self.address is None or isinstance(exc, ProtocolError):
                    raise
                raise ConnectFailedError(f"cannot connect to {self.address}: {reason(exc)}") from exc

    @property
    def closed(self) -> bool:
        """No connection is open now (the next use of `client` makes one)."""
        return self._client is None or self._client.closed

    def settle(self) -> None:
        """After an interruption: cut a connection left in the middle of an exchange,
        where any frame of ours would land inside data; the next use reconnects."""
        if self._client is not None and self._client.conversation.state not in (State.IDLE, State.CLOSED):
            self.drop()

    def drop(self) -> None:
        """Cut the connection at once, even under a transfer in another thread; the next use reconnects."""
        if self._client is not None:
            self._client.sock.close()
            self._client = None

    def close(self) -> None:
        """End the session politely (quit), if one is open."""
        if self._client is not None:
            self._client.close()
