"""Password hashes and their check.

Passwords are stored as `scrypt$N$r$p$salt$hash` (salt and hash in URL-safe
base64), never in plain text. `verify_password()` compares in constant time
and does the same work for an unknown user as for a known one, so a wrong
name and a wrong password look alike from the outside, timing included.

A password that passed the check is remembered for `REMEMBER` seconds, as a keyed
HMAC (the key is random and lives only in this process), next to the stored hash
it matched: the same login again (a script's next connection, `-j 4`'s four)
skips scrypt. Only a success is remembered, so a guess still costs a full check;
and a new stored hash (a changed password) matches nothing remembered.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

__all__ = ["hash_password", "verify_password"]

_N, _R, _P = 2**14, 8, 1
_DUMMY_HASH = None  # built on first use: the hash an unknown user is checked against
# Each scrypt check takes 128 * N * r = 16 MiB. They run on a few threads of their own:
# that bounds the memory a crowd of logins can claim (100 at once would otherwise take
# 1.6 GB), and since malloc keeps freed blocks per thread, only those threads ever hold
# such blocks. More checks at once than cores would not finish sooner anyway.
_CHECKERS = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="scrypt")
REMEMBER = 300.0  # seconds a password that passed is remembered
REMEMBERED_MAX = 1024  # stored hashes remembered at most (the least recently used go first)
_KEY = os.urandom(32)
_remembered: collections.OrderedDict[str, tuple[bytes, float]] = collections.OrderedDict()
_remembered_lock = threading.Lock()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)


def hash_password(password: str) -> str:
    """Return a salted scrypt hash of `password` in the stored format."""
    salt = os.urandom(16)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(_scrypt(password, salt, _N, _R, _P))}"


def verify_password(password: str, stored: str | None) -> bool:
    """True if `password` matches `stored`; `stored=None` (no such user) is always False."""
    global _DUMMY_HASH
    if stored is None:
        if _DUMMY_HASH is None:
            _DUMMY_HASH = hash_password(os.urandom(8).hex())
        stored = _DUMMY_HASH
        known = False
    else:
        known = True
    tag = hmac.new(_KEY, password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    if known and _recalled(stored, tag):
        return True
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = _CHECKERS.submit(_scrypt, password, _unb64(salt), int(n), int(r), int(p)).result()
    except (ValueError, TypeError):
        return False
    if not (hmac.compare_digest(actual, _unb64(expected)) and known):
        return False
    with _remembered_lock:
        _remembered[stored] = (tag, time.monotonic() + REMEMBER)
        _remembered.move_to_end(stored)
        while len(_remembered) > REMEMBERED_MAX:
            _remembered.popitem(last=False)
    return True


def _recalled(stored: str, tag: bytes) -> bool:
    """Whether this very password passed against `stored` less than `REMEMBER` seconds ago."""
    with _remembered_lock:
        seen = _remembered.get(stored)
        if seen is None or seen[1] < time.monotonic():
            return False
        _remembered.move_to_end(stored)
        return hmac.compare_digest(seen[0], tag)
