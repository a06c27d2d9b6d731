"""An independent client for the file-transfer wire protocol, version 1.

This module is written from ``PROTOCOL.md`` (the contract) alone, on purpose: it
neither reads nor imports the project's own ``ftpproto``, ``ftpserver`` or
``ftpclient`` packages, so that tests built on it check the server against the
contract rather than against code it shares with itself. It uses only the Python
standard library.

Besides speaking the protocol, the client checks every rule the contract states
about what a server sends: frame lengths, that frames are UTF-8 JSON objects, the
greeting, the shape of success and error responses, that ``get`` echoes the
offset and that the md5 of the whole file matches, that a ``put`` result repeats
the size and md5 that were sent, and so on. A broken rule raises
:class:`ProtocolViolation`; an error response raises :class:`ServerError`, which
carries the error code.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
from dataclasses import dataclass
from typing import Any

HEADER = struct.Struct("!I")
MAX_FRAME = 1_048_576
PROTOCOL_VERSION = 1
MAX_LS_ENTRIES = 1000
DEFAULT_TIMEOUT = 10.0
MAX_LS_PAGES = 100_000
_RECV_CHUNK = 1 << 16

ERROR_CODES = frozenset(
    {
        "bad_request",
        "frame_too_large",
        "unknown_op",
        "auth_required",
        "auth_failed",
        "forbidden",
        "not_found",
        "exists",
        "is_a_directory",
        "not_a_directory",
        "not_empty",
        "quota_exceeded",
        "too_large",
        "checksum_mismatch",
        "busy",
        "timeout",
        "internal",
    }
)

_MD5_HEX = re.compile(r"[0-9a-f]{32}")
_SERVER_NAME = re.compile(r"[^/\s]+/\S+")

Message = dict[str, Any]


class ProtocolViolation(Exception):
    """The server sent something PROTOCOL.md does not allow."""


class ChecksumError(ProtocolViolation):
    """A downloaded file does not match the md5 the server announced for it."""


class ConnectionClosed(ConnectionError):
    """The server closed the connection before sending all the bytes expected."""


class ServerError(Exception):
    """An error response ``{"ok": false, "error": code, "message": ...}``."""

    def __init__(self, response: Message) -> None:
        self.code: str = response["error"]
        self.message: str = response["message"]
        self.response = response
        super().__init__(f"{self.code}: {self.message}")


@dataclass(frozen=True)
class Download:
    """The outcome of a ``get``: the header's fields and, unless cancelled, the whole file."""

    size: int
    md5: str
    offset: int
    data: bytes | None


@dataclass(frozen=True)
class Upload:
    """The outcome of a ``put``: the offset the server resumed from and the final result."""

    offset: int
    size: int
    md5: str


def md5_hex(data: bytes) -> str:
    """Return the lowercase hex md5 of ``data``."""
    return hashlib.md5(data).hexdigest()


def pack_frame(body: bytes) -> bytes:
    """Prefix ``body`` with its ``!I`` length, without checking it (tests use this for bad frames)."""
    return HEADER.pack(len(body)) + body


