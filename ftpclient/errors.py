"""The client's own exceptions, and `CLIENT_ERRORS`: the one tuple a caller catches.

    try:
        client.get("/report.pdf", "report.pdf")
    except CLIENT_ERRORS as exc:
        print("not fetched:", exc)

`Client`, `Batch`, the planning functions and `Connection` raise one of these
when the server, the network or the local disk says no: a
`ftpproto.ProtocolError` (one subclass per error code on the wire, and
`ProtocolMismatchError` for a peer that breaks the protocol) or an `OSError`
(`HandshakeError` and `ConnectFailedError` are `ConnectionError`s). Anything
else escaping them is a bug, and is left to show its traceback.
"""

from __future__ import annotations

from ftpproto import ProtocolError

__all__ = ["CLIENT_ERRORS", "ConnectFailedError", "OutputClosedError", "UsageError"]

CLIENT_ERRORS: tuple[type[Exception], ...] = (ProtocolError, OSError)


class ConnectFailedError(ConnectionError):
    """No connection to the server could be made: nothing more can succeed in this run."""


class UsageError(Exception):
    """A mistake in what the user typed: exit status 2 on the command line, one error line in the shell."""


class OutputClosedError(Exception):
    """Nobody reads stdout any more (`ftpclient ls | head -1`): the run stops quietly,
    with the status of a process ended by SIGPIPE. Not one of `CLIENT_ERRORS`, so that
    no per-file error handler takes it for a failed file."""
