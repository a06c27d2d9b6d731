"""sockftp client: the `Client` library and the `ftpclient` command (see README.md).

Catch `CLIENT_ERRORS` around calls into the library: every failure the server,
the network or the disk can cause is one of them (see `ftpclient.errors`).
"""

from ftpproto import ProtocolMismatchError

from .client import Client, Entry, HandshakeError, Transfer, md5_file
from .errors import CLIENT_ERRORS, ConnectFailedError

__all__ = [
    "CLIENT_ERRORS",
    "Client",
    "ConnectFailedError",
    "Entry",
    "HandshakeError",
    "ProtocolMismatchError",
    "Transfer",
    "md5_file",
]
