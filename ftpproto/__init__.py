"""sockftp wire protocol, version 1: shared by the server and the client.

The package itself is the pure core: errors, framing, the op table, paths,
sizes and the connection state machine. It does no I/O and imports nothing
of ours; `ftpproto.io` beside it holds what touches sockets, files, threads
and clocks. See docs/protocol.md.
"""

from .errors import *  # noqa: F403
from .errors import __all__ as _error_names
from .framing import MAX_FRAME, FrameDecoder, encode_frame
from .messages import FEATURES, OPS, PROTOCOL_VERSION, validate_md5, validate_request
from .paths import join_path, split_path
from .states import Conversation, Event, Role, State, StateError

__all__ = [
    *_error_names,
    "MAX_FRAME",
    "FrameDecoder",
    "encode_frame",
    "FEATURES",
    "OPS",
    "PROTOCOL_VERSION",
    "validate_md5",
    "validate_request",
    "join_path",
    "split_path",
    "Conversation",
    "Event",
    "Role",
    "State",
    "StateError",
]
