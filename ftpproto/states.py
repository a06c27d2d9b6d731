"""The states of a connection and the legal events between them, as one table.

Both sides keep a `Conversation` and drive it through the same `TABLE`: each
frame or data phase a side sends is `send()`, each one it gets is `receive()`.
An event the table does not allow never passes silently:

- from the peer, it raises the protocol error it means: the server answers a
  stray `ack` with a `bad_request` (as if it were a request) and stays, a
  request where `ack`/`cancel` was due with a closing one; the client gives up
  on a server that broke the protocol (`ProtocolMismatchError`);
- from this side, it raises `StateError`: a bug of ours, never sent on.

The exchanges (docs/protocol.md, sections 4 to 10), as states:

    GREETING --hello--> IDLE --request--> ANSWERING --answer|error--> IDLE
                             --ls------> LISTING --page...--> --answer|error--> IDLE
                             --get-----> GET_ASKED --header--> GET_OFFERED
                                           GET_OFFERED --ack--> GET_DATA --data end--> IDLE
                                           GET_OFFERED --cancel--> IDLE
                             --put-----> PUT_ASKED --ready--> PUT_DATA --data end--> PUT_CHECKING
                                           PUT_CHECKING --answer|error--> IDLE
                             --quit----> QUITTING --answer--> CLOSED

and from any state where the server may send a frame, a `fatal` error (one
after which it closes) leads to CLOSED. The eager extension (docs/protocol.md
section 16) adds two exchanges that need nothing from the client once sent:

                             --get eager-> GET_EAGER --header--> GET_DATA (no ack)
                             --put eager-> PUT_DATA (the data follows the request)

A client may send requests before the answers to earlier ones arrive, as long
as none of them waits for the client (an `ack`, or a put's data after its
offset): its `Conversation` then keeps the exchanges behind the first in a
queue, and the server's answers move them in order. This module does no I/O.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any

from .errors import BadRequestError, ProtocolError, ProtocolMismatchError, error_from_response

__all__ = [
    "EXCHANGES",
    "TABLE",
    "Conversation",
    "Event",
    "Role",
    "State",
    "StateError",
    "answer_event",
    "client_event",
    "exchange_kind",
]


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    GREETING = "before the greeting"
    IDLE = "between exchanges"
    ANSWERING = "waiting for an answer"  # login, stat, mkdir, rm, and ops the server does not know
    LISTING = "listing"  # ls: pages until one without "more"
    GET_ASKED = "waiting for a get header"
    GET_OFFERED = "waiting for ack or cancel"
    GET_EAGER = "waiting for an eager get's header"  # its data follows the header, unasked
    GET_DATA = "sending a get's data"  # the server streams the file: no frame either way
    PUT_ASKED = "waiting for a put offset"
    PUT_DATA = "receiving a put's data"  # the client streams the file: no frame from it
    PUT_CHECKING = "checking a put"  # the bytes are in; the server's verdict comes
    QUITTING = "quitting"
    CLOSED = "closed"


class Event(enum.Enum):
    HELLO = "hello"  # server: the greeting
    REQUEST = "request"  # client: a request frame; its op picks the exchange (EXCHANGES)
    ACK = "ack"  # client, after a get header: send the data
    CANCEL = "cancel"  # client, after a get header: do not
    ANSWER = "answer"  # server: the {"ok": true} that ends an exchange
    PAGE = "page"  # server: an ls page with more to come
    HEADER = "header"  # server: a get's size, md5 and offset
    READY = "ready"  # server: a put's offset; the data may come
    ERROR = "error"  # server: an error answer after which the connection stays usable
    FATAL = "fatal"  # server: an error answer after which it closes
    DATA_END = "data end"  # the sender of a data phase: its last byte went


S, C = Role.SERVER, Role.CLIENT

# The exchange a request opens, by its kind (`exchange_kind()`); any other op, known or
# not, waits for one answer.
EXCHANGES: dict[str, State] = {
    "ls": State.LISTING,
    "get": State.GET_ASKED,
    "put": State.PUT_ASKED,
    "get eager": State.GET_EAGER,
    "put eager": State.PUT_DATA,
    "quit": State.QUITTING,
}
# Where an exchange needs nothing more from the client: another request may follow it.
PIPELINE_STATES = (State.ANSWERING, State.LISTING, State.GET_EAGER, State.GET_DATA, State.PUT_CHECKING)
# Requests that need the client again after they are sent (an ack; a put's data after
# its offset): nothing may be sent ahead of their answers, nor they ahead of others'.
NEEDS_CLIENT = ("get", "put")

# (state, who acts, event) -> the next state. Nothing else is legal.
TABLE: dict[tuple[State, Role, Event], State] = {
    (State.GREETING, S, Event.HELLO): State.IDLE,
    (State.IDLE, C, Event.REQUEST): State.ANSWERING,  # or EXCHANGES[op]
    (State.ANSWERING, S, Event.ANSWER): State.IDLE,
    (State.ANSWERING, S, Event.ERROR): State.IDLE,
    (State.LISTING, S, Event.PAGE): State.LISTING,
    (State.LISTING, S, Event.ANSWER): State.IDLE,
    (State.LISTING, S, Event.ERROR): State.IDLE,
    (State.GET_ASKED, S, Event.HEADER): State.GET_OFFERED,
    (State.GET_ASKED, S, Event.ERROR): State.IDLE,
    (State.GET_OFFERED, C, Event.ACK): State.GET_DATA,
    (State.GET_OFFERED, C, Event.CANCEL): State.IDLE,
    (State.GET_EAGER, S, Event.HEADER): State.GET_DATA,
    (State.GET_EAGER, S, Event.ERROR): State.IDLE,
    (State.GET_DATA, S, Event.DATA_END): State.IDLE,
    (State.PUT_ASKED, S, Event.READY): State.PUT_DATA,
    (State.PUT_ASKED, S, Event.ERROR): State.IDLE,
    (State.PUT_DATA, C, Event.DATA_END): State.PUT_CHECKING,
    (State.PUT_CHECKING, S, Event.ANSWER): State.IDLE,
    (State.PUT_CHECKING, S, Event.ERROR): State.IDLE,
    (State.QUITTING, S, Event.ANSWER): State.CLOSED,
}
# A closing error may end the connection wherever the server may send a frame:
# everywhere but in the middle of a get's data, and after the end.
TABLE.update(
    {(state, S, Event.FATAL): State.CLOSED for state in State if state not in (State.GET_DATA, State.CLOSED)}
)

# What the server expects from the client, where a wrong frame is worth naming.
_EXPECTED = {State.GET_OFFERED: "expected 'ack' or 'cancel' after a get header"}


class StateError(RuntimeError):
    """This side was about to break the protocol: a bug in this program, not the peer's doing."""


