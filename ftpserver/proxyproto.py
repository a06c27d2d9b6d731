"""The PROXY protocol (HAProxy's, versions 1 and 2): the client's address, as a balancer
in front of the server tells it.

A TCP balancer connects to the server itself, so without this every session would
come from the balancer's address: the per-address limits and the defender would
count everyone as one client, and ban them together. A balancer set to send the
header (HAProxy: `send-proxy` or `send-proxy-v2`) writes one before the client's
bytes, and the server reads it before its greeting. Only from the addresses the
config trusts (`listen.proxies`): from anyone else a header is just bytes that are not
a frame, and a client could otherwise name any address it likes.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

__all__ = ["ProxyHeaderError", "parse_v1", "parse_v2", "read_header"]

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX = 4096  # the longest v2 header taken (addresses and TLVs); a balancer sends far less
_V2_ADDRESSES = {0x11: (socket.AF_INET, 4), 0x21: (socket.AF_INET6, 16)}  # TCP over IPv4, IPv6

Address = tuple[str, int]


class ProxyHeaderError(ValueError):
    """The connection does not begin with a well-formed PROXY protocol header."""


def parse_v1(line: bytes) -> Address:
    """The client's (address, port) from a v1 line (with its CRLF). `UNKNOWN` is refused:
    a balancer sends it for a client it cannot name, whom nothing here could then judge."""
    if not line.startswith(V1_PREFIX) or not line.endswith(b"\r\n") or len(line) > V1_MAX:
        raise ProxyHeaderError("not a PROXY protocol v1 line")
    fields = line[len(V1_PREFIX) : -2].split(b" ")
    if fields[0] == b"UNKNOWN":
        raise ProxyHeaderError("the balancer names no client (UNKNOWN)")
    if len(fields) != 5 or fields[0] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("a v1 line must be TCP4 or TCP6 with two addresses and two ports")
    version = 4 if fields[0] == b"TCP4" else 6
    try:
        source, destination = (_address(field) for field in fields[1:3])
        port = _port(fields[3])
        _port(fields[4])
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError("a v1 line with a malformed address or port") from None
    if source.version != version or destination.version != version:
        raise ProxyHeaderError(f"a TCP{version} line with an address that is not IPv{version}")
    return str(source), port


def _address(text: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if b"%" in text:  # a scope: not an address a client on the network can have
        raise ValueError(text)
    return ipaddress.ip_address(text.decode("ascii"))


def _port(text: bytes) -> int:
    if not text.isdigit() or (len(text) > 1 and text.startswith(b"0")) or int(text) > 65535:
        raise ValueError(text)
    return int(text)


def parse_v2(header: bytes) -> Address | None:
    """The client's (address, port) from a whole v2 header; None for the `LOCAL` command
    (the balancer's own connection: a health check). A `PROXY` command for anything but
    TCP over IPv4 or IPv6 is refused: it names no client that could be judged."""
    if len(header) < 16 or not header.startswith(V2_SIGNATURE):
        raise ProxyHeaderError("not a PROXY protocol v2 header")
    version_command, family, length = struct.unpack("!BBH", header[12:16])
    if version_command >> 4 != 2 or version_command & 0xF > 1:
        raise ProxyHeaderError("a v2 header with an unknown version or command")
    if len(header) != 16 + length:
        raise ProxyHeaderError("a v2 header whose length does not match")
    if version_command & 0xF == 0:
        return None  # LOCAL: whatever the family, the connection's own endpoints stand
    if family not in _V2_ADDRESSES:
        raise ProxyHeaderError(f"a v2 header for no TCP client (family 0x{family:02x})")
    kind, size = _V2_ADDRESSES[family]
    if length < 2 * size + 4:
        raise ProxyHeaderError("a v2 header too short for its addresses")
    source = socket.inet_ntop(kind, header[16 : 16 + size])
    (port,) = struct.unpack("!H", header[16 + 2 * size : 18 + 2 * size])
    return source, port


def read_header(sock: socket.socket, timeout: float) -> Address | None:
    """Read the PROXY header at the start of `sock` (v1 or v2), exactly: the bytes after it
    stay unread. Returns what `parse_v1`/`parse_v2` do; raises `ProxyHeaderError` for
    anything else, `TimeoutError` if it is not all there within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    try:
        return _read_header(sock, deadline)
    except TimeoutError:
        raise TimeoutError(f"no complete PROXY protocol header within {timeout:g} s") from None


def _read_header(sock: socket.socket, deadline: float) -> Address | None:
    start = _take(sock, len(V1_PREFIX), deadline)  # as much as tells the versions (and garbage) apart
    if start == V2_SIGNATURE[: len(start)]:
        fixed = start + _take(sock, 16 - len(start), deadline)
        (length,) = struct.unpack("!H", fixed[14:16])
        if length > V2_MAX:
            raise ProxyHeaderError(f"a v2 header of {length} bytes, over the {V2_MAX} taken")
        return parse_v2(fixed + _take(sock, length, deadline))
    if start != V1_PREFIX:
        raise ProxyHeaderError("the connection does not start with a PROXY protocol header")
    line = start
    # The balancer writes the line at once: one look ahead finds its end, and only a line
    # that came in pieces is read a byte at a time.
    sock.settimeout(_left(deadline))
    ahead = sock.recv(V1_MAX - len(line), socket.MSG_PEEK)
    end = (line + ahead).find(b"\r\n")
    if end >= 0:
        line += _take(sock, end + 2 - len(line), deadline)
    while not line.endswith(b"\r\n"):
        if len(line) >= V1_MAX:
            raise ProxyHeaderError("a v1 line longer than 107 bytes")
        line += _take(sock, 1, deadline)
    return parse_v1(line)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("no complete PROXY protocol header in time")
    return left


def _take(sock: socket.socket, count: int, deadline: float) -> bytes:
    """Exactly `count` bytes, consumed."""
    chunks, got = [], 0
    while got < count:
        sock.settimeout(_left(deadline))
        chunk = sock.recv(count - got)
        if not chunk:
            raise ProxyHeaderError("the connection closed inside its PROXY protocol header")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