def encode_frame(message: Message) -> bytes:
    """Encode one control message as a frame: ``!I`` length, then UTF-8 JSON."""
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if not 1 <= len(body) <= MAX_FRAME:
        raise ValueError(f"a frame body must be 1..{MAX_FRAME} bytes, not {len(body)}")
    return pack_frame(body)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_body(body: bytes) -> Message:
    """Decode a frame body, which must be strict UTF-8 JSON whose top level is an object."""
    try:
        message = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ProtocolViolation(f"frame body is not UTF-8 JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolViolation(f"frame body is not a JSON object: {message!r}")
    return message


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise ProtocolViolation(problem)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _field(message: Message, key: str, kind: type | tuple[type, ...]) -> Any:
    """Return ``message[key]``, which must be present and of JSON type ``kind`` (bool is not int)."""
    _require(key in message, f"response lacks {key!r}: {message!r}")
    value = message[key]
    ok = _is_int(value) if kind is int else isinstance(value, kind)
    _require(ok, f"{key!r} has the wrong type in {message!r}")
    return value


def _size_field(message: Message, key: str) -> int:
    value: int = _field(message, key, int)
    _require(value >= 0, f"{key!r} is negative in {message!r}")
    return value


def _md5_field(message: Message) -> str:
    value: str = _field(message, "md5", str)
    _require(_MD5_HEX.fullmatch(value.lower()) is not None, f"'md5' is not 32 hex digits: {value!r}")
    return value.lower()


def check_response(message: Message) -> Message:
    """Check the shape every response shares and return it; error responses are returned too."""
    _require(isinstance(message.get("ok"), bool), f"response lacks a boolean 'ok': {message!r}")
    if message["ok"]:
        return message
    code = _field(message, "error", str)
    text = _field(message, "message", str)
    _require(code in ERROR_CODES, f"unknown error code {code!r}")
    _require(bool(text.strip()) and "\n" not in text, f"message is not one sentence: {text!r}")
    _require("Traceback" not in text, f"error message carries a traceback: {text!r}")
    return message


def raise_for_error(message: Message) -> Message:
    """Return a success response; raise :class:`ServerError` for an error response."""
    if not check_response(message)["ok"]:
        raise ServerError(message)
    return message


def check_node(node: Message) -> Message:
    """Check the ``name``, ``type``, ``size`` and ``mtime`` fields of an ``ls`` entry or ``stat``."""
    _field(node, "name", str)
    _require(node.get("type") in ("file", "dir"), f"'type' is not file or dir: {node!r}")
    _size_field(node, "size")
    _require(_is_number(node.get("mtime")), f"'mtime' is not a number: {node!r}")
    return node


class RawClient:
    """One connection to a server. Methods map one-to-one onto the protocol's exchanges."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.greeting: Message = {}
        self._buffer = bytearray()

    @classmethod
    def connect(
        cls, host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT, greet: bool = True
    ) -> RawClient:
        """Connect and, unless ``greet`` is false, read and check the greeting."""
        client = cls(socket.create_connection((host, port), timeout=timeout))
        if greet:
            try:
                client.read_greeting()
            except BaseException:
                client.close()
                raise
        return client

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- bytes and frames -------------------------------------------------

    def recv_exact(self, count: int) -> bytes:
        """Read exactly ``count`` bytes; a short read raises :class:`ConnectionClosed`."""
        while len(self._buffer) < count:
            chunk = self.sock.recv(max(_RECV_CHUNK, count - len(self._buffer)))
            if not chunk:
                raise ConnectionClosed(f"connection closed after {len(self._buffer)} of {count} bytes")
            self._buffer += chunk
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def recv_frame(self) -> Message:
        """Read one frame and return its JSON object."""
        (length,) = HEADER.unpack(self.recv_exact(HEADER.size))
        _require(1 <= length <= MAX_FRAME, f"frame length {length} is outside 1..{MAX_FRAME}")
        return decode_body(self.recv_exact(length))

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (a data phase, or deliberately malformed frames)."""
        self.sock.sendall(data)

    def send(self, *messages: Message) -> None:
        """Send one or more control messages in a single ``sendall``."""
        self.send_raw(b"".join(encode_frame(message) for message in messages))

    def read_response(self) -> Message:
        """Read one response frame and check its shape; error responses are returned, not raised."""
        return check_response(self.recv_frame())

    def request(self, message: Message) -> Message:
        """Send a request, read its single response and raise :class:`ServerError` if it failed."""
        self.send(message)
        return raise_for_error(self.read_response())

    def expect_closed(self) -> None:
        """Check that the server closes the connection without sending anything more."""
        _require(not self._buffer, f"unexpected bytes before close: {bytes(self._buffer[:64])!r}")
        try:
            chunk = self.sock.recv(1)
        except ConnectionResetError:
            return
        _require(not chunk, f"expected the server to close the connection, got {chunk!r}")

    # -- session ----------------------------------------------------------

    def read_greeting(self) -> Message:
        """Read the greeting; a ``busy`` (or other error) frame raises :class:`ServerError`."""
        greeting = self.recv_frame()
        if "ok" in greeting:
            raise_for_error(greeting)
            raise ProtocolViolation(f"the greeting is not a hello: {greeting!r}")
        _require(greeting.get("type") == "hello", f"greeting type is not 'hello': {greeting!r}")
        proto = greeting.get("proto")
        _require(_is_int(proto) and proto == PROTOCOL_VERSION, f"greeting proto is not 1: {greeting!r}")
        server = _field(greeting, "server", str)
        _require(_SERVER_NAME.fullmatch(server) is not None, f"'server' is not name/version: {server!r}")
        _require(greeting.get("auth") in ("required", "optional"), f"bad 'auth' in {greeting!r}")
        self.greeting = greeting
        return greeting

    def login(self, user: str, password: str) -> Message:
        """Log in; the response names the user and its permissions."""
        response = self.request({"op": "login", "user": user, "password": password})
        _require(response.get("user") == user, f"login response names another user: {response!r}")
        _require(response.get("permissions") in ("r", "rw"), f"bad 'permissions' in {response!r}")
        return response

    def quit(self) -> None:
        """Say goodbye: the server answers ok, then closes the connection."""
        self.request({"op": "quit"})
        self.expect_closed()

    # -- reading ----------------------------------------------------------

    def read_ls_pages(self) -> list[Message]:
        """Read ``ls`` frames until one says ``"more": false``; return them all, checked."""
        pages: list[Message] = []
        for _ in range(MAX_LS_PAGES):
            page = raise_for_error(self.read_response())
            path = _field(page, "path", str)
            _require(not pages or path == pages[0]["path"], f"ls pages name different paths: {path!r}")
            entries = _field(page, "entries", list)
            _require(len(entries) <= MAX_LS_ENTRIES, f"ls frame has {len(entries)} entries")
            for entry in entries:
                _require(isinstance(entry, dict), f"ls entry is not an object: {entry!r}")
                check_node(entry)
            pages.append(page)
            if not _field(page, "more", bool):
                return pages
        raise ProtocolViolation(f"ls did not end after {MAX_LS_PAGES} frames")

    def ls_pages(self, path: str | None = None) -> list[Message]:
        """List ``path`` (the home when ``None``: the field is then omitted) and return every frame."""
        self.send({"op": "ls"} if path is None else {"op": "ls", "path": path})
        return self.read_ls_pages()

    def ls(self, path: str | None = None) -> list[Message]:
        """List ``path`` and return all entries of all frames."""
        return [entry for page in self.ls_pages(path) for entry in page["entries"]]

    def stat(self, path: str) -> Message:
        """Describe one file or directory; files carry the md5 of their content."""
        node = check_node(self.request({"op": "stat", "path": path}))
        if node["type"] == "file":
            node["md5"] = _md5_field(node)
        else:
            _require(node.get("md5") is None, f"a directory has an md5: {node!r}")
        return node

    def get(self, path: str, held: bytes | None = None, *, cancel: bool = False) -> Download:
        """Download ``path``. ``held`` is the start of the file already held (its length is
        sent as ``offset``; ``None`` omits the field). With ``cancel`` the header is read and
        the transfer cancelled."""
        request: Message = {"op": "get", "path": path}
        if held is not None:
            request["offset"] = len(held)
        self.send(request)
        return self.receive_get(self.read_response(), held or b"", cancel=cancel)

    def receive_get(self, header: Message, held: bytes, *, cancel: bool = False) -> Download:
        """Finish a ``get`` given its header: ack (or cancel), read ``S - K`` bytes, verify md5."""
        raise_for_error(header)
        size = _size_field(header, "size")
        md5 = _md5_field(header)
        offset = _size_field(header, "offset")
        _require(offset == len(held), f"get header offset {offset} does not echo {len(held)}")
        _require(offset <= size, f"get accepted offset {offset} beyond size {size}")
        if cancel:
            self.send({"op": "cancel"})
            return Download(size, md5, offset, None)
        self.send({"op": "ack"})
        data = held + self.recv_exact(size - offset)
        if md5_hex(data) != md5:
            raise ChecksumError(f"md5 of the downloaded file is {md5_hex(data)}, header said {md5}")
        return Download(size, md5, offset, data)

    # -- writing ----------------------------------------------------------

    def put_start(
        self,
        path: str,
        size: int,
        md5: str,
        *,
        overwrite: bool | None = None,
        parents: bool | None = None,
    ) -> int:
        """Send a ``put`` header and return the offset ``K`` from the server's ack.
        ``None`` options are omitted so that the server's defaults apply."""
        request: Message = {"op": "put", "path": path, "size": size, "md5": md5}
        if overwrite is not None:
            request["overwrite"] = overwrite
        if parents is not None:
            request["parents"] = parents
        ack = self.request(request)
        offset = _size_field(ack, "offset")
        _require(offset <= size, f"put ack offset {offset} is beyond size {size}")
        return offset

    def put_finish(self, size: int, md5: str) -> Message:
        """Read the final ``put`` result; it must repeat the size and md5 that were sent."""
        result = raise_for_error(self.read_response())
        _require(_size_field(result, "size") == size, f"put result size differs: {result!r}")
        _require(_md5_field(result) == md5.lower(), f"put result md5 differs: {result!r}")
        return result

    def put(
        self,
        path: str,
        data: bytes,
        *,
        overwrite: bool | None = None,
        parents: bool | None = None,
        declared_md5: str | None = None,
    ) -> Upload:
        """Upload ``data`` to ``path``, resuming from the server's offset. ``declared_md5``
        announces another md5 than the data's (to provoke ``checksum_mismatch``)."""
        md5 = declared_md5 or md5_hex(data)
        offset = self.put_start(path, len(data), md5, overwrite=overwrite, parents=parents)
        self.send_raw(data[offset:])
        self.put_finish(len(data), md5)
        return Upload(offset, len(data), md5)

    def mkdir(self, path: str, *, parents: bool | None = None) -> None:
        """Create a directory (``parents`` omitted when ``None``)."""
        request: Message = {"op": "mkdir", "path": path}
        if parents is not None:
            request["parents"] = parents
        self.request(request)

    def rm(self, path: str) -> None:
        """Remove a file or an empty directory."""
        self.request({"op": "rm", "path": path})
