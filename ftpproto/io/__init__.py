"""The I/O layer of the protocol, beside the pure core: the socket adapter, the
MD5 of files and transfers, pacing, and early writeback of received files."""

from .hashing import BackgroundMD5, md5_of, new_md5
from .pacing import RateLimiter
from .stream import BUFFER_SIZE, SENDFILE_CHUNK, FrameStream, PeerClosedError, ShortReadError, refuse
from .writeback import Writeback

__all__ = [
    "BUFFER_SIZE",
    "SENDFILE_CHUNK",
    "BackgroundMD5",
    "FrameStream",
    "PeerClosedError",
    "RateLimiter",
    "ShortReadError",
    "Writeback",
    "md5_of",
    "new_md5",
    "refuse",
]
