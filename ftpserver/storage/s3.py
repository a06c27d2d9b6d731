"""The s3 backend: homes are key prefixes in one bucket of an S3-compatible store.

Several servers may serve the same bucket: everything a session leaves for
another one lives in the store, never in one server's memory or disk.

Layout below the configured `prefix` (keys are the virtual paths, so other S3
tools see the files under their names):

- `alice/docs/report.pdf`: a file, with its `md5` (and, from the attributes
  extension, `mtime` in nanoseconds and `mode`) in the object's metadata, so
  a `get` never hashes it again.
- `alice/docs/`: an empty object marking a directory (the S3 console does the
  same); a directory also exists while any key lies below it.
- `alice/docs/.sockftp.part.<32 hex>`: the state of an interrupted or running
  upload, named like the local backend's partial file after the name, size
  and MD5. It holds the multipart upload's id, the ETags of the parts stored
  so far, the MD5's running state after them (md5state.py) and, in its body,
  the bytes received after the last whole part (the "tail", less than a part),
  which S3 cannot keep as a part on its own. It is rewritten after each part.
- `.sockftp/index/<home>/<md5>.<size>`: the key of a file of each home with
  that content, for instant uploads (checked before use: an entry may be stale).

An upload is atomic: the object appears only when `CompleteMultipartUpload`
(or, for a file that fits one part, `PutObject`) succeeds, which happens after
the whole file's MD5 matched; every part goes with its Content-MD5, so the
store checks each part too. Any server finds an interrupted upload's state by
its key, checks the parts against `ListParts`, and goes on from there.

Quotas use the local backend's `Usage`, kept exact for this server's own
changes and recounted from the store every `usage_refresh` seconds, so the
changes of other servers show within that time (docs/scale-out.md).
"""

from __future__ import annotations

import base64
import builtins
import configparser
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import queue
import re
import stat as stat_mod
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftpproto import (
    BadRequestError,
    ChecksumMismatchError,
    ExistsError,
    ForbiddenError,
    InternalError,
    IsDirectoryError,
    NotDirectoryError,
    NotEmptyError,
    NotFoundError,
    ProtocolError,
    QuotaExceededError,
    TooLargeError,
    join_path,
    split_path,
)
from ftpproto.messages import validate_md5
from ftpproto.paths import RESERVED_PREFIX

from ..config import Account, ConfigError, S3Settings
from .base import Snapshot, Upload, entry
from .jail import MAX_DEPTH
from .md5state import ResumableMD5
from .usage import Reservation, Usage

try:
    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:  # only the s3 backend needs it: open_s3_storage() says how to get it
    boto3 = None

    class BotoCoreError(Exception):  # type: ignore[no-redef]
        pass

    class ClientError(Exception):  # type: ignore[no-redef]
        response: dict = {}


__all__ = ["S3Storage", "S3Upload", "open_s3_storage"]

log = logging.getLogger("ftpserver.storage.s3")

PARTIAL_PREFIX = RESERVED_PREFIX + ".part."
METADATA_DIR = RESERVED_PREFIX  # at the top of the prefix: the instant-upload index
CLAIM_WAIT = 5.0  # seconds a put waits for another session of this server to let go of its upload
MAX_KEY_BYTES = 1024  # S3's limit on a key
MAX_PARTS = 10_000  # S3's limit on the parts of one upload
MAX_COPY = 5 * 1024**3  # CopyObject's limit; bigger objects are copied part by part
DISK_FREE = 5 * 1024**4  # `disk_free`: an object store has no free space to report, only its largest object
WORKERS = 32  # threads for part uploads, copies and the HEADs of a listing, shared by all sessions
READ_BUFFER = 1024 * 1024
DIR_MEMORY = 2.0  # seconds a directory seen or made here counts as there, for the parent checks of writes
LAST_CHAR = "\U0010ffff"  # sorts after every character of a key: "d/" + LAST_CHAR is past all of d/
STATE_VERSION = 1

Home = tuple[str, ...]
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MISSING = ("404", "NoSuchKey", "NotFound")
_CODES: dict[str, tuple[type[ProtocolError], str]] = {
    **dict.fromkeys(_MISSING, (NotFoundError, "no such file or directory")),
    "AccessDenied": (ForbiddenError, "refused by the object store"),
    "KeyTooLongError": (ForbiddenError, "too long for the object store"),
    "EntityTooLarge": (TooLargeError, "the file is larger than the object store takes"),
    "PreconditionFailed": (ExistsError, "already exists"),
    "BadDigest": (InternalError, "damaged on the way to the object store"),
    "ExistingObjectIsFile": (NotDirectoryError, "a component of the path is not a directory"),  # SeaweedFS
}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _short(path: str) -> str:
    """A path as messages and log lines show it: shortened, and without control characters."""
    path = _UNPRINTABLE.sub("?", path)
    return path if len(path) <= 200 else f"{path[:100]}...{path[-60:]}"


@contextlib.contextmanager
def store_errors(path: str) -> Iterator[None]:
    """Turn what boto3 raises into the protocol error it means, naming only the virtual path."""
    try:
        yield
    except ClientError as exc:
        code = _code(exc)
        cls, text = _CODES.get(code, (InternalError, "object store error"))
        if cls is InternalError:
            log.warning("object store error on %s: %s", _short(path), code or exc)
        raise cls(f"{_short(path)}: {text}") from None
    except BotoCoreError as exc:  # no connection, a timeout, a broken response
        log.warning("object store unreachable on %s: %s", _short(path), exc)
        raise InternalError(f"{_short(path)}: the object store is unavailable") from None


def _b64md5(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def _executable(mode: int | None) -> bool:
    return mode is not None and bool(mode & 0o111)


def _file_mode(metadata: dict[str, str]) -> int:
    """The permission bits shown for a file: read-write for the server, and execute
    wherever it reads if the client's file was executable (as the local backend keeps it)."""
    return 0o755 if metadata.get("mode") == "755" else 0o644


def _object_metadata(md5: str, mtime: float | None, mode: int | None) -> dict[str, str]:
    metadata = {"md5": md5}
    if mtime is not None:
        metadata["mtime"] = str(round(mtime * 1e9))
    if mode is not None:
        metadata["mode"] = "755" if _executable(mode) else "644"
    return metadata


def _attributes_match(metadata: dict[str, str], mtime: float | None, mode: int | None) -> bool:
    """Whether an object already has what a put asked for."""
    if mtime is not None and metadata.get("mtime") != str(round(mtime * 1e9)):
        return False
    return mode is None or _file_mode(metadata) == (0o755 if _executable(mode) else 0o644)


def _mtime(head: dict) -> float:
    """A file's modification time: the client's, kept in the metadata, or the store's."""
    try:
        return int(head["Metadata"]["mtime"]) / 1e9
    except (KeyError, ValueError):
        return float(head["LastModified"].timestamp())


def _file_entry(name: str, head: dict, md5: bool = False) -> dict:
    """A file's entry from its HEAD; with `md5`, its MD5 too if the HEAD tells it."""
    mode = stat_mod.S_IFREG | _file_mode(head.get("Metadata", {}))
    one = entry(name, mode, int(head["ContentLength"]), _mtime(head))
    known = _known_md5(head) if md5 else None
    return {**one, "md5": known} if known else one


def _known_md5(head: dict) -> str | None:
    """A file's MD5 as its HEAD tells it, without reading it: from its metadata, or from
    a single-part ETag (which is the MD5 when the store does not encrypt with its own keys)."""
    candidates = [head.get("Metadata", {}).get("md5")]
    if head.get("ServerSideEncryption") != "aws:kms":
        candidates.append(str(head.get("ETag", "")).strip('"'))
    for candidate in candidates:
        try:
            return validate_md5(candidate)  # metadata is anyone's to write: only an MD5 passes
        except BadRequestError:
            continue
    return None


def _parent(parts: Home) -> Home:
    return parts[:-1]


# -- credentials and the client ----------------------------------------------------------


def read_credentials(path: Path, profile: str) -> dict[str, str]:
    """The keys in an AWS-style credentials file (`[profile]` with `aws_access_key_id`,
    `aws_secret_access_key`, optionally `aws_session_token`). Errors name the file,
    the section and the key, never a value."""
    try:
        mode = path.stat().st_mode
        if mode & 0o007:
            raise ConfigError(f"{path}: readable by every local user; make it private (chmod 600)")
        parser = configparser.ConfigParser(interpolation=None)
        with open(path, encoding="utf-8") as file:
            parser.read_file(file)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except (configparser.Error, UnicodeDecodeError):
        raise ConfigError(f"{path}: not a credentials file ([profile] with key = value lines)") from None
    if not parser.has_section(profile):
        raise ConfigError(f"{path}: no [{profile}] section")
    section = parser[profile]
    keys = {}
    for name in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
        value = section.get(name, "").strip()
        if value:
            keys[name] = value
        elif name != "aws_session_token":
            raise ConfigError(f"{path}: [{profile}] has no {name}")
    return keys


_SESSION: list[Any] = []
_SESSION_LOCK = threading.Lock()


def _session() -> Any:
    """One boto3 session per process: it parses the service descriptions (a good part of a
    second) once for every client made from it."""
    with _SESSION_LOCK:
        if not _SESSION:
            _SESSION.append(boto3.session.Session())
        return _SESSION[0]


def make_client(settings: S3Settings) -> Any:
    """A boto3 S3 client for the settings: bounded retries and timeouts, no checksums
    beyond the Content-MD5 we send, and a connection pool for every worker."""
    if boto3 is None:
        raise ConfigError("storage: the s3 backend needs boto3 (pip install 'sockftp[s3]')")
    keys = read_credentials(settings.credentials_file, settings.profile) if settings.credentials_file else {}
    session = _session()
    config = BotoConfig(
        s3={"addressing_style": "path" if settings.endpoint else "auto"},
        retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=WORKERS + 32,
        connect_timeout=10,
        read_timeout=60,
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client(
        "s3",
        **keys,
        endpoint_url=settings.endpoint,
        region_name=settings.region or "us-east-1",
        verify=str(settings.ca_bundle) if settings.ca_bundle else None,
        config=config,
    )


def open_s3_storage(
    settings: S3Settings, root: Path, max_file_size: int | None = None, count_usage_of: Iterable[Path] = ()
) -> S3Storage:
    """The s3 backend for the settings, after checking that the bucket answers."""
    for name in ("boto3", "botocore", "s3transfer", "urllib3"):
        # Their debug lines carry request headers, credentials among them: never below info.
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger(name).level))
    client = make_client(settings)
    try:
        client.head_bucket(Bucket=settings.bucket)
    except ClientError as exc:
        raise ConfigError(f"storage: bucket {settings.bucket!r}: {_code(exc) or exc}") from None
    except BotoCoreError as exc:
        raise ConfigError(f"storage: cannot reach the object store: {exc}") from None
    log.info(
        "s3 storage: bucket %s, prefix %r, endpoint %s",
        settings.bucket,
        settings.prefix,
        settings.endpoint or "AWS",
    )
    return S3Storage(client, settings, root, max_file_size, count_usage_of)