class Conversation:
    """One connection's place in the protocol, as one side (`role`) sees it.

    `state` is the exchange in progress (the oldest one, when a client has sent
    several requests ahead: those wait in `queue`, in order, each in the state it
    opened with, and the server's events move the oldest)."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.peer = C if role is S else S
        self.state = State.GREETING
        self.op: str | None = None  # the kind of the exchange in progress
        self.queue: deque[tuple[State, str]] = deque()  # client role: exchanges behind it
        self.deferred: deque[str] = deque()  # server role: puts whose answers are owed

    def __repr__(self) -> str:
        return f"<Conversation {self.role.value} {self.state.name} op={self.op} queued={len(self.queue)}>"

    def allows(self, role: Role, event: Event) -> bool:
        return (self.state, role, event) in TABLE

    @property
    def outstanding(self) -> int:
        """Exchanges begun and not yet ended (0 between exchanges)."""
        if self.state in (State.IDLE, State.GREETING, State.CLOSED):
            return 0
        return 1 + len(self.queue)

    def may_pipeline(self, kind: str) -> bool:
        """Whether a client may send a request of `kind` now, before earlier answers came."""
        return (
            self.role is C
            and kind not in NEEDS_CLIENT
            and self.state in PIPELINE_STATES
            and all(state in PIPELINE_STATES or state is State.PUT_DATA for state, _ in self.queue)
        )

    def send(self, event: Event, op: str | None = None) -> None:
        """Record an event of this side's, before it goes on the wire. A client's request
        behind unanswered ones is queued (see `may_pipeline`); its eager put's `DATA_END`
        is the newest exchange's."""
        if event is Event.REQUEST and self.state is not State.IDLE and self.may_pipeline(op or ""):
            self.queue.append((EXCHANGES.get(op or "", State.ANSWERING), op or ""))
            return
        if event is Event.DATA_END and self.role is C and self.queue:
            state, kind = self.queue[-1]
            if state is not State.PUT_DATA:
                raise StateError(f"client may not send data end {state.value}")
            self.queue[-1] = (State.PUT_CHECKING, kind)
            return
        if not self.allows(self.role, event):
            raise StateError(f"{self.role.value} may not send {event.value} {self.state.value}")
        if self.deferred and event is not Event.DATA_END:
            raise StateError(f"server may not send {event.value} before {len(self.deferred)} answers owed")
        self._move(self.role, event, op)

    def defer(self) -> None:
        """Server: hold back the answer of the put just received, to give it with others
        once the group is durable (a group commit); the next request may be read.
        Answers stay in order: nothing else may be sent while any is owed."""
        if self.role is not S or self.state is not State.PUT_CHECKING:
            raise StateError(f"only a put's answer may be deferred, not {self.op} {self.state.value}")
        self.deferred.append(self.op or "put")
        self.state, self.op = State.IDLE, None

    def send_deferred(self, event: Event) -> None:
        """Server: record the oldest owed answer (`ANSWER` or `ERROR`) as it goes on the wire."""
        if not self.deferred or event not in (Event.ANSWER, Event.ERROR):
            raise StateError(f"no deferred answer to send as {event.value}")
        self.deferred.popleft()

    def receive(self, event: Event, op: str | None = None) -> None:
        """Record the peer's event; raise the protocol error it means if the table forbids it."""
        if not self.allows(self.peer, event):
            raise self._illegal(event, op)
        self._move(self.peer, event, op)

    def close(self) -> None:
        """The connection is gone, or out of step: nothing more may cross."""
        self.state, self.op = State.CLOSED, None
        self.queue.clear()
        self.deferred.clear()

    def error_event(self, closes: bool) -> Event:
        """What an error answer from the server is here: `ERROR` where the connection
        stays in step after it, else `FATAL`, whatever the error's own default."""
        return _error_event(self.state, closes)

    def _move(self, role: Role, event: Event, op: str | None) -> None:
        state = TABLE[self.state, role, event]
        if event is Event.REQUEST:
            self.op = op
            state = EXCHANGES.get(op or "", State.ANSWERING)
        if state is State.IDLE and self.queue:
            state, self.op = self.queue.popleft()  # the next exchange sent ahead is now answered
        elif state in (State.IDLE, State.CLOSED):
            self.op = None
            self.queue.clear()
        self.state = state

    def _illegal(self, event: Event, op: str | None) -> ProtocolError:
        if self.role is C:
            self.close()
            return ProtocolMismatchError(f"the server sent {event.value} {self.state.value}")
        if self.state is State.IDLE and event in (Event.ACK, Event.CANCEL):
            # A stray frame between exchanges is answered like a request, with this error,
            # and the connection stays in step.
            self.state = State.ANSWERING
            return BadRequestError(f"'{event.value}' is only valid right after a get header")
        expected = _EXPECTED.get(self.state, f"{event.value} is not allowed {self.state.value}")
        return BadRequestError(expected, closes=True)


