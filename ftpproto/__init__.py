"""sockftp wire protocol, version 1: shared by the server and the client.

This package imports nothing of ours. See docs/protocol.md.
"""

from .errors import *  # noqa: F403
from .errors import __all__ as _error_names
from .framing import MAX_FRAME, FrameDecoder, encode_frame
from .messages import OPS, PROTOCOL_VERSION, validate_md5, validate_request
from .paths import join_path, split_path
from .stream import FrameStream, PeerClosedError, ShortReadError

__all__ = [
    *_error_names,
    "MAX_FRAME",
    "FrameDecoder",
    "encode_frame",
    "OPS",
    "PROTOCOL_VERSION",
    "validate_md5",
    "validate_request",
    "join_path",
    "split_path",
    "FrameStream",
    "PeerClosedError",
    "ShortReadError",
]
