"""Pure checks and normalisation of virtual paths; never touches the disk.

A virtual path is what a client names: POSIX style, relative to the user's
home, `/` or empty for the home itself. `split_path()` resolves `.` and `..`
and returns the parts below the home, or raises: a path that climbs above the
home at any point is `forbidden` (never clamped), a malformed one is
`bad_request`. Symlinks are the storage layer's business, not this module's.
"""

from __future__ import annotations

import re

from .errors import BadRequestError, ForbiddenError

__all__ = ["MAX_NAME_BYTES", "MAX_PATH_BYTES", "RESERVED_PREFIX", "join_path", "split_path"]

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
# Names the server keeps for itself (partial uploads, metadata); clients may not use them.
RESERVED_PREFIX = ".sockftp"
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def split_path(path: str) -> tuple[str, ...]:
    """Return the parts of `path` below the home, `()` for the home itself."""
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise BadRequestError(f"path is longer than {MAX_PATH_BYTES} bytes")
    if _FORBIDDEN_CHARS.search(path):
        raise BadRequestError("path contains a control character or a backslash")
    parts: list[str] = []
    for name in path.split("/"):
        if name in ("", "."):
            continue
        if name == "..":
            if not parts:
                raise ForbiddenError("path climbs above the home directory")
            parts.pop()
            continue
        try:
            encoded = name.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequestError("path is not valid Unicode") from None
        if len(encoded) > MAX_NAME_BYTES:
            raise BadRequestError(f"a name in the path is longer than {MAX_NAME_BYTES} bytes")
        if name.startswith(RESERVED_PREFIX):
            raise ForbiddenError(f"names starting with {RESERVED_PREFIX!r} are reserved")
        parts.append(name)
    return tuple(parts)


def join_path(parts: tuple[str, ...] | list[str]) -> str:
    """Return the canonical virtual path for `parts`: `/a/b`, or `/` for the home."""
    return "/" + "/".join(parts)
