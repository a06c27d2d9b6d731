"""Error codes of protocol v1 as one exception hierarchy.

Every error the protocol can put on the wire is a subclass of `ProtocolError`
carrying its `code`. The server raises them and turns them into error frames;
the client turns error frames back into the same classes with
`error_from_response()`, so both sides speak of one error the same way.
"""

from __future__ import annotations

__all__ = [
    "ERRORS_BY_CODE",
    "AuthFailedError",
    "AuthRequiredError",
    "BadRequestError",
    "BusyError",
    "ChecksumMismatchError",
    "ExistsError",
    "ForbiddenError",
    "FrameTooLargeError",
    "InternalError",
    "IsDirectoryError",
    "NotDirectoryError",
    "NotEmptyError",
    "NotFoundError",
    "ProtocolError",
    "ProtocolMismatchError",
    "QuotaExceededError",
    "TimedOutError",
    "TooLargeError",
    "UnknownOpError",
    "UnsupportedError",
    "error_from_response",
]


class ProtocolError(Exception):
    """An error with a protocol error code.

    `closes` is true when the connection cannot be used after it: a broken
    frame, `busy` and `timeout` (docs/protocol.md section 11).
    """

    code = "internal"
    closes_by_default = False

    def __init__(self, message: str, *, closes: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.closes = self.closes_by_default if closes is None else closes

    def to_response(self) -> dict:
        return {"ok": False, "error": self.code, "message": self.message}


class BadRequestError(ProtocolError):
    code = "bad_request"


class FrameTooLargeError(ProtocolError):
    code = "frame_too_large"
    closes_by_default = True


class UnknownOpError(ProtocolError):
    code = "unknown_op"


class AuthRequiredError(ProtocolError):
    code = "auth_required"


class AuthFailedError(ProtocolError):
    code = "auth_failed"


class ForbiddenError(ProtocolError):
    code = "forbidden"


class NotFoundError(ProtocolError):
    code = "not_found"


class ExistsError(ProtocolError):
    code = "exists"


class IsDirectoryError(ProtocolError):
    code = "is_a_directory"


class NotDirectoryError(ProtocolError):
    code = "not_a_directory"


class NotEmptyError(ProtocolError):
    code = "not_empty"


class QuotaExceededError(ProtocolError):
    code = "quota_exceeded"


class TooLargeError(ProtocolError):
    code = "too_large"


class ChecksumMismatchError(ProtocolError):
    code = "checksum_mismatch"


class BusyError(ProtocolError):
    code = "busy"
    closes_by_default = True


class TimedOutError(ProtocolError):
    code = "timeout"
    closes_by_default = True


class InternalError(ProtocolError):
    code = "internal"


class UnsupportedError(UnknownOpError):
    """The server's greeting does not offer the extension a call needs: raised by a
    client before it sends anything, with the code a server without it would answer."""


class ProtocolMismatchError(ProtocolError):
    """The peer does not speak this protocol, or broke it: the connection is done.
    Raised by a side about its peer; never put on the wire by its own code."""

    code = "bad_request"
    closes_by_default = True


ERRORS_BY_CODE: dict[str, type[ProtocolError]] = {
    cls.code: cls
    for cls in (
        BadRequestError,
        FrameTooLargeError,
        UnknownOpError,
        AuthRequiredError,
        AuthFailedError,
        ForbiddenError,
        NotFoundError,
        ExistsError,
        IsDirectoryError,
        NotDirectoryError,
        NotEmptyError,
        QuotaExceededError,
        TooLargeError,
        ChecksumMismatchError,
        BusyError,
        TimedOutError,
        InternalError,
    )
}


def error_from_response(response: dict) -> ProtocolError:
    """Build the exception an `{"ok": false, ...}` frame stands for.

    An unknown code (a newer server) becomes a plain `ProtocolError` that
    still carries the code it was sent.
    """
    code = response.get("error")
    message = response.get("message")
    if not isinstance(message, str) or not message:
        message = "the server gave no message"
    cls = ERRORS_BY_CODE.get(code) if isinstance(code, str) else None
    if cls is not None:
        return cls(message)
    error = ProtocolError(message)
    error.code = code if isinstance(code, str) else "internal"
    return error
