"""An MD5 whose running state can be saved and picked up again, by another process.

An upload to an object store may break off on one server and resume on
another, which never saw the first bytes: it can only check the whole file's
MD5 if the first server left the hash's running state beside the parts it
stored. `hashlib` cannot export that state, so this module drives OpenSSL's
own MD5 (the library `hashlib` itself uses) through `ctypes`: its `MD5_CTX`
is a plain, documented structure (openssl/md5.h), saved and restored whole.

`ResumableMD5.available` is False where no libcrypto with the MD5 functions
can be loaded: the hash then works on hashlib, `save()` raises, and callers
do without resuming from another session's bytes.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib

__all__ = ["ResumableMD5"]


class _MD5Context(ctypes.Structure):
    """`MD5_CTX` of openssl/md5.h: the four chaining words, the bit count, the
    pending block and how much of it is filled."""

    _fields_ = [
        ("A", ctypes.c_uint32),
        ("B", ctypes.c_uint32),
        ("C", ctypes.c_uint32),
        ("D", ctypes.c_uint32),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint32 * 16),
        ("num", ctypes.c_uint),
    ]


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        library = ctypes.CDLL(name)
        functions = library.MD5_Init, library.MD5_Update, library.MD5_Final
    except (OSError, AttributeError):
        return None
    for function in functions:
        function.restype = ctypes.c_int
    library.MD5_Update.argtypes = [ctypes.POINTER(_MD5Context), ctypes.c_void_p, ctypes.c_size_t]
    library.MD5_Final.argtypes = [ctypes.c_char_p, ctypes.POINTER(_MD5Context)]
    library.MD5_Init.argtypes = [ctypes.POINTER(_MD5Context)]
    return library if _works(library) else None


def _works(library: ctypes.CDLL) -> bool:
    """Whether this library's MD5 gives the known answer (a wrong layout would not)."""
    context = _MD5Context()
    library.MD5_Init(ctypes.byref(context))
    data = b"sockftp" * 20
    library.MD5_Update(ctypes.byref(context), data, len(data))
    out = ctypes.create_string_buffer(16)
    library.MD5_Final(out, ctypes.byref(context))
    return out.raw == hashlib.md5(data).digest()


_LIBRARY = _load()


class ResumableMD5:
    """An MD5 fed like hashlib's, whose state `save()` turns into a short string and
    `restore()` turns back into a hash that goes on from there."""

    available = _LIBRARY is not None

    def __init__(self) -> None:
        self._library = _LIBRARY
        self._context = _MD5Context()
        self._fallback = hashlib.md5() if self._library is None else None
        self._count = 0  # bytes hashed by the fallback
        if self._library is not None:
            self._library.MD5_Init(ctypes.byref(self._context))

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Hash `data`; the GIL is released meanwhile (ctypes does so for every call)."""
        view = memoryview(data).cast("B")
        if not view:
            return
        if self._fallback is not None:
            self._fallback.update(view)
            self._count += len(view)
            return
        assert self._library is not None
        if view.readonly:  # bytes are passed as they are; other read-only buffers copied
            buffer = ctypes.c_char_p(data if isinstance(data, bytes) else bytes(view))
            self._library.MD5_Update(ctypes.byref(self._context), buffer, len(view))
            return
        array = (ctypes.c_char * len(view)).from_buffer(view)
        self._library.MD5_Update(ctypes.byref(self._context), ctypes.addressof(array), len(view))

    def save(self) -> str:
        """The running state, as ASCII (it fits an object's metadata)."""
        if self._library is None:
            raise RuntimeError("no libcrypto with MD5_Init: an MD5 state cannot be saved here")
        return base64.b64encode(bytes(self._context)).decode("ascii")

    @classmethod
    def restore(cls, state: str) -> ResumableMD5:
        """A hash that goes on from a `save()`d state; ValueError if it is not one."""
        if _LIBRARY is None:
            raise ValueError("no libcrypto with MD5_Init: an MD5 state cannot be restored here")
        raw = base64.b64decode(state.encode("ascii"), validate=True)
        if len(raw) != ctypes.sizeof(_MD5Context):
            raise ValueError("not a saved MD5 state")
        md5 = cls()
        ctypes.memmove(ctypes.byref(md5._context), raw, len(raw))
        if md5._context.num >= 64:
            raise ValueError("not a saved MD5 state")
        return md5

    def copy(self) -> ResumableMD5:
        twin = ResumableMD5()
        if self._fallback is not None:
            twin._fallback, twin._count = self._fallback.copy(), self._count
            return twin
        ctypes.memmove(ctypes.byref(twin._context), ctypes.byref(self._context), ctypes.sizeof(_MD5Context))
        return twin

    @property
    def length(self) -> int:
        """How many bytes were hashed."""
        if self._fallback is not None:
            return self._count
        return ((self._context.Nh << 32) | self._context.Nl) // 8

    def hexdigest(self) -> str:
        """The digest of everything hashed so far; the hash itself can go on."""
        if self._fallback is not None:
            return self._fallback.hexdigest()
        assert self._library is not None
        final = self.copy()
        out = ctypes.create_string_buffer(16)
        self._library.MD5_Final(out, ctypes.byref(final._context))
        return out.raw.hex()
