"""sockftp client: the `Client` library and the `ftpclient` command (see README.md)."""

from ftpproto import ProtocolMismatchError

from .client import Client, Entry, HandshakeError, Transfer, md5_file

__all__ = ["Client", "Entry", "HandshakeError", "ProtocolMismatchError", "Transfer", "md5_file"]
