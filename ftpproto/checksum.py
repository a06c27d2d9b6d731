"""MD5 of a file, as the protocol announces it: one helper for both sides."""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

__all__ = ["HASH_CHUNK", "md5_of"]

HASH_CHUNK = 1024 * 1024


def md5_of(file: BinaryIO, limit: int | None = None) -> hashlib._Hash:
    """Hash the open binary `file` from its start, up to `limit` bytes; return the hash object.

    Reads into one reused buffer, so memory stays flat whatever the size.
    """
    digest = hashlib.md5()
    size = os.fstat(file.fileno()).st_size if limit is None else limit
    if size <= 0:
        return digest
    buffer = bytearray(min(HASH_CHUNK, size))  # small files do not pay for a 1 MiB buffer
    view = memoryview(buffer)
    remaining = limit
    file.seek(0)
    while remaining is None or remaining > 0:
        want = len(buffer) if remaining is None else min(len(buffer), remaining)
        count = file.readinto(view[:want])
        if not count:
            break
        digest.update(view[:count])
        if remaining is not None:
            remaining -= count
    return digest
