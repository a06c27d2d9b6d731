"""Prometheus metrics, served over HTTP when the config's `metrics` section asks.

`Metrics` owns a registry of its own (never the process-wide default, so two
servers in one process do not mix) with counters for transfers, bytes, errors,
logins and bans, a histogram of transfer durations, the active sessions and the
checksum cache's hits and misses. `NullMetrics` is its do-nothing twin for a
server without a metrics listener, so callers never test for one. Only this
module imports `prometheus_client`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ftpproto.units import endpoint

__all__ = ["Metrics", "NullMetrics", "open_metrics"]

log = logging.getLogger("ftpserver.metrics")

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class NullMetrics:
    """No listener configured: every call does nothing."""

    def transfer(self, op: str, result: str, count: int, seconds: float) -> None:
        pass

    def error(self, code: str) -> None:
        pass

    def login(self, ok: bool) -> None:
        pass

    def ban(self) -> None:
        pass

    def close(self) -> None:
        pass


class Metrics(NullMetrics):
    def __init__(
        self,
        sessions: Callable[[], int],
        cache: Callable[[], dict[str, int]],
        turn_giveups: Callable[[], int],
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.core import CounterMetricFamily

        self.registry = registry = CollectorRegistry()
        self._transfers = Counter(
            "sockftp_transfers", "Transfers by op (get, put) and result", ["op", "result"], registry=registry
        )
        self._bytes = Counter("sockftp_transfer_bytes", "Bytes moved by op", ["op"], registry=registry)
        self._seconds = Histogram(
            "sockftp_transfer_seconds",
            "Transfer durations",
            ["op"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._errors = Counter(
            "sockftp_errors", "Error answers by protocol code", ["code"], registry=registry
        )
        self._logins = Counter(
            "sockftp_logins", "Logins by result (ok, failed)", ["result"], registry=registry
        )
        self._bans = Counter("sockftp_bans", "Addresses banned by the defender", registry=registry)
        Gauge("sockftp_active_sessions", "Sessions open now", registry=registry).set_function(sessions)

        class CacheCollector:
            def collect(self) -> Any:
                family = CounterMetricFamily(
                    "sockftp_checksum_cache_lookups", "Checksum cache lookups by result", labels=["result"]
                )
                for result, count in cache().items():
                    family.add_metric([result], count)
                yield family
                yield CounterMetricFamily(
                    "sockftp_turn_giveups",
                    "Waits for a session's turn that ran out of patience (ftpproto/io/turn.py)",
                    value=turn_giveups(),
                )

        registry.register(CacheCollector())
        self._http: Any = None

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Start the HTTP listener; return where it listens."""
        from prometheus_client import start_http_server

        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        address = self._http.server_address
        log.info("metrics on http://%s/metrics", endpoint(address[0], address[1]))
        return address[0], address[1]

    def transfer(self, op: str, result: str, count: int, seconds: float) -> None:
        self._transfers.labels(op, result).inc()
        self._bytes.labels(op).inc(count)
        self._seconds.labels(op).observe(seconds)

    def error(self, code: str) -> None:
        self._errors.labels(code).inc()

    def login(self, ok: bool) -> None:
        self._logins.labels("ok" if ok else "failed").inc()

    def ban(self) -> None:
        self._bans.inc()

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


def open_metrics(
    where: tuple[str, int] | None,
    sessions: Callable[[], int],
    cache: Callable[[], dict[str, int]],
    turn_giveups: Callable[[], int],
) -> NullMetrics:
    """Metrics served at `where` (host, port), or the null twin when it is None."""
    if where is None:
        return NullMetrics()
    metrics = Metrics(sessions, cache, turn_giveups)
    metrics.serve(*where)
    return metrics
