"""One client session: greet, then read a request, check it, run its `op_*()`.

`Session.dispatch()` is the one gatekeeper: it looks the op up in the
protocol's table, checks auth and write permission, then parses the fields,
so each `op_*()` is short and only does its op. Every frame in or out and
every data phase goes through the session's `Conversation` (ftpproto.states),
so where an exchange stands is one state, not flags. Errors are
`ProtocolError`s; `send_error()` turns them into error frames, closing ones
wherever the exchange cannot go on in step.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socketserver
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ftpproto import (
    FEATURES,
    PROTOCOL_VERSION,
    AuthFailedError,
    AuthRequiredError,
    BadRequestError,
    BusyError,
    Conversation,
    Event,
    ForbiddenError,
    InternalError,
    ProtocolError,
    Role,
    State,
    TimedOutError,
)
from ftpproto.io import BUFFER_SIZE, FrameStream, PeerClosedError
from ftpproto.io.turn import Turn, paused
from ftpproto.messages import EAGER_PUT_MAX, op_spec, parse_args
from ftpproto.paths import join_path, split_path
from ftpproto.states import client_event
from ftpproto.units import endpoint

from .auth import verify_password
from .config import Account
from .defender import Event as Score
from .storage import Upload

if TYPE_CHECKING:
    from .server import FileServer

__all__ = ["LS_PAGE", "Session"]

log = logging.getLogger("ftpserver.session")
LS_PAGE = 1000
GROUP_MAX = 64  # eager puts committed together at most
TURN_SLICE = 0.05  # seconds a session keeps the turn through requests it has already read
GROUP_WAIT = 0.2  # seconds a group's answers wait for the peer's next bytes before they go
EAGER_GET_INLINE = 64 * 1024  # an eager get this small is read and sent with its header
HANDSHAKE_TIMEOUT = 10.0
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _throttled(write, limiter):
    def write_at_rate(chunk: memoryview) -> None:
        write(chunk)
        limiter.consume(len(chunk))

    return write_at_rate


@dataclass
class Pending:
    """A sealed put waiting for its group's commit, and what its answer and log line need."""

    upload: Upload
    path: str
    size: int
    md5: str
    count: int  # bytes received
    started: float
    held: int | None = None  # an eager put's: bytes the server held already (its answer says)


def clean(text: object) -> str:
    """A peer-supplied string made safe for a one-line log."""
    return _UNPRINTABLE.sub("?", str(text))[:200]