# -- reading -------------------------------------------------------------------------------


class _SeekableRaw(io.RawIOBase):
    """A readable, seekable raw stream of `size` bytes at `position`, for boto3 and io."""

    _position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def _target(self, offset: int, whence: int, size: int) -> int:
        """Where a `seek(offset, whence)` lands in `size` bytes."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: size}[whence]
        return max(0, base + offset)


class ObjectReader(_SeekableRaw):
    """One version of an object, read through ranged GETs pinned to its ETag: a get
    in progress when the file is replaced goes on with the old bytes while the store
    still serves them, and otherwise breaks off (OSError), never mixing the two."""

    def __init__(self, client: Any, bucket: str, key: str, etag: str, size: int) -> None:
        super().__init__()
        self._client, self._bucket, self._key, self._etag, self._size = client, bucket, key, etag, size
        self._position = 0
        self._body: Any = None  # the open response, at self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        position = self._target(offset, whence, self._size)
        if position != self._position:
            self._drop()
            self._position = position
        return position

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._size - self._position)
        if want <= 0:
            return 0
        for attempt in (1, 2):  # a broken stream is opened again once, from where it broke
            try:
                if self._body is None:
                    self._body = self._open()
                data = self._body.read(want)
            except (BotoCoreError, ClientError, OSError, ValueError) as exc:
                self._drop()
                if attempt == 2 or (isinstance(exc, ClientError) and _code(exc) == "PreconditionFailed"):
                    raise OSError(f"reading {self._key} from the object store failed: {exc}") from None
                continue
            if not data:
                self._drop()
                if attempt == 2:
                    raise OSError(f"{self._key} ended early in the object store")
                continue
            count = len(data)
            memoryview(buffer)[:count] = data
            self._position += count
            return count
        return 0

    def _open(self) -> Any:
        answer = self._client.get_object(
            Bucket=self._bucket, Key=self._key, Range=f"bytes={self._position}-", IfMatch=self._etag
        )
        return answer["Body"]

    def _drop(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop()
        super().close()


class BufferBody(_SeekableRaw):
    """Bytes in memory as a file boto3 can send, and seek back to retry, without a copy
    (handed a bytearray, it would copy each part once more)."""

    def __init__(self, data: memoryview) -> None:
        super().__init__()
        self._data, self._position = data, 0

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._position = self._target(offset, whence, len(self._data))
        return self._position

    def readinto(self, buffer: Any) -> int:
        count = max(0, min(len(buffer), len(self._data) - self._position))
        memoryview(buffer)[:count] = self._data[self._position : self._position + count]
        self._position += count
        return count

    def __len__(self) -> int:
        return len(self._data)


# -- the state of a resumable upload ---------------------------------------------------------


@dataclass
class UploadState:
    """What the store keeps of an interrupted upload (see the module's docstring)."""

    key: str  # the upload's destination
    size: int
    md5: str
    part_size: int
    upload_id: str | None = None
    etags: builtins.list[str] = field(default_factory=list)
    md5_state: str = ""  # the whole file's MD5 after the parts in `etags`
    metadata: dict[str, str] = field(default_factory=dict)  # what the multipart upload was created with
    tail: bytes = b""

    @property
    def held(self) -> int:
        return len(self.etags) * self.part_size + len(self.tail)

    def encode(self) -> bytes:
        header = {
            "version": STATE_VERSION,
            "key": self.key,
            "size": self.size,
            "md5": self.md5,
            "part_size": self.part_size,
            "upload_id": self.upload_id,
            "etags": self.etags,
            "md5_state": self.md5_state,
            "metadata": self.metadata,
        }
        return json.dumps(header).encode() + b"\n" + self.tail

    @classmethod
    def decode(cls, body: bytes) -> UploadState | None:
        """The state in an object's body; None for anything else."""
        line, _, tail = body.partition(b"\n")
        try:
            header = json.loads(line)
            if header.get("version") != STATE_VERSION:
                return None
            state = cls(
                key=str(header["key"]),
                size=int(header["size"]),
                md5=str(header["md5"]),
                part_size=int(header["part_size"]),
                upload_id=None if header["upload_id"] is None else str(header["upload_id"]),
                etags=[str(etag) for etag in header["etags"]],
                md5_state=str(header["md5_state"]),
                metadata={str(k): str(v) for k, v in header["metadata"].items()},
                tail=tail,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if state.part_size <= 0 or len(state.tail) >= state.part_size or state.held > state.size:
            return None
        return state


# -- uploads ---------------------------------------------------------------------------------


@dataclass(eq=False)
class S3Upload:
    """One `put` into the s3 backend (see `Upload` in base.py).

    The bytes are received into part-sized buffers. A full buffer goes to the
    upload's pipeline thread, which hashes it (the whole file's MD5, and the part's
    own for its Content-MD5) and hands it to the storage's workers to be sent as a
    part, up to `upload_concurrency` at once; the receiving waits for a free buffer,
    so memory stays at (`upload_concurrency` + 1) parts. The last, partial buffer is
    sent at `finish()`, as the last part or as the whole object.

    `state_key` names the stored state that makes it resumable (None for a private
    upload, which no other session will find); `held` bytes of it were counted in the
    home's usage when the upload began. `source` is an instant upload's object to
    copy; `touch` means the destination holds these bytes already but not these
    attributes; `receiving` that the bytes come through this upload."""

    storage: S3Storage = field(repr=False)
    account: Account = field(repr=False)
    home: Home
    parts: Home  # the destination, below the root
    path: str
    size: int
    md5: str
    overwrite: bool
    offset: int
    mtime: float | None = None
    mode: int | None = None
    state_key: str | None = None
    claim: str | None = None
    held: int = 0
    part_size: int = 0
    upload_id: str | None = None
    created_metadata: dict[str, str] = field(default_factory=dict)  # what the multipart upload got
    source: tuple[str, str] | None = None  # (key, etag) of an instant upload's source
    touch: bool = False
    receiving: bool = False
    reservation: Reservation = field(default_factory=lambda: Reservation(None, (), 0), repr=False)
    error: ProtocolError | None = field(default=None, repr=False)
    whole: ResumableMD5 = field(default_factory=ResumableMD5, repr=False)  # every part handed on
    start_state: str = field(default="", repr=False)  # `whole`'s state when this session began
    first_part: int = 1  # the number of this session's first part
    stored_held: int = 0  # the bytes the stored state describes
    etags: dict[int, str] = field(default_factory=dict, repr=False)
    saved: int = 0  # parts the stored state names
    buffer: bytearray | None = field(default=None, repr=False)  # being filled
    filled: int = 0
    sealed: int = 0  # parts this session handed to the pipeline
    tail: memoryview | None = field(default=None, repr=False)  # the bytes after the parts, once sealed
    ended: bool = False
    _buffers: int = field(default=0, init=False)
    _free: queue.SimpleQueue = field(default_factory=queue.SimpleQueue, init=False, repr=False)
    _queue: queue.SimpleQueue = field(default_factory=queue.SimpleQueue, init=False, repr=False)
    _pipeline: threading.Thread | None = field(default=None, init=False, repr=False)
    _sending: builtins.list[Future] = field(default_factory=list, init=False, repr=False)
    _md5_states: dict[int, str] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _save_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def key(self) -> str:
        return self.storage.key(self.parts)

    @property
    def metadata(self) -> dict[str, str]:
        return _object_metadata(self.md5, self.mtime, self.mode)

    @property
    def _base(self) -> int:
        """Where the buffer being filled starts in the file."""
        return (self.first_part - 1 + self.sealed) * self.part_size

    def start(self, state: UploadState | None) -> None:
        """Set up the receiving: from the stored `state` of an earlier attempt, or afresh."""
        self.receiving = True
        if state is None:
            self.start_state = self.whole.save() if self.state_key is not None else ""
            self.created_metadata = self.metadata
            return
        self.upload_id, self.created_metadata = state.upload_id, state.metadata
        self.etags = dict(enumerate(state.etags, start=1))
        self.saved, self.first_part = len(state.etags), len(state.etags) + 1
        self.whole, self.start_state = ResumableMD5.restore(state.md5_state), state.md5_state
        self.stored_held = self.held = self.offset = state.held
        if state.tail:
            self.buffer = self._current()
            self.buffer[: len(state.tail)] = state.tail
            self.filled = len(state.tail)

    # -- receiving ---------------------------------------------------------------------

    def space(self) -> memoryview | None:
        if not self.receiving or self.ended or self.error is not None:
            return None
        return memoryview(self._current())[self.filled :]

    def write(self, chunk: memoryview) -> None:
        if not self.receiving or self.ended or self.error is not None:
            return
        view = memoryview(chunk)
        if view.obj is self.buffer:  # received into space(): already in place
            self._advance(len(view))
            return
        while view and self.error is None:
            buffer = self._current()
            taken = min(len(buffer) - self.filled, len(view))
            buffer[self.filled : self.filled + taken] = view[:taken]
            view = view[taken:]
            self._advance(taken)

    def _current(self) -> bytearray:
        """The buffer being filled: a free one, a new one, or (all in use) the next to come free."""
        if self.buffer is None:
            try:
                self.buffer = self._free.get_nowait()
            except queue.Empty:
                if self._buffers <= self.storage.settings.upload_concurrency:
                    self.buffer = bytearray(min(self.part_size, max(self.size - self._base, 1)))
                    self._buffers += 1
                else:
                    self.buffer = self._free.get()
        return self.buffer

    def _advance(self, count: int) -> None:
        self.filled += count
        assert self.buffer is not None
        if self.filled == len(self.buffer) and self._base + self.filled < self.size:
            self._seal()

    def _seal(self) -> None:
        """Hand the full buffer to the pipeline as the next part."""
        if self._pipeline is None:
            self._pipeline = threading.Thread(target=self._run_pipeline, name="s3-parts", daemon=True)
            self._pipeline.start()
        self._queue.put((self.first_part + self.sealed, self.buffer))
        self.sealed += 1
        self.buffer, self.filled = None, 0

    def _run_pipeline(self) -> None:
        """Hash each full part in order, then send it through the storage's workers."""
        while (item := self._queue.get()) is not None:
            number, buffer = item
            if self.error is not None:
                self._free.put(buffer)
                continue
            try:
                content_md5 = _b64md5(buffer)
                self.whole.update(buffer)
                if self.state_key is not None:
                    self._md5_states[number] = self.whole.save()
                if self.upload_id is None:
                    self.upload_id = self.storage.create_upload(self)
                self._sending.append(self.storage.pool.submit(self._send_part, number, buffer, content_md5))
            except Exception as exc:  # kept for finish(), never lost with the thread
                self.fail(exc)
                self._free.put(buffer)

    def _send_part(self, number: int, buffer: bytearray, content_md5: str) -> None:
        try:
            etag = self.storage.send_part(self, number, buffer, content_md5)
            with self._lock:
                self.etags[number] = etag
            self._save_progress()
        except Exception as exc:  # kept for finish(), never lost in a future
            self.fail(exc)
        finally:
            self._free.put(buffer)

    def fail(self, exc: Exception) -> None:
        """Keep the first error for finish(); the data phase goes on being drained."""
        if not isinstance(exc, ProtocolError):
            log.error("upload of %s failed", _short(self.path), exc_info=exc)
            exc = InternalError(f"{_short(self.path)}: storage error")
        with self._lock:
            if self.error is None:
                self.error = exc

    def _stored_parts(self) -> int:
        """How many parts from the first are in the store, without a gap."""
        with self._lock:
            count = self.saved
            while count + 1 in self.etags:
                count += 1
            return count

    def _save_progress(self) -> None:
        """Write the state after the parts stored so far, if that says more than the stored
        state: one writer at a time, so what it says only grows."""
        if self.state_key is None:
            return
        with self._save_lock:
            count = self._stored_parts()
            if count > self.saved:
                self._save(count, b"")

    def _save(self, count: int, tail: bytes) -> None:
        """Store the state after `count` parts and `tail` (call with the save lock held)."""
        with self._lock:
            etags = [self.etags[number] for number in range(1, count + 1)]
        md5_state = self._md5_states[count] if count >= self.first_part else self.start_state
        state = UploadState(
            self.key,
            self.size,
            self.md5,
            self.part_size,
            self.upload_id,
            etags,
            md5_state,
            self.created_metadata,
            tail,
        )
        self.storage.save_state(self, state)
        self.saved, self.stored_held = count, state.held
        for number in [n for n in self._md5_states if n < count]:
            del self._md5_states[number]

    def _drain(self) -> None:
        """Let the pipeline send every part handed to it, and wait for all of them."""
        if self._pipeline is not None:
            self._queue.put(None)
            self._pipeline.join()
            self._pipeline = None
        wait_all(self._sending)
        self._sending.clear()

    # -- ending -------------------------------------------------------------------------

    def finish(self) -> None:
        try:
            self.seal()
            self.commit()
        finally:
            self.close()

    def seal(self) -> None:
        """Check what arrived (an error while sending parts, the whole file's MD5) with
        nothing visible yet; on a failure the upload ends, keeping nothing."""
        if not self.receiving or self.tail is not None:
            return
        try:
            self._drain()
            if self.error is not None:
                raise self.error
            tail = memoryview(self.buffer)[: self.filled] if self.buffer is not None else memoryview(b"")
            whole = self.whole.copy()
            whole.update(tail)
            if whole.length != self.size or whole.hexdigest() != self.md5:
                raise ChecksumMismatchError(f"{self.path}: received data does not match the announced md5")
        except BaseException:
            self.storage.discard(self)
            self.close()
            raise
        self.tail = tail

    def commit(self) -> None:
        """Make the sealed upload visible under its name (see `S3Storage.commit_group()`)."""
        if self.source is not None:
            self.storage.publish_copy(self)
        elif self.touch:
            self.storage.touch(self)
        elif self.receiving:
            assert self.tail is not None, "commit() of an upload that was not sealed"
            self.storage.publish(self, self.tail)

    def abort(self) -> int:
        try:
            if self.ended or not self.receiving:
                return 0
            self._drain()
            if self.state_key is None:  # private: never resumed
                self.storage.discard(self)
                return 0
            return self._keep_for_resume()
        finally:
            self.close()

    def _keep_for_resume(self) -> int:
        """An interrupted upload keeps what the store holds of it for a resume (its parts,
        and the bytes after them in its state), unless that would put the home over its
        quota: then it all goes, and the next put starts afresh."""
        count = self._stored_parts()
        tail = b""
        if count == self.first_part - 1 + self.sealed and self.buffer is not None:
            tail = bytes(memoryview(self.buffer)[: self.filled])  # every part before it is stored
        now = count * self.part_size + len(tail)
        if now == 0:
            self.storage.discard(self)
            return 0
        usage = self.storage.usage
        with usage.lock:  # its own reservation gives way to the bytes it keeps
            keep = usage.fits(self.home, self.account.quota, now - self.held - self.reservation.amount)
            if keep:
                usage.add(_parent(self.parts), now - self.held)
                self.held = now
        if not keep:
            self.storage.discard(self)
            return 0
        try:
            with self._save_lock:
                if count != self.saved or now != self.stored_held:
                    self._save(count, tail)
        except ProtocolError as exc:
            log.warning("could not keep %s for a resume: %s", _short(self.path), exc.message)
            self.storage.discard(self)
            return 0
        return now

    def close(self) -> None:
        """Let go of everything the upload holds: its pipeline, reservation and claim."""
        if self.ended:
            return
        self.ended = True
        self._drain()
        self.buffer, self.tail = None, None  # memory goes with the upload, not with its object
        while not self._free.empty():
            self._free.get_nowait()
        self.reservation.release()
        if self.claim is not None:
            self.storage.unclaim(self.claim)
            self.claim = None


# -- the storage -------------------------------------------------------------------------


class StoreUsage(Usage):
    """Usage as the local backend keeps it, plus a recount of a home from the store."""

    def homes(self) -> builtins.list[Home]:
        with self.lock:
            return list(self._used)

    def recount(self, home: Home) -> None:
        counted = self._count(home)  # a listing: outside the lock
        with self.lock:
            self._used[home] = counted


class S3Storage:
    """File operations for accounts whose homes are key prefixes (see `Storage` in base.py).

    `root` is the local folder that stands for the top of the prefix: accounts name
    their homes below it, as with the local backend, and its `.sockftp` folder keeps
    what is this node's own (the defender's bans)."""

    turns = False  # its calls wait for the object store

    def __init__(
        self,
        client: Any,
        settings: S3Settings,
        root: Path,
        max_file_size: int | None = None,
        count_usage_of: Iterable[Path] = (),
    ) -> None:
        self.client = client
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.root = root.resolve()
        self.max_file_size = max_file_size
        self.claim_wait = CLAIM_WAIT
        self._check_state_folder()
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="s3")
        self.usage = StoreUsage(self._count)
        self.stats_counts = {"hit": 0, "miss": 0}
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        self._claims: dict[str, S3Upload] = {}
        self._removing: set[str] = set()  # directory prefixes an `rm -r` is emptying
        self._homes_made: set[Home] = set()
        self._dirs_seen: dict[Home, float] = {}  # directory -> when seen here (monotonic)
        self._conditional = True  # the store takes If-None-Match on writes (turned off if it says not)
        self._closing = threading.Event()
        for home in count_usage_of:
            self.usage.track(home.relative_to(self.root).parts)
        self._refresher = threading.Thread(target=self._refresh_usage, name="s3-usage", daemon=True)
        self._refresher.start()

    def _check_state_folder(self) -> None:
        """This node's own folder (the defender's bans), private to the server's user as
        the local backend's is: nothing another local account plants can stand in for it."""
        where = self.root / METADATA_DIR
        try:
            with contextlib.suppress(FileExistsError):
                where.mkdir(mode=0o700)
            st = where.lstat()
        except OSError as exc:
            raise ConfigError(f"{where}: not a directory the server can use ({exc.strerror})") from None
        if not stat_mod.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise ConfigError(f"{where}: must be a directory of the server's user, writable by it alone")

    def stats(self) -> dict[str, int]:
        return dict(self.stats_counts)

    def commit_group(self, group: builtins.list[Upload]) -> builtins.list[ProtocolError | None]:
        """Make sealed uploads visible, each with its own completion, several at once;
        returns each one's failure (None: committed), in order. Each is closed after."""
        uploads = [upload for upload in group if isinstance(upload, S3Upload)]
        if len(uploads) != len(group):
            raise TypeError("commit_group() takes this backend's own uploads")
        results: builtins.list[ProtocolError | None] = [None] * len(uploads)

        def commit(index: int) -> None:
            try:
                uploads[index].commit()
            except ProtocolError as exc:
                results[index] = exc

        try:
            if len(uploads) == 1:
                commit(0)
            else:
                list(self.pool.map(commit, range(len(uploads))))
        finally:
            for upload in uploads:
                upload.close()
        return results

    def close(self) -> None:
        self._closing.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def uploads_running(self) -> int:
        with self._lock:
            return len(self._claims)

    # -- keys ----------------------------------------------------------------------------

    def key(self, parts: Home) -> str:
        """The key of the file at `parts` (below the root)."""
        return self.prefix + "/".join(parts)

    def dir_prefix(self, parts: Home) -> str:
        """What every key below the directory at `parts` starts with."""
        return self.prefix + "".join(f"{part}/" for part in parts)

    def _parts_of(self, key: str) -> Home:
        return tuple(key[len(self.prefix) :].rstrip("/").split("/"))

    def _home(self, account: Account) -> Home:
        return account.home.relative_to(self.root).parts

    def _parse(self, account: Account, path: str) -> tuple[str, Home, Home]:
        """The canonical virtual path, the home, and the path's parts below the root;
        paths too deep or too long to store are refused before the store is asked."""
        parts = split_path(path)
        vpath = join_path(parts)
        if len(parts) > MAX_DEPTH:
            raise ForbiddenError(f"{_short(vpath)}: deeper than the server allows ({MAX_DEPTH} levels)")
        home = self._home(account)
        if len(self.dir_prefix(home + parts).encode()) > MAX_KEY_BYTES:
            raise ForbiddenError(f"{_short(vpath)}: too long for the object store")
        return vpath, home, home + parts

    # -- looking things up ------------------------------------------------------------------

    def head(self, key: str) -> dict | None:
        """The object's HEAD answer, None if there is none."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise

    def _head_file(self, parts: Home) -> dict | None:
        """The file at `parts` (a directory marker is not one)."""
        return self.head(self.key(parts)) if parts else None

    def is_dir(self, parts: Home) -> bool:
        """Whether `parts` is a directory: the top, or a prefix that holds a key."""
        return not parts or self._probe_dir(self.dir_prefix(parts)) is not None

    def _probe_dir(self, prefix: str) -> float | None:
        """None if no key starts with `prefix`; else the directory's time: its marker's,
        which sorts first, or for a directory made outside sockftp its first object's.

        Only a listing without a delimiter says this: stores built on a filesystem
        (SeaweedFS) keep emptied directories, which HEAD and delimited listings still show."""
        answer = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        contents = answer.get("Contents", [])
        return float(contents[0]["LastModified"].timestamp()) if contents else None

    def _lookup(self, parts: Home) -> tuple[dict | None, bool]:
        """What is at `parts`, from one delimited listing: the file's listing entry (None
        if there is none), and whether there is a directory."""
        key = self.key(parts)
        paginator = self.client.get_paginator("list_objects_v2")
        candidate = False
        for page in paginator.paginate(Bucket=self.bucket, Prefix=key, Delimiter="/"):
            for item in page.get("Contents", []):
                if item["Key"] == key:
                    return item, False
            if any(common["Prefix"] == f"{key}/" for common in page.get("CommonPrefixes", [])):
                candidate = True
                break
        return None, candidate and self.is_dir(parts)  # a store's leftover directory is none

    def _parent_there(self, home: Home, parts: Home) -> bool:
        """Whether the directory `parts` would be in exists (remembered for DIR_MEMORY
        seconds when seen, so a run of writes into one directory asks once)."""
        parent = _parent(parts)
        if len(parent) <= len(home):
            return True
        seen = self._dirs_seen.get(parent)
        if seen is not None and time.monotonic() - seen < DIR_MEMORY:
            return True
        if not self.is_dir(parent):
            return False
        self._saw_dir(parent)
        return True

    def _saw_dir(self, parts: Home) -> None:
        if len(self._dirs_seen) > 10_000:
            self._dirs_seen.clear()
        self._dirs_seen[parts] = time.monotonic()

    def _forget_dirs(self, parts: Home) -> None:
        """A directory went (or moved): neither it nor any below it is remembered."""
        for seen in list(self._dirs_seen):
            if seen[: len(parts)] == parts:
                self._dirs_seen.pop(seen, None)

    def _scan(self, prefix: str) -> tuple[bool, dict[str, dict], dict[str, float]]:
        """Whether any key starts with `prefix`, and the files (listing entries) and
        directories (their times, see `_probe_dir()`) right below it.

        Listings without a delimiter (see `_probe_dir()`), which jump past the rest of a
        subdirectory once its first key is seen: a page of small directories is one
        request, and a big one costs one more, not a walk through it."""
        found = False
        files: dict[str, dict] = {}
        dirs: dict[str, float] = {}
        after = ""
        while True:
            answer = self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=prefix, **({"StartAfter": after} if after else {})
            )
            contents = answer.get("Contents", [])
            for item in contents:
                found = True
                name, slash, _ = item["Key"][len(prefix) :].partition("/")
                if not slash:
                    if name:  # not the directory's own marker
                        files[name] = item
                elif name not in dirs:
                    dirs[name] = float(item["LastModified"].timestamp())
            if not contents or not answer.get("IsTruncated"):
                return found, files, dirs
            last = contents[-1]["Key"]
            name, slash, _ = last[len(prefix) :].partition("/")
            after = f"{prefix}{name}/{LAST_CHAR}" if slash else last

    def _keys_below(self, prefix: str) -> Iterator[dict]:
        """Every object whose key starts with `prefix`, page by page."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def _missing(self, home: Home, parts: Home, vpath: str) -> ProtocolError:
        """The error for a path that is not there: `not_a_directory` if a file stands
        where a directory of it should be, else `not_found`."""
        for depth in range(len(home) + 1, len(parts)):
            if self._head_file(parts[:depth]) is not None:
                return NotDirectoryError(f"{vpath}: a component of the path is not a directory")
        return NotFoundError(f"{vpath}: no such file or directory")

    def _check_no_file_above(self, home: Home, parts: Home, vpath: str) -> None:
        error = self._missing(home, parts, vpath)
        if isinstance(error, NotDirectoryError):
            raise error

    def md5_of(self, key: str, head: dict, vpath: str) -> str:
        """A file's MD5: from its metadata; from a single-part ETag (which is the MD5
        when the store does not encrypt with its own keys); or, for an object written
        outside sockftp, hashed once and kept in its metadata."""
        known = _known_md5(head)
        if known is not None:
            self.stats_counts["hit"] += 1
            return known
        self.stats_counts["miss"] += 1
        metadata = head.get("Metadata", {})
        digest = hashlib.md5()
        reader = io.BufferedReader(
            ObjectReader(self.client, self.bucket, key, head["ETag"], int(head["ContentLength"])), READ_BUFFER
        )
        with reader:
            try:
                while chunk := reader.read(READ_BUFFER):
                    digest.update(chunk)
            except OSError:
                raise InternalError(f"{_short(vpath)}: object store error") from None
        md5 = digest.hexdigest()
        kept = {**metadata, "md5": md5, "mtime": metadata.get("mtime", str(round(_mtime(head) * 1e9)))}
        try:  # only if it is still that object: a replaced one is not ours to label
            self.copy(key, key, head, kept, if_match=head["ETag"])
        except (ClientError, BotoCoreError, ProtocolError) as exc:
            log.info("could not keep the md5 of %s in its metadata: %s", _short(vpath), exc)
        return md5

    # -- Storage: reading ----------------------------------------------------------------

    def turns_for(self, account: Account) -> bool:
        return False

    def ensure_home(self, account: Account) -> None:
        home = self._home(account)
        if home and home not in self._homes_made:
            with store_errors("/"):
                if not self.is_dir(home):
                    self._put_marker(home, exclusive=False)
            self._homes_made.add(home)
        if account.quota is not None:
            with store_errors("/"):
                self.usage.track(home)

    def list(self, account: Account, path: str, md5: bool = False) -> tuple[str, builtins.list[dict]]:
        vpath, home, parts = self._parse(account, path)
        with store_errors(vpath):
            found, entries = self._entries(parts, md5)
            if found or parts == home:
                return vpath, entries
            head = self._head_file(parts)
            if head is not None:
                return vpath, [_file_entry(parts[-1], head, md5)]
            raise self._missing(home, parts, vpath)

    def _entries(self, parts: Home, md5: bool = False) -> tuple[bool, builtins.list[dict]]:
        """Whether the directory at `parts` holds any key, and its entries sorted by name.
        Files show the time and mode of their metadata (and with `md5`, the MD5 it holds),
        read with a HEAD each (WORKERS at a time); directories the time of their first
        key, their marker."""
        found, files, dirs = self._scan(self.dir_prefix(parts))
        prefix = self.dir_prefix(parts)

        def describe(name: str) -> dict | None:
            head = self.head(prefix + name)
            return None if head is None else _file_entry(name, head, md5)  # gone meanwhile: left out

        shown = [name for name in files if not name.startswith(RESERVED_PREFIX)]
        entries = [e for e in self.pool.map(describe, shown) if e is not None]
        entries += [
            entry(name, stat_mod.S_IFDIR | 0o755, 0, mtime)
            for name, mtime in dirs.items()
            if name not in files and not name.startswith(RESERVED_PREFIX)
        ]
        return found, sorted(entries, key=lambda e: e["name"])

    def stat(self, account: Account, path: str) -> dict:
        vpath, home, parts = self._parse(account, path)
        name = vpath.rsplit("/", 1)[-1]
        with store_errors(vpath):
            head = self._head_file(parts) if parts != home else None
            if head is not None:
                return {**_file_entry(name, head), "md5": self.md5_of(self.key(parts), head, vpath)}
            mtime = self._probe_dir(self.dir_prefix(parts)) if parts else None
            if parts == home or mtime is not None:
                return entry(name, stat_mod.S_IFDIR | 0o755, 0, mtime or 0.0)
            raise self._missing(home, parts, vpath)

    def open_snapshot(self, account: Account, path: str) -> Snapshot:
        vpath, home, parts = self._parse(account, path)
        with store_errors(vpath):
            head = self._head_file(parts) if parts != home else None
            if head is None:
                if parts == home or self.is_dir(parts):
                    raise IsDirectoryError(f"{vpath}: is a directory")
                raise self._missing(home, parts, vpath)
            key, size = self.key(parts), int(head["ContentLength"])
            md5 = self.md5_of(key, head, vpath)
        reader = ObjectReader(self.client, self.bucket, key, head["ETag"], size)
        return Snapshot(
            io.BufferedReader(reader, READ_BUFFER),
            size,
            md5,
            _mtime(head),
            _file_mode(head.get("Metadata", {})),
        )

    # -- Storage: writing ----------------------------------------------------------------

    def begin_upload(
        self,
        account: Account,
        path: str,
        size: int,
        md5: str,
        overwrite: bool,
        parents: bool,
        mtime: float | None = None,
        mode: int | None = None,
    ) -> S3Upload:
        vpath, home, parts = self._parse(account, path)
        if parts == home:
            raise IsDirectoryError("/: is a directory")
        with store_errors(vpath):
            parent_there = self._parent_there(home, parts)
            if not parent_there:
                self._check_no_file_above(home, parts, vpath)
                if not parents:
                    raise NotFoundError(f"{vpath}: parent directory does not exist")
            if self.max_file_size is not None and size > self.max_file_size:  # after the path's checks
                raise TooLargeError(f"{vpath}: {size} bytes exceeds the limit of {self.max_file_size}")
            if not parent_there:
                self.usage.reserve(home, account.quota, size, vpath).release()  # a check: nothing made yet
                self._make_dirs(home, _parent(parts), vpath)
            replaced, identical, there = self._existing(parts, vpath, size, md5, overwrite)
        upload = S3Upload(self, account, home, parts, vpath, size, md5, overwrite, offset=size)
        upload.mtime, upload.mode = mtime, mode
        if identical:
            assert there is not None
            if overwrite and not _attributes_match(there.get("Metadata", {}), mtime, mode):
                upload.touch = True  # finish() gives it these attributes
            return upload  # without overwrite, a file already there is left as it is
        with store_errors(vpath):
            return self._instant_copy(upload, replaced) or self._resumable(upload, replaced)

    def _existing(
        self, parts: Home, vpath: str, size: int, md5: str, overwrite: bool
    ) -> tuple[int, bool, dict | None]:
        """The size of the file the upload would replace (0 if none), whether it already is
        this very file, and its HEAD answer."""
        item, is_dir = self._lookup(parts)
        if is_dir:
            raise IsDirectoryError(f"{vpath}: is a directory")
        head = self._head_file(parts) if item is not None else None
        if head is None:
            return 0, False, None
        held = int(head["ContentLength"])
        if held == size and self.md5_of(self.key(parts), head, vpath) == md5:
            return held, True, head
        if not overwrite:
            raise ExistsError(f"{vpath}: already exists")
        return held, False, head

    def _instant_copy(self, upload: S3Upload, replaced: int) -> S3Upload | None:
        """Instant upload: if this home holds a file with this size and MD5 (the index
        says where one was), the upload needs no byte from the network: `finish()` copies
        it in the store. Only the uploader's own home is looked in."""
        index = self._index_key(upload.home, upload.md5, upload.size)
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=index)
            source = answer["Body"].read(MAX_KEY_BYTES + 1).decode("utf-8", "replace")
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        mine = self.dir_prefix(upload.home)
        below = source[len(mine) :].split("/")
        if (
            not source.startswith(mine)
            or source == upload.key
            or any(n.startswith(RESERVED_PREFIX) for n in below)
        ):
            return None
        head = self.head(source)
        if head is None or int(head["ContentLength"]) != upload.size:
            self._forget_index(index, source)
            return None
        if head.get("Metadata", {}).get("md5") != upload.md5:
            self._forget_index(index, source)
            return None
        upload.reservation = self.usage.reserve(
            upload.home, upload.account.quota, upload.size - replaced, upload.path
        )
        upload.source = (source, head["ETag"])
        return upload

    def _resumable(self, upload: S3Upload, replaced: int) -> S3Upload:
        """Receive into a (multipart) upload named after (name, size, md5), resuming what the
        store holds of it. Two sessions of this server never share one: the second waits a
        little for the first to let go (a retry often comes while the broken attempt is
        still being wound up), then gets a private upload that cannot be resumed."""
        parts = upload.parts
        digest = hashlib.sha256(f"{parts[-1]}\0{upload.size}\0{upload.md5}".encode()).hexdigest()[:32]
        state_key = f"{self.dir_prefix(_parent(parts))}{PARTIAL_PREFIX}{digest}"
        resumable = ResumableMD5.available and len(state_key.encode()) <= MAX_KEY_BYTES
        if resumable and self.claim(state_key, upload, self.claim_wait):
            upload.claim = upload.state_key = state_key
        else:
            upload.claim = f"private:{uuid.uuid4().hex}"
            self.claim(upload.claim, upload, 0)
        try:
            state = self._load_state(upload) if upload.state_key else None
            upload.part_size = state.part_size if state else self._part_size(upload.size)
            upload.held = state.held if state else 0
            # Checked before anything is made: a refused put leaves nothing behind.
            growth = upload.size - replaced - upload.held
            upload.reservation = self.usage.reserve(upload.home, upload.account.quota, growth, upload.path)
        except BaseException:
            upload.close()
            raise
        upload.offset = 0
        upload.start(state)
        if state is not None:
            log.info("resuming the upload of %s at %d bytes", _short(upload.path), upload.held)
        return upload

    def _part_size(self, size: int) -> int:
        """The configured part size, or more for a file that would need over MAX_PARTS parts."""
        least = math.ceil(size / MAX_PARTS / (1024 * 1024)) * 1024 * 1024
        return max(self.settings.part_size, least)

    def _load_state(self, upload: S3Upload) -> UploadState | None:
        """The stored state of this upload if it is sound and its parts are in the store;
        an unusable one is removed (with its bytes) and the upload starts afresh."""
        assert upload.state_key is not None
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=upload.state_key)["Body"].read()
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        state = UploadState.decode(body)
        same = state is not None and (state.key, state.size, state.md5) == (
            upload.key,
            upload.size,
            upload.md5,
        )
        if state is not None and same and self._parts_stored(state):
            with contextlib.suppress(ValueError):
                ResumableMD5.restore(state.md5_state)
                return state
        log.info("dropping the unusable stored state of %s", _short(upload.path))
        self._drop_state(upload.state_key, state, _parent(upload.parts))
        return None

    def _parts_stored(self, state: UploadState) -> bool:
        """Whether the store holds every part the state names, with the same ETag and size."""
        if state.upload_id is None:
            return not state.etags
        listed: set[tuple[int, str, int]] = set()
        paginator = self.client.get_paginator("list_parts")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Key=state.key, UploadId=state.upload_id):
                listed.update((p["PartNumber"], p["ETag"], p["Size"]) for p in page.get("Parts", []))
        except ClientError as exc:
            if _code(exc) in ("NoSuchUpload", *_MISSING):
                return False
            raise
        wanted = {(number, etag, state.part_size) for number, etag in enumerate(state.etags, start=1)}
        return wanted <= listed

    # -- parts, states and publishing (called by S3Upload) -------------------------------------

    def create_upload(self, upload: S3Upload) -> str:
        with store_errors(upload.path):
            answer = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=upload.key, Metadata=upload.created_metadata
            )
        return str(answer["UploadId"])

    def send_part(
        self, upload: S3Upload, number: int, data: bytes | bytearray | memoryview, content_md5: str
    ) -> str:
        with store_errors(upload.path):
            answer = self.client.upload_part(
                Bucket=self.bucket,
                Key=upload.key,
                UploadId=upload.upload_id,
                PartNumber=number,
                Body=BufferBody(memoryview(data)),
                ContentMD5=content_md5,
            )
        return str(answer["ETag"])

    def save_state(self, upload: S3Upload, state: UploadState) -> None:
        assert upload.state_key is not None
        with store_errors(upload.path):
            self.client.put_object(
                Bucket=self.bucket,
                Key=upload.state_key,
                Body=state.encode(),
                Metadata=self._state_metadata(state, time.time()),
            )

    @staticmethod
    def _state_metadata(state: UploadState, updated: float) -> dict[str, str]:
        """What a sweep or a recount reads with a HEAD: bytes held, when last written, the upload."""
        return {"held": str(state.held), "updated": f"{updated:.3f}", "upload": state.upload_id or ""}

    def discard(self, upload: S3Upload) -> None:
        """Remove what the store holds of the upload; the home no longer holds it."""
        if upload.upload_id is not None:
            self._abort_upload(upload.key, upload.upload_id)
            upload.upload_id = None
        if upload.state_key is not None:
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.delete_object(Bucket=self.bucket, Key=upload.state_key)
        if upload.held:
            self.usage.add(_parent(upload.parts), -upload.held)
            upload.held = 0

    def _abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) not in ("NoSuchUpload", *_MISSING):
                log.warning("could not abort the multipart upload of %s: %s", _short(key), _code(exc))
        except BotoCoreError as exc:
            log.warning("could not abort the multipart upload of %s: %s", _short(key), exc)

    def _drop_state(self, state_key: str, state: UploadState | None, where: Home) -> None:
        """Remove a stored state and its multipart upload, and the bytes they held."""
        held = 0
        if state is not None and state.upload_id is not None:
            self._abort_upload(state.key, state.upload_id)
        head = self.head(state_key)
        if head is not None:
            held = int(head.get("Metadata", {}).get("held", "0") or 0)
        self.client.delete_object(Bucket=self.bucket, Key=state_key)
        if held:
            self.usage.add(where, -held)

    def _finish_checks(self, upload: S3Upload, vpath: str) -> int:
        """Before an upload becomes visible: the name is not a directory now, and the file
        it replaces (its size is returned) still leaves room in the quota."""
        item, is_dir = self._lookup(upload.parts)
        if is_dir:
            raise IsDirectoryError(f"{vpath}: is a directory")
        if item is not None and not upload.overwrite:
            raise ExistsError(f"{vpath}: already exists")
        replaced = int(item["Size"]) if item is not None else 0
        growth = upload.size - upload.held - replaced
        if not self.usage.fits(upload.home, upload.account.quota, growth - upload.reservation.amount):
            raise QuotaExceededError(f"{vpath}: no room left in the quota for it")
        return replaced

    def publish(self, upload: S3Upload, tail: memoryview) -> None:
        """Make the received upload visible under its name: the last part and the
        completion, or the whole object at once when it never needed a part."""
        vpath = upload.path
        try:
            with store_errors(vpath):
                replaced = self._finish_checks(upload, vpath)
                if upload.upload_id is None:
                    self._put(upload.key, tail, upload.metadata, exclusive=not upload.overwrite)
                else:
                    self._complete(upload, tail)
        except BaseException:
            self.discard(upload)
            raise
        if upload.state_key is not None:
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.delete_object(Bucket=self.bucket, Key=upload.state_key)
        self.usage.add(_parent(upload.parts), upload.size - upload.held - replaced)
        upload.held = 0
        self._remember(upload.home, upload.md5, upload.size, upload.key)

    def _complete(self, upload: S3Upload, tail: memoryview) -> None:
        if tail:
            number = len(upload.etags) + 1
            upload.etags[number] = self.send_part(upload, number, tail, _b64md5(tail))
        parts = [{"PartNumber": number, "ETag": etag} for number, etag in sorted(upload.etags.items())]
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=upload.key,
                UploadId=upload.upload_id,
                MultipartUpload={"Parts": parts},
                **self._exclusive(not upload.overwrite),
            )
        except ClientError as exc:
            if _code(exc) == "NotImplemented" and self._conditional:
                self._conditional = False
                return self._complete(upload, memoryview(b""))
            if _code(exc) == "NoSuchUpload":  # completed by a session of another server?
                head = self._head_file(upload.parts)
                if head is not None and head.get("Metadata", {}).get("md5") == upload.md5:
                    upload.upload_id = None
                    return None
            raise
        upload.upload_id = None
        if upload.created_metadata != upload.metadata:  # resumed with other attributes
            head = self._head_file(upload.parts)
            if head is not None:
                self.copy(upload.key, upload.key, head, upload.metadata, if_match=head["ETag"])
        return None

    def publish_copy(self, upload: S3Upload) -> None:
        """Finish an instant upload: copy its source in the store, if it is still that object."""
        assert upload.source is not None
        source, etag = upload.source
        with store_errors(upload.path):
            replaced = self._finish_checks(upload, upload.path)
            head = self.head(source)
            if head is None or head["ETag"] != etag:
                raise NotFoundError(f"{upload.path}: the file it was to be copied from went; send it again")
            self.copy(
                source, upload.key, head, upload.metadata, if_match=etag, exclusive=not upload.overwrite
            )
        self.usage.add(_parent(upload.parts), upload.size - replaced)

    def touch(self, upload: S3Upload) -> None:
        """Give the file already at the destination the attributes asked for (a copy onto itself)."""
        with store_errors(upload.path):
            head = self._head_file(upload.parts)
            if head is None or int(head["ContentLength"]) != upload.size:
                return  # replaced since the put began: that file is not ours to change
            try:
                self.copy(upload.key, upload.key, head, upload.metadata, if_match=head["ETag"])
            except ClientError as exc:
                if _code(exc) != "PreconditionFailed":  # replaced meanwhile: as above
                    raise

    # -- objects: put, copy, markers, the index ---------------------------------------------

    def _exclusive(self, exclusive: bool) -> dict[str, str]:
        """The condition that makes a write fail if the key exists meanwhile, where the store takes it."""
        return {"IfNoneMatch": "*"} if exclusive and self._conditional else {}

    def _put(self, key: str, body: bytes | memoryview, metadata: dict[str, str], exclusive: bool) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=BufferBody(memoryview(body)) if body else b"",
                ContentMD5=_b64md5(body),
                Metadata=metadata,
                **self._exclusive(exclusive),
            )
        except ClientError as exc:
            if _code(exc) == "NotImplemented" and self._conditional:
                log.info("the object store takes no conditional writes; names are checked just before")
                self._conditional = False
                return self._put(key, body, metadata, exclusive)
            raise
        return None

    def copy(
        self,
        source: str,
        target: str,
        head: dict,
        metadata: dict[str, str] | None = None,
        if_match: str | None = None,
        exclusive: bool = False,
    ) -> None:
        """Copy an object within the bucket, in the store: with `metadata`, replacing its
        metadata; one request up to 5 GiB, part by part above."""
        size = int(head["ContentLength"])
        conditions: dict[str, str] = {"CopySourceIfMatch": if_match} if if_match else {}
        if size <= MAX_COPY:
            extra = {"MetadataDirective": "REPLACE", "Metadata": metadata} if metadata is not None else {}
            try:
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=target,
                    CopySource={"Bucket": self.bucket, "Key": source},
                    **extra,
                    **conditions,
                    **self._exclusive(exclusive),
                )
            except ClientError as exc:
                if _code(exc) == "NotImplemented" and self._conditional:
                    self._conditional = False
                    return self.copy(source, target, head, metadata, if_match, exclusive)
                raise
            return None
        kept = metadata if metadata is not None else head.get("Metadata", {})
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=target, Metadata=kept)[
            "UploadId"
        ]
        try:
            step = max(self.settings.part_size, math.ceil(size / MAX_PARTS))
            parts = []
            for number, start in enumerate(range(0, size, step), start=1):
                answer = self.client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=target,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": source},
                    CopySourceRange=f"bytes={start}-{min(start + step, size) - 1}",
                    **conditions,
                )
                parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=target,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **self._exclusive(exclusive),
            )
        except BaseException:
            self._abort_upload(target, upload_id)
            raise
        return None

    def _put_marker(self, parts: Home, exclusive: bool) -> None:
        self._put(self.dir_prefix(parts), b"", {}, exclusive)

    def _make_dirs(self, home: Home, parts: Home, vpath: str) -> None:
        """Make every missing directory of `parts` below the home (a file on the way is
        `not_a_directory`; one made meanwhile by another session is fine)."""
        for depth in range(len(home) + 1, len(parts) + 1):
            where = parts[:depth]
            item, is_dir = self._lookup(where)
            if item is not None:
                raise NotDirectoryError(f"{vpath}: a component of the path is not a directory")
            if not is_dir:
                self._put_marker(where, exclusive=False)
            self._saw_dir(where)

    def _index_key(self, home: Home, md5: str, size: int) -> str:
        """Where the index names a file of `home` with this content."""
        owner = hashlib.sha256(self.dir_prefix(home).encode()).hexdigest()[:32]
        return f"{self.prefix}{METADATA_DIR}/index/{owner}/{md5}.{size}"

    def _remember(self, home: Home, md5: str, size: int, key: str) -> None:
        """Note where a file of this content is, for later instant uploads (best effort)."""
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._index_key(home, md5, size), Body=key.encode()
            )
        except (ClientError, BotoCoreError) as exc:
            log.info("could not index %s: %s", _short(key), exc)

    def _forget_index(self, index: str, source: str) -> None:
        with contextlib.suppress(ClientError, BotoCoreError):
            self.client.delete_object(Bucket=self.bucket, Key=index)

    # -- claims: uploads running on this server -----------------------------------------------

    def claim(self, name: str, upload: S3Upload, wait: float) -> bool:
        """Mark `name` as in use by `upload`; False if another kept it for `wait` seconds."""
        target = upload.key
        with self._lock:
            if any(target.startswith(prefix) for prefix in self._removing):
                raise NotFoundError("the directory is being removed")
            if not self._released.wait_for(lambda: name not in self._claims, wait):
                return False
            self._claims[name] = upload
            return True

    def unclaim(self, name: str) -> None:
        with self._lock:
            self._claims.pop(name, None)
            self._released.notify_all()

    def _uploads_below(self, prefix: str) -> bool:
        with self._lock:
            return any(upload.key.startswith(prefix) for upload in self._claims.values())

    # -- directories and removal -------------------------------------------------------------

    def mkdir(self, account: Account, path: str, parents: bool) -> None:
        vpath, home, parts = self._parse(account, path)
        if parts == home:
            if parents:
                return
            raise ExistsError("/: already exists")
        with store_errors(vpath):
            item, is_dir = self._lookup(parts)
            if item is not None or (is_dir and not parents):
                raise ExistsError(f"{vpath}: already exists")
            if is_dir:
                return
            if not self._parent_there(home, parts):
                self._check_no_file_above(home, parts, vpath)
                if not parents:
                    raise NotFoundError(f"{vpath}: no such file or directory")
                self._make_dirs(home, _parent(parts), vpath)
            try:
                self._put_marker(parts, exclusive=not parents)
            except ClientError as exc:
                if _code(exc) == "PreconditionFailed":
                    raise ExistsError(f"{vpath}: already exists") from None
                raise
            self._saw_dir(parts)

    def remove(self, account: Account, path: str, recursive: bool = False) -> None:
        vpath, home, parts = self._parse(account, path)
        if parts == home:
            raise ForbiddenError("/: the home directory cannot be removed")
        with store_errors(vpath):
            head = self._head_file(parts)
            if head is not None:
                self.client.delete_object(Bucket=self.bucket, Key=self.key(parts))
                self.usage.add(_parent(parts), -int(head["ContentLength"]))
                return
            if not self.is_dir(parts):
                raise self._missing(home, parts, vpath)
            self._remove_dir(parts, vpath, recursive)

    def _remove_dir(self, parts: Home, vpath: str, recursive: bool) -> None:
        """Remove a directory: with `recursive` everything below it, else only if it holds
        nothing but its marker and abandoned uploads. An upload of this server running into
        it is `not_empty`, before anything is removed."""
        prefix = self.dir_prefix(parts)
        with self._lock:
            if any(upload.key.startswith(prefix) for upload in self._claims.values()):
                raise NotEmptyError(f"{vpath}: an upload into it is in progress")
            self._removing.add(prefix)
        self._forget_dirs(parts)
        try:
            keys = []
            for item in self._keys_below(prefix):
                name = item["Key"][len(prefix) :]
                if not recursive and name and not (name.startswith(PARTIAL_PREFIX) and "/" not in name):
                    raise NotEmptyError(f"{vpath}: directory is not empty")
                keys.append(item)
            self._delete_all(keys)
        finally:
            with self._lock:
                self._removing.discard(prefix)

    def _delete_all(self, items: builtins.list[dict]) -> None:
        """Delete these objects (listing entries), a thousand at a time; an upload's state goes
        with its multipart upload. Every byte removed leaves the usage of the homes holding it."""
        for item in items:
            if item["Key"].rsplit("/", 1)[-1].startswith(PARTIAL_PREFIX):
                self._drop_partial(item["Key"])
        plain = [item for item in items if not item["Key"].rsplit("/", 1)[-1].startswith(PARTIAL_PREFIX)]
        for start in range(0, len(plain), 1000):
            batch = plain[start : start + 1000]
            answer = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": i["Key"]} for i in batch], "Quiet": True}
            )
            failed = {error["Key"] for error in answer.get("Errors", [])}
            for item in batch:
                if item["Key"] not in failed:
                    self.usage.add(_parent(self._parts_of(item["Key"])), -int(item["Size"]))
            if failed:
                raise InternalError(f"{len(failed)} objects could not be removed")

    def _drop_partial(self, state_key: str) -> None:
        """Remove an upload's stored state, its multipart upload and the bytes it held."""
        head = self.head(state_key)
        if head is None:
            return
        metadata = head.get("Metadata", {})
        if metadata.get("upload"):
            target = state_key  # abort needs the upload's key: it is in the state's body
            with contextlib.suppress(ClientError, BotoCoreError):
                body = self.client.get_object(Bucket=self.bucket, Key=state_key)["Body"].read()
                state = UploadState.decode(body)
                if state is not None:
                    target = state.key
            self._abort_upload(target, metadata["upload"])
        self.client.delete_object(Bucket=self.bucket, Key=state_key)
        held = int(metadata.get("held", "0") or 0)
        self.usage.add(_parent(self._parts_of(state_key)), -held)

    def rename(self, account: Account, path: str, to: str, overwrite: bool) -> None:
        vpath, home, parts = self._parse(account, path)
        tpath, _, target = self._parse(account, to)
        if parts == home or target == home:
            raise ForbiddenError("/: the home directory cannot be renamed or replaced")
        if target[: len(parts)] == parts and target != parts:
            raise ForbiddenError(f"{_short(tpath)}: a directory cannot move into itself")
        with store_errors(vpath):
            head = self._head_file(parts)
            if head is None and not self.is_dir(parts):
                raise self._missing(home, parts, vpath)
        with store_errors(tpath):
            if not self._parent_there(home, target):
                raise self._missing(home, target, tpath)
            if target == parts:
                return  # renamed to itself: nothing to do
            there = self._head_file(target)
            if there is None and self.is_dir(target):
                raise IsDirectoryError(f"{tpath}: is a directory")
            if there is not None and not overwrite:
                raise ExistsError(f"{tpath}: already exists")
            if there is not None and head is None:
                raise NotDirectoryError(f"{tpath}: is not a directory, and a directory cannot replace it")
            if head is not None:
                self._rename_file(home, parts, target, head, there)
            else:
                self._rename_dir(parts, target, vpath)

    def _rename_file(self, home: Home, parts: Home, target: Home, head: dict, there: dict | None) -> None:
        """A copy in the store, then the old name removed: the new name appears whole, and
        until the copy is done the old one is there (never neither)."""
        try:
            self.copy(self.key(parts), self.key(target), head, if_match=head["ETag"], exclusive=there is None)
        except ClientError as exc:
            if _code(exc) == "PreconditionFailed" and there is None:
                raise ExistsError(f"{join_path(target)}: already exists") from None
            raise
        self.client.delete_object(Bucket=self.bucket, Key=self.key(parts))
        size = int(head["ContentLength"])
        md5 = head.get("Metadata", {}).get("md5", "")
        if len(md5) == 32:  # instant uploads find it under its new name
            self._remember(home, md5, size, self.key(target))
        if there is not None:
            self.usage.add(_parent(target), -int(there["ContentLength"]))
        self.usage.moved(parts, target, lambda: size)

    def _rename_dir(self, parts: Home, target: Home, vpath: str) -> None:
        """One copy per object, then the old ones removed; refused above `max_rename_objects`
        objects, and while an upload of this server runs into it. Its abandoned uploads are
        dropped: a multipart upload cannot change its key."""
        prefix, new_prefix = self.dir_prefix(parts), self.dir_prefix(target)
        self._forget_dirs(parts)
        if self._uploads_below(prefix):
            raise ForbiddenError(f"{vpath}: an upload into it is in progress; rename it when that ends")
        items = []
        limit = self.settings.max_rename_objects
        for item in self._keys_below(prefix):
            items.append(item)
            if len(items) > limit:
                raise ForbiddenError(
                    f"{vpath}: holds more than {limit} objects; an object store renames a directory "
                    "one object at a time (move what it holds in parts)"
                )
        partials = [i for i in items if i["Key"].rsplit("/", 1)[-1].startswith(PARTIAL_PREFIX)]
        self._delete_all(partials)
        moving = [i for i in items if not i["Key"].rsplit("/", 1)[-1].startswith(PARTIAL_PREFIX)]

        def copy(item: dict) -> None:
            key = item["Key"]
            if key.endswith("/"):  # a directory's marker: some stores keep no object to copy
                self._put(new_prefix + key[len(prefix) :], b"", {}, exclusive=False)
                return
            head = {"ContentLength": item["Size"], "Metadata": {}}
            if int(item["Size"]) > MAX_COPY:
                head = self.head(key) or head
            self.copy(key, new_prefix + key[len(prefix) :], head, if_match=item["ETag"])

        list(self.pool.map(copy, moving))
        if not any(i["Key"] == prefix for i in moving):
            self._put_marker(target, exclusive=False)  # the new name exists even if the old had no marker
        for start in range(0, len(moving), 1000):
            batch = moving[start : start + 1000]
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": i["Key"]} for i in batch], "Quiet": True}
            )
        self.usage.moved(parts, target, lambda: sum(int(i["Size"]) for i in moving))

    # -- quota ----------------------------------------------------------------------------------

    def _count(self, home: Home) -> int:
        """Bytes held below a home: its files' sizes, plus what each kept upload holds (an
        upload running here counts what it held when it began; the rest is its reservation)."""
        index = f"{self.prefix}{METADATA_DIR}/"
        with self._lock:
            running = {upload.state_key: upload.held for upload in self._claims.values() if upload.state_key}
        total = 0
        for item in self._keys_below(self.dir_prefix(home)):
            key = item["Key"]
            if key.startswith(index):
                continue
            if key.rsplit("/", 1)[-1].startswith(PARTIAL_PREFIX):
                if key in running:
                    total += running[key]
                else:
                    head = self.head(key)
                    total += int((head or {}).get("Metadata", {}).get("held", "0") or 0)
                continue
            total += int(item["Size"])
        return total

    def _refresh_usage(self) -> None:
        """Recount every tracked home now and then: what other servers changed shows
        within `usage_refresh` seconds (and the time a recount takes)."""
        while not self._closing.wait(self.settings.usage_refresh):
            for home in self.usage.homes():
                try:
                    self.usage.recount(home)
                except (ClientError, BotoCoreError) as exc:
                    log.warning("recount of %s failed: %s", "/".join(home) or "/", exc)

    def home_usage(self, account: Account) -> dict:
        home = self._home(account)
        with store_errors("/"):
            used = self.usage.used(home)
        quota = account.quota
        free = None if quota is None else max(0, quota - used)
        return {"used": used, "quota": quota, "free": free, "disk_free": DISK_FREE}

    # -- the sweep ------------------------------------------------------------------------------

    def remove_stale_partials(self, max_age: float) -> int:
        """Drop interrupted uploads untouched for `max_age` seconds: their states, and the
        multipart uploads no state names any more (a server killed before the first part)."""
        cutoff = time.time() - max_age
        removed = 0
        with self._lock:
            running = {u.state_key for u in self._claims.values()}
            active = {u.upload_id for u in self._claims.values() if u.upload_id}
        try:
            for item in list(self._keys_below(self.prefix)):
                key = item["Key"]
                if not key.rsplit("/", 1)[-1].startswith(PARTIAL_PREFIX):
                    continue
                head = self.head(key)
                if head is None:
                    continue
                metadata = head.get("Metadata", {})
                try:
                    updated = float(metadata.get("updated", "0"))
                except ValueError:
                    updated = 0.0
                if key in running or updated >= cutoff:
                    active.add(metadata.get("upload", ""))
                    continue
                self._drop_partial(key)
                removed += 1
            removed += self._abort_orphans(cutoff, active)
        except (ClientError, BotoCoreError) as exc:
            log.warning("sweep of stale uploads failed: %s", exc)
        return removed

    def _abort_orphans(self, cutoff: float, active: set[str]) -> int:
        removed = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for upload in page.get("Uploads", []):
                if upload["UploadId"] in active or upload["Initiated"].timestamp() >= cutoff:
                    continue
                self._abort_upload(upload["Key"], upload["UploadId"])
                removed += 1
        return removed
