"""Sizes with units and network endpoints, as people write them in configs, command
lines and logs."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["endpoint", "host_of", "parse_size"]

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgtp", start=1):
    _UNITS[_p] = _UNITS[_p + "b"] = 1000**_i
    _UNITS[_p + "i"] = _UNITS[_p + "ib"] = 1024**_i


def parse_size(value: Any) -> int:
    """Return a byte count from an int or a string like `10GB`, `512MiB`, `1.5k`."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{value!r} is not a size (use bytes or units like 10GB, 512MiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def endpoint(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets (`[::1]:9999`) so its colons stay apart."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_of(text: str) -> str:
    """A host as typed: `[::1]`, as in URLs and `endpoint()`, is the address `::1`."""
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text
