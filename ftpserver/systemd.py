"""Telling systemd how the server is doing, for a `Type=notify` unit (sd_notify(3)).

systemd then counts the service as started once it listens (a failed start shows as
one, and units ordered after it wait), follows its reloads and its stop. Outside
systemd (no `NOTIFY_SOCKET`) nothing is sent.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["notify", "reloading"]

log = logging.getLogger("ftpserver")


def notify(*states: str) -> bool:
    """Send `states` (`READY=1`, `STOPPING=1`, `STATUS=...`) to the service manager, if
    there is one; True if they went."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    elif not address.startswith("/"):
        return False  # none, or a kind this does not speak (vsock)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(states).encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address.lstrip("\0"), exc)
        return False
    return True


def reloading() -> bool:
    """Say a reload has begun (send `READY=1` once it is done)."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