class Session(socketserver.BaseRequestHandler):
    server: FileServer

    def setup(self) -> None:
        self.config = self.server.config
        self.limits = self.config.limits
        self.storage = self.server.storage
        self.peer = endpoint(*self.client_address)
        self.account = self.config.anonymous
        self.logged_in = False  # as a named user, counted against its max_sessions
        self.tried_login = False
        self.failed_logins = 0
        self.conversation = Conversation(Role.SERVER)
        self.group: list[Pending] = []  # sealed puts whose commit and answer wait for a group
        self.group_names: set[str] = set()  # their canonical paths
        self.group_parents: set[str] = set()  # and the directories above them
        self.stream = FrameStream(self.request)
        self.stream.set_timeout(self.limits.idle_timeout)
        # A peer that stops inside its next request (or an eager put's data) still gets the
        # answers owed to the group: they and the names they claim are not held for a timeout.
        self.stream.when_idle(GROUP_WAIT, self.answer_group)
        self.server.session_started(self)
        # A TLS session runs without a turn: its stream may wait in any call.
        self.turn = None if isinstance(self.request, ssl.SSLSocket) else self.server.turn
        if self.turn is not None:
            self.turn.join()

    def finish(self) -> None:
        try:
            for pending in self.group:  # the client went before their commit: kept for a resume
                pending.upload.abort()
            self.group = []
            if self.logged_in and self.account is not None:
                self.server.user_session_ended(self.account)
            if self.config.anonymous is None and not self.tried_login:
                self.server.defender.record(self.client_address[0], Score.NO_LOGIN)
            self.server.session_ended(self)
        finally:
            if self.turn is not None:
                self.turn.leave()

    def handle(self) -> None:
        log.info("connect %s", self.peer, extra={"event": "connect", "peer": self.peer})
        started = time.monotonic()
        try:
            if isinstance(self.request, ssl.SSLSocket) and not self.handshake():
                return
            if self.account is not None:
                try:
                    self.storage.ensure_home(self.account)
                except ProtocolError as exc:  # the anonymous home is unusable: say so, end
                    log.warning("anonymous home unusable: %s", exc.message)
                    self.send_error(exc)
                    return
                self.check_turns()
            self.reply(self.greeting(), Event.HELLO)
            while not self.server.stopping and self.serve_one():
                if self.turn is not None:
                    self.take_turns(self.turn)
            self.flush()  # a stop between two requests of a group: its puts are answered first
        except (PeerClosedError, ConnectionError, TimeoutError, OSError) as exc:
            log.info("connection %s ended: %s", self.peer, exc.__class__.__name__)
        seconds = time.monotonic() - started
        log.info(
            "disconnect %s after %.1fs", self.peer, seconds, extra=self.fields("disconnect", seconds=seconds)
        )

    def check_turns(self) -> None:
        """Take no more turns if the account's home may wait for a network (an NFS or FUSE
        mount below a local storage root): the others would wait as long."""
        if self.turn is not None and self.account is not None and not self.storage.turns_for(self.account):
            self.turn.leave()
            self.turn = None

    def take_turns(self, turn: Turn) -> None:
        """Hold the turn through a run of requests read already. A read that waits for
        the peer lets it go (see FrameStream), and a session that gets one request at
        a time runs without it."""
        if turn.holding():
            turn.pass_on(after=TURN_SLICE)  # progress; in a long run, the others' turn now and then
        elif self.stream.buffered:
            turn.take()

    def handshake(self) -> bool:
        """Complete the TLS handshake; a peer that fails it (plain TCP, wrong
        version, no answer within the timeout) is dropped without a word."""
        try:
            with self.stream.timed(min(self.limits.idle_timeout, HANDSHAKE_TIMEOUT)):
                self.stream.handshake()
        except (ssl.SSLError, OSError) as exc:
            log.info("tls handshake with %s failed: %s", self.peer, clean(exc))
            if isinstance(exc, ssl.SSLError):  # not TLS at all, or garbage: a timeout is not scored
                self.server.defender.record(self.client_address[0], Score.PROTOCOL_VIOLATION)
                self.tried_login = True  # scored once: not again as a connection that never logged in
            return False
        return True

    def greeting(self) -> dict:
        return {
            "type": "hello",
            "proto": PROTOCOL_VERSION,
            "server": f"sockftp/{self.server.version}",
            "auth": "optional" if self.config.anonymous is not None else "required",
            "features": list(FEATURES),
        }

    def serve_one(self) -> bool:
        """Read and answer one request; False when the connection must end."""
        try:
            message = self.receive(self.limits.idle_timeout, "request")
            if self.group and self.conversation.op != "put eager":
                self.flush()  # only eager puts join a group; anything else sees its effects
            return self.dispatch(message)
        except ProtocolError as exc:
            if exc.closes and exc.code in ("bad_request", "frame_too_large"):
                self.server.defender.record(self.client_address[0], Score.PROTOCOL_VIOLATION)
            self.send_error(exc)
        except (ConnectionError, TimeoutError, ssl.SSLError):
            raise  # the connection is gone or broken (a corrupt TLS record): handle() ends it
        except Exception:
            log.exception("internal error serving %s", self.peer)
            if self.conversation.state is State.IDLE:
                # After the exchange ended (a get's last byte, a cancel): no request waits for
                # an answer, and a frame now would be read as the answer to the next one.
                self.conversation.close()
            else:
                self.send_error(InternalError("the server failed to handle this request"))
        return self.conversation.state is not State.CLOSED

    @property
    def busy(self) -> bool:
        """Inside an exchange, or owing answers (a group waiting, or being committed): a
        stop waits for them."""
        return (
            bool(self.group)
            or bool(self.conversation.deferred)
            or self.conversation.state not in (State.IDLE, State.GREETING, State.CLOSED)
        )

    def receive(self, timeout: float, what: str) -> dict:
        """The client's next frame, recorded in the conversation; `timeout` for the whole frame."""
        try:
            message = self.stream.recv(deadline=time.monotonic() + timeout)
        except TimeoutError:
            raise TimedOutError(f"no {what} for {timeout:g} seconds") from None
        self.conversation.receive(*client_event(self.conversation.state, message))
        return message

    def reply(self, message: dict, event: Event = Event.ANSWER, data: bytes = b"") -> None:
        """Send a frame of the exchange, which `event` moves on (after the answers owed
        to earlier puts: answers go in the order of their requests), and `data` in the
        same write."""
        if self.group:
            self.flush()
        self.conversation.send(event)
        self.stream.send(message, data)

    def send_error(self, exc: ProtocolError) -> None:
        """Answer with `exc`: closing wherever the exchange cannot go on in step after it,
        and not at all in the middle of a get's data, where no frame may come."""
        if self.group:
            with contextlib.suppress(OSError):
                self.flush()
        event = self.conversation.error_event(exc.closes)
        if not self.conversation.allows(Role.SERVER, event):
            self.conversation.close()
            return
        self.conversation.send(event)
        log.info("error %s %s: %s", self.peer, exc.code, clean(exc.message))
        self.server.metrics.error(exc.code)
        with contextlib.suppress(OSError):
            self.stream.send(exc.to_response())

    @property
    def acting(self) -> Account:
        """Who the request acts as; only ops that need no login run without one."""
        if self.account is None:
            raise AuthRequiredError("log in first")
        return self.account

    def dispatch(self, message: dict) -> bool:
        try:
            spec = op_spec(message)
            log.debug("request %s %s %s", self.peer, spec.name, clean(message.get("path", "")))
            if spec.needs_auth and self.account is None:
                raise AuthRequiredError("log in first")
            if spec.writes and not self.acting.can_write:
                raise ForbiddenError("this account may not write")
            args = parse_args(spec, message)
        except ProtocolError:
            if self.conversation.state is State.PUT_DATA:  # an eager put: its data follows the frame
                self.drain(message.get("size"))
            raise
        getattr(self, f"op_{spec.name}")(**args)
        return self.conversation.state is not State.CLOSED

    def drain(self, size: object) -> None:
        """Read and drop the data of an eager put that is refused, so that the refusal
        arrives in step. A size that cannot be trusted leaves nothing to do but close."""
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= EAGER_PUT_MAX:
            raise BadRequestError(
                f"an eager put must give a size of at most {EAGER_PUT_MAX} bytes", closes=True
            )
        try:
            with self.stream.timed(self.limits.stall_timeout):
                self.stream.recv_data(size, lambda chunk: None)
        except TimeoutError:
            raise TimedOutError(f"no data for {self.limits.stall_timeout:g} seconds") from None
        self.conversation.receive(Event.DATA_END)

    # -- ops: each answers through reply(); quit's answer closes the conversation --

    def op_login(self, user: str, password: str) -> None:
        host = self.client_address[0]
        self.tried_login = True
        account = self.config.users.get(user)
        banned = None
        # One check at a time per address, the ban looked at and the failure scored inside:
        # once an address is banned, not one more of its guesses is evaluated. The hash
        # is slow on purpose, and waits for no one: outside the turn (so is the slot).
        with paused(), self.server.login_slot(host):
            ban = self.server.defender.banned(host)
            if ban is not None:
                raise BusyError(f"your address is banned for {max(1, round(ban.until - time.time()))}s")
            valid = verify_password(password, account.password_hash if account else None)
            if not valid:
                event = Score.LOGIN_FAILED if account else Score.UNKNOWN_USER
                banned = self.server.defender.record(host, event)
        self.server.metrics.login(valid)
        if not valid:
            self.failed_logins += 1
            log.warning(
                "login failed %s user=%r",
                self.peer,
                clean(user),
                extra=self.fields("login_failed", user=user),
            )
            self.server.hooks.emit("login_failed", user=user, address=host)
            with paused():
                time.sleep(self.limits.login_delay)  # the same for every failure, the banning one too
            closes = banned is not None or self.failed_logins >= self.limits.max_failed_logins
            raise AuthFailedError("wrong user name or password", closes=closes)
        assert account is not None
        self.storage.ensure_home(account)
        if self.logged_in and self.account is not None:
            self.server.user_session_ended(self.account)
            self.logged_in = False
        if not self.server.user_session_started(account):
            raise BusyError(f"user {user!r} has {account.max_sessions} sessions open already")
        self.account, self.logged_in = account, True
        self.check_turns()
        self.server.defender.logged_in(host)
        log.info(
            "login %s user=%r permissions=%s",
            self.peer,
            clean(user),
            account.permissions,
            extra=self.fields("login"),
        )
        self.reply({"ok": True, "user": user, "permissions": account.permissions})

    def op_ls(self, path: str, md5: bool = False) -> None:
        vpath, entries = self.storage.list(self.acting, path, md5)
        for start in range(0, max(len(entries), 1), LS_PAGE):
            more = start + LS_PAGE < len(entries)
            page = entries[start : start + LS_PAGE]
            self.reply(
                {"ok": True, "path": vpath, "entries": page, "more": more},
                Event.PAGE if more else Event.ANSWER,
            )

    def op_stat(self, path: str) -> None:
        self.reply({"ok": True, **self.storage.stat(self.acting, path)})

    def op_get(self, path: str, offset: int, attributes: bool = False, eager: bool = False) -> None:
        started = time.monotonic()
        snapshot = self.storage.open_snapshot(self.acting, path)
        try:
            if offset > snapshot.size:
                raise BadRequestError(f"offset {offset} is past the end of the file ({snapshot.size} bytes)")
            header = {"ok": True, "size": snapshot.size, "md5": snapshot.md5, "offset": offset}
            if attributes:  # the attributes extension, asked for: a v1 header stays as it was
                header.update(mtime=snapshot.mtime, mode=snapshot.mode)
            count = snapshot.size - offset
            limiter = self.server.rate_limiter(self.acting)
            inline = eager and limiter is None and 0 < count <= EAGER_GET_INLINE
            data = snapshot.read(offset, count) if inline else b""
            try:
                with self.stream.timed(self.limits.stall_timeout if inline else self.stream.timeout):
                    self.reply(header, Event.HEADER, data)  # a small eager get's bytes go with it
                if not eager:  # an eager get's data follows its header unasked
                    self.receive(self.limits.idle_timeout, "ack or cancel")
                if self.conversation.state is State.IDLE:  # cancelled
                    self.log_transfer("get", path, 0, started, "cancelled")
                    return
                if not inline:
                    with self.stream.timed(self.limits.stall_timeout):
                        if limiter is None:
                            self.stream.send_file(snapshot.file, offset, count)
                        else:
                            self.stream.send_file(
                                snapshot.file, offset, count, limiter.consume, limiter.CHUNK
                            )
            except OSError as exc:  # includes a stall: the peer stopped reading
                self.log_transfer("get", path, 0, started, f"aborted ({exc.__class__.__name__})")
                raise
            self.conversation.send(Event.DATA_END)
            self.log_transfer("get", path, count, started, "ok")
            self.emit("download", path, size=snapshot.size, md5=snapshot.md5)
        finally:
            snapshot.close()

    def op_put(
        self,
        path: str,
        size: int,
        md5: str,
        overwrite: bool,
        parents: bool,
        mtime: float | None = None,
        mode: int | None = None,
        eager: bool = False,
    ) -> None:
        started = time.monotonic()
        if eager and size > EAGER_PUT_MAX:
            self.drain(size)  # refuses, closing: too big to drain
        if self.group and self.overlaps(path):
            self.flush()  # its checks must see the earlier put of that name (or of a parent) done
        try:
            upload = self.storage.begin_upload(self.acting, path, size, md5, overwrite, parents, mtime, mode)
        except ProtocolError:
            if eager:
                self.drain(size)
            raise
        count = size - upload.offset
        received = 0
        skip = upload.offset if eager else 0  # an eager put sends every byte: drop what is held already

        def counted(chunk: memoryview) -> None:
            nonlocal received, skip
            if skip:
                dropped = min(skip, len(chunk))
                chunk, skip = chunk[dropped:], skip - dropped
                if not chunk:
                    return
            upload.write(chunk)
            received += len(chunk)

        try:
            if not eager:
                self.reply({"ok": True, "offset": upload.offset}, Event.READY)
            limiter = self.server.rate_limiter(self.acting)
            write, chunk = (
                (counted, BUFFER_SIZE) if limiter is None else (_throttled(counted, limiter), limiter.CHUNK)
            )
            space = upload.space if not skip else None  # received in place only when nothing is dropped
            try:
                with self.stream.timed(self.limits.stall_timeout):
                    self.stream.recv_data(count + skip, write, chunk, space=space)
            except TimeoutError:
                raise TimedOutError(f"no data for {self.limits.stall_timeout:g} seconds") from None
            self.conversation.receive(Event.DATA_END)
            upload.seal()
        except BaseException as exc:
            kept = upload.abort()
            result = getattr(exc, "code", exc.__class__.__name__)
            self.log_transfer("put", path, received, started, f"failed ({result})", kept)
            raise
        self.join_group(Pending(upload, path, size, md5, count, started, upload.offset if eager else None))
        self.conversation.defer()
        if not (eager and len(self.group) < GROUP_MAX and self.stream.ready()):
            self.flush()  # else the next request is here already: it may join the group

    def answer_group(self) -> None:
        """The group's commit and answers, while a read waits for the peer (`when_idle`).
        An answer that cannot be written in time ends the session: the read it interrupts
        must not take that for the peer's silence and answer `timeout` after half a frame."""
        try:
            self.flush()
        except TimeoutError as exc:
            self.conversation.close()
            raise ConnectionAbortedError("the peer takes no answers") from exc

    def overlaps(self, path: str) -> bool:
        """Whether a put of `path` would touch a name a put in the group makes (the same
        file, a parent directory of it, or a file below it)."""
        try:
            parts = split_path(path)
        except ProtocolError:
            return False  # refused by its own checks, whatever the group holds
        if join_path(parts) in self.group_parents:
            return True  # a file of the group lies below it
        return any(join_path(parts[:depth]) in self.group_names for depth in range(1, len(parts) + 1))

    def join_group(self, pending: Pending) -> None:
        """Add a sealed put to the group, and its names to what `overlaps()` looks up."""
        self.group.append(pending)
        parts = split_path(pending.path)  # valid: the put got this far
        self.group_names.add(join_path(parts))
        self.group_parents.update(join_path(parts[:depth]) for depth in range(1, len(parts)))

    def flush(self) -> None:
        """Commit the group of sealed puts at once, then give their answers in order."""
        group, self.group = self.group, []
        self.group_names.clear()
        self.group_parents.clear()
        if not group:
            return
        try:
            failures = self.storage.commit_group([pending.upload for pending in group])
        except Exception:  # a bug: each put of the group gets `internal`, in its turn
            log.exception("internal error committing %d uploads for %s", len(group), self.peer)
            for pending in group:
                pending.upload.abort()
            failures = [InternalError("the server failed to store this file")] * len(group)
        answers: list[dict] = []
        for pending, failure in zip(group, failures, strict=True):
            if failure is None:
                self.log_transfer("put", pending.path, pending.count, pending.started, "ok")
                self.emit("upload", pending.path, size=pending.size, md5=pending.md5)
                self.conversation.send_deferred(Event.ANSWER)
                answer = {"ok": True, "size": pending.size, "md5": pending.md5}
                if pending.held is not None:  # eager: what was held already (all: identical, or linked)
                    answer["offset"] = pending.held
                answers.append(answer)
            else:
                self.log_transfer(
                    "put", pending.path, pending.count, pending.started, f"failed ({failure.code})"
                )
                log.info("error %s %s: %s", self.peer, failure.code, clean(failure.message))
                self.server.metrics.error(failure.code)
                self.conversation.send_deferred(Event.ERROR)
                answers.append(failure.to_response())
        self.stream.send_many(answers)  # in one write
        if self.turn is not None:
            self.turn.pass_on()  # between two groups, the others' turn

    def op_mkdir(self, path: str, parents: bool) -> None:
        self.storage.mkdir(self.acting, path, parents)
        log.info("mkdir %s %s", self.peer, clean(path), extra=self.fields("mkdir", path=path))
        self.emit("mkdir", path)
        self.reply({"ok": True})

    def op_rm(self, path: str, recursive: bool = False) -> None:
        self.storage.remove(self.acting, path, recursive)
        what = "rm -r" if recursive else "rm"
        log.info(
            "%s %s %s", what, self.peer, clean(path), extra=self.fields("rm", path=path, recursive=recursive)
        )
        self.emit("delete", path, **({"recursive": True} if recursive else {}))
        self.reply({"ok": True})

    def op_rename(self, path: str, to: str, overwrite: bool) -> None:
        self.storage.rename(self.acting, path, to, overwrite)
        log.info(
            "rename %s %s -> %s",
            self.peer,
            clean(path),
            clean(to),
            extra=self.fields("rename", path=path, to=to),
        )
        self.emit("rename", path, to=join_path(split_path(to)))
        self.reply({"ok": True})

    def op_usage(self) -> None:
        self.reply({"ok": True, **self.storage.home_usage(self.acting)})

    def op_quit(self) -> None:
        self.reply({"ok": True})  # the conversation is now closed

    def emit(self, event: str, path: str, **more: object) -> None:
        """Tell the hooks (never waiting for them); `path` as the canonical virtual path."""
        if event not in self.server.hooks.events:
            return  # no hook wants it: nothing to work out
        user = self.account.name if self.account and self.account.name else "anonymous"
        where = join_path(split_path(path))
        self.server.hooks.emit(event, user=user, path=where, address=self.client_address[0], **more)

    def fields(self, event: str, **more: object) -> dict:
        """The structured fields of an event line (for `log_format: json`)."""
        user = self.account.name if self.account and self.account.name else "anonymous"
        cleaned = {key: clean(value) if isinstance(value, str) else value for key, value in more.items()}
        return {"event": event, "peer": self.peer, "user": clean(user), **cleaned}

    def log_transfer(
        self, op: str, path: str, count: int, started: float, result: str, kept: int | None = None
    ) -> None:
        """One line per transfer; an interrupted put says how many bytes it kept for a resume."""
        seconds = time.monotonic() - started
        fields = self.fields(
            "transfer", op=op, path=path, bytes=count, seconds=round(seconds, 3), result=result
        )
        if kept is not None:
            fields["kept"] = kept
        self.server.metrics.transfer(op, result.split(" ", 1)[0], count, seconds)
        log.info(
            "transfer %s %s user=%s path=%r bytes=%d seconds=%.3f result=%s%s",
            op,
            self.peer,
            fields["user"],
            clean(path),
            count,
            seconds,
            result,
            "" if kept is None else f" kept={kept}",
            extra=fields,
        )