def exchange_kind(message: dict[str, Any]) -> str | None:
    """A request's kind: its op, or `get eager`/`put eager` for the eager extension's
    (any `eager` but false counts, so that a put whose data follows is always read as one)."""
    op = message.get("op")
    if not isinstance(op, str):
        return None
    if op in ("get", "put") and message.get("eager", False) is not False:
        return f"{op} eager"
    return op


def client_event(state: State, message: dict[str, Any]) -> tuple[Event, str | None]:
    """The event a frame from the client stands for, and its kind: `ack` and `cancel`
    are replies within a get exchange; any other frame is a request."""
    op = message.get("op")
    if op == "ack":
        return Event.ACK, None
    if op == "cancel":
        return Event.CANCEL, None
    return Event.REQUEST, exchange_kind(message)


def _error_event(state: State, closes: bool) -> Event:
    return Event.ERROR if not closes and (state, S, Event.ERROR) in TABLE else Event.FATAL


def answer_event(state: State, message: dict[str, Any]) -> tuple[Event, ProtocolError | None]:
    """The event a frame from the server stands for in `state`, with the error it
    carries if it is an error answer. Before the greeting, anything but an error
    is taken for a greeting (whose fields the client checks); after it, anything
    but `{"ok": true}` is an error answer."""
    if state is State.GREETING and message.get("ok") is not False:
        return Event.HELLO, None
    if message.get("ok") is not True:
        error = error_from_response(message)
        return _error_event(state, error.closes), error
    if state is State.LISTING and message.get("more"):
        return Event.PAGE, None
    if state in (State.GET_ASKED, State.GET_EAGER):
        return Event.HEADER, None
    if state is State.PUT_ASKED:
        return Event.READY, None
    return Event.ANSWER, None
