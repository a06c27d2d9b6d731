"""The connection state machine (ftpproto.states) on its own: the table, both roles
driving it in lock-step, and what an illegal event raises on each side."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftpclient import Client
from ftpproto import (
    BadRequestError,
    ChecksumMismatchError,
    Conversation,
    Event,
    ProtocolMismatchError,
    Role,
    State,
    StateError,
)
from ftpproto.io import FrameStream, PeerClosedError, RateLimiter
from ftpproto.states import EXCHANGES, TABLE, answer_event, client_event

pytestmark = pytest.mark.timeout(60)

C, S = Role.CLIENT, Role.SERVER


def pair() -> tuple[Conversation, Conversation]:
    return Conversation(Role.CLIENT), Conversation(Role.SERVER)


def play(client: Conversation, server: Conversation, steps: list[tuple[Role, Event, str | None]]) -> None:
    """Each step sent by one side and received by the other; both must agree throughout."""
    for role, event, op in steps:
        sender, receiver = (client, server) if role is C else (server, client)
        sender.send(event, op)
        receiver.receive(event, op)
        assert client.state is server.state and client.op == server.op, (role, event)


EXCHANGE_SCRIPTS = {
    "get": [
        (C, Event.REQUEST, "get"),
        (S, Event.HEADER, None),
        (C, Event.ACK, None),
        (S, Event.DATA_END, None),
    ],
    "get cancelled": [(C, Event.REQUEST, "get"), (S, Event.HEADER, None), (C, Event.CANCEL, None)],
    "put": [
        (C, Event.REQUEST, "put"),
        (S, Event.READY, None),
        (C, Event.DATA_END, None),
        (S, Event.ANSWER, None),
    ],
    "put refused": [(C, Event.REQUEST, "put"), (S, Event.ERROR, None)],
    "put failed its check": [
        (C, Event.REQUEST, "put"),
        (S, Event.READY, None),
        (C, Event.DATA_END, None),
        (S, Event.ERROR, None),
    ],
    "ls over pages": [
        (C, Event.REQUEST, "ls"),
        (S, Event.PAGE, None),
        (S, Event.PAGE, None),
        (S, Event.ANSWER, None),
    ],
    "stat": [(C, Event.REQUEST, "stat"), (S, Event.ANSWER, None)],
    "unknown op": [(C, Event.REQUEST, "chmod"), (S, Event.ERROR, None)],
}


@pytest.mark.parametrize("name", sorted(EXCHANGE_SCRIPTS))
def test_every_exchange_returns_both_sides_to_idle(name):
    client, server = pair()
    play(client, server, [(S, Event.HELLO, None)])
    play(client, server, EXCHANGE_SCRIPTS[name])
    assert client.state is server.state is State.IDLE and client.op is None


def test_a_client_may_send_self_contained_requests_ahead_and_answers_move_them_in_order():
    client = Conversation(Role.CLIENT)
    client.receive(Event.HELLO)
    client.send(Event.REQUEST, "put eager")
    client.send(Event.DATA_END)
    client.send(Event.REQUEST, "put eager")  # sent before the first answer came
    client.send(Event.DATA_END)
    client.send(Event.REQUEST, "get eager")
    client.send(Event.REQUEST, "ls")
    client.send(Event.REQUEST, "stat")
    assert client.outstanding == 5 and client.state is State.PUT_CHECKING
    client.receive(Event.ANSWER)  # first put
    assert client.state is State.PUT_CHECKING and client.outstanding == 4
    client.receive(Event.ERROR)  # second put refused (after its data was drained)
    client.receive(Event.HEADER)
    assert client.state is State.GET_DATA
    client.receive(Event.DATA_END)
    client.receive(Event.PAGE)
    client.receive(Event.ANSWER)
    assert client.state is State.ANSWERING  # the stat
    client.receive(Event.ANSWER)
    assert client.state is State.IDLE and client.outstanding == 0


def test_nothing_goes_ahead_of_an_exchange_that_waits_for_the_client():
    client = Conversation(Role.CLIENT)
    client.receive(Event.HELLO)
    client.send(Event.REQUEST, "get")  # a v1 get: its header must be acked or cancelled
    client.receive(Event.HEADER)
    for kind in ("ls", "put eager", "get eager"):
        assert not client.may_pipeline(kind)
        with pytest.raises(StateError):
            client.send(Event.REQUEST, kind)
    client.send(Event.CANCEL)
    client.send(Event.REQUEST, "put eager")
    assert not client.may_pipeline("stat")  # not in the middle of the put's own data
    client.send(Event.DATA_END)
    assert not client.may_pipeline("get")  # a v1 get would need an ack later: not behind others
    assert client.may_pipeline("stat") and client.may_pipeline("quit")
    with pytest.raises(StateError):
        client.send(Event.REQUEST, "put")
    server = Conversation(Role.SERVER)
    server.send(Event.HELLO)
    server.receive(Event.REQUEST, "stat")
    assert not server.may_pipeline("ls")  # only a client sends ahead


def test_quit_ends_the_conversation():
    client, server = pair()
    play(client, server, [(S, Event.HELLO, None), (C, Event.REQUEST, "quit"), (S, Event.ANSWER, None)])
    assert client.state is State.CLOSED
    with pytest.raises(StateError):
        client.send(Event.REQUEST, "ls")


def test_a_stray_ack_between_exchanges_is_refused_and_the_connection_stays():
    server = Conversation(Role.SERVER)
    server.send(Event.HELLO)
    with pytest.raises(BadRequestError) as raised:
        server.receive(*client_event(server.state, {"op": "ack"}))
    assert not raised.value.closes and raised.value.message == "'ack' is only valid right after a get header"
    assert server.state is State.ANSWERING  # answered like a request...
    assert server.error_event(closes=False) is Event.ERROR  # ...by an error that keeps the connection
    server.send(Event.ERROR)
    assert server.state is State.IDLE
    server.receive(Event.REQUEST, "stat")  # and the next request is served
    assert server.state is State.ANSWERING


def test_between_exchanges_the_server_sends_no_answer_nobody_asked_for():
    """After a get's last byte or a cancel, an error of the server's own is no answer to
    anything: only a closing one (a time-out, a broken frame) may go, never one that stays."""
    server = Conversation(Role.SERVER)
    server.send(Event.HELLO)
    server.receive(Event.REQUEST, "get")
    server.send(Event.HEADER)
    server.receive(Event.CANCEL)
    assert server.state is State.IDLE
    assert not server.allows(S, Event.ERROR) and server.error_event(closes=False) is Event.FATAL


def test_a_request_where_ack_or_cancel_is_due_closes():
    server = Conversation(Role.SERVER)
    server.send(Event.HELLO)
    server.receive(Event.REQUEST, "get")
    server.send(Event.HEADER)
    with pytest.raises(BadRequestError) as raised:
        server.receive(*client_event(server.state, {"op": "stat", "path": "x"}))
    assert raised.value.closes and raised.value.message == "expected 'ack' or 'cancel' after a get header"
    assert server.error_event(closes=False) is Event.FATAL
    server.send(Event.FATAL)
    assert server.state is State.CLOSED


def test_an_error_in_a_data_phase_is_fatal_and_inside_a_gets_data_no_frame_may_go():
    server = Conversation(Role.SERVER)
    server.send(Event.HELLO)
    server.receive(Event.REQUEST, "put")
    server.send(Event.READY)
    assert server.state is State.PUT_DATA
    assert server.error_event(closes=False) is Event.FATAL  # e.g. a full disk half-way through
    server = Conversation(Role.SERVER)
    server.send(Event.HELLO)
    server.receive(Event.REQUEST, "get")
    server.send(Event.HEADER)
    server.receive(Event.ACK)
    assert not server.allows(S, Event.FATAL) and not server.allows(S, Event.ERROR)
    with pytest.raises(StateError):
        server.send(Event.FATAL)


def test_our_own_illegal_event_is_a_state_error_not_a_frame():
    server = Conversation(Role.SERVER)
    with pytest.raises(StateError):
        server.send(Event.ANSWER)  # an answer before the greeting
    client = Conversation(Role.CLIENT)
    client.receive(Event.HELLO)
    with pytest.raises(StateError):
        client.send(Event.ACK)  # no get header to ack
    assert client.state is State.IDLE


def test_a_client_gives_up_on_a_server_out_of_step():
    client = Conversation(Role.CLIENT)
    client.receive(Event.HELLO)
    with pytest.raises(ProtocolMismatchError) as raised:
        client.receive(Event.HEADER)  # nothing was asked
    assert raised.value.closes and client.state is State.CLOSED


@pytest.mark.parametrize(
    "state, message, event",
    [
        (State.GREETING, {"type": "hello", "proto": 1}, Event.HELLO),
        (State.GREETING, {"ok": False, "error": "busy", "message": "full"}, Event.FATAL),
        (State.LISTING, {"ok": True, "entries": [], "more": True}, Event.PAGE),
        (State.LISTING, {"ok": True, "entries": [], "more": False}, Event.ANSWER),
        (State.GET_ASKED, {"ok": True, "size": 1, "md5": "0" * 32, "offset": 0}, Event.HEADER),
        (State.PUT_ASKED, {"ok": True, "offset": 0}, Event.READY),
        (State.PUT_CHECKING, {"ok": False, "error": "checksum_mismatch", "message": "x"}, Event.ERROR),
        (State.ANSWERING, {"ok": False, "error": "timeout", "message": "x"}, Event.FATAL),
        (State.ANSWERING, {"no": "ok field"}, Event.ERROR),
        (State.PUT_DATA, {"ok": False, "error": "quota_exceeded", "message": "x"}, Event.FATAL),
    ],
)
def test_answers_are_classified_by_state(state, message, event):
    assert answer_event(state, message)[0] is event


def test_an_error_answer_carries_its_error():
    event, error = answer_event(
        State.PUT_CHECKING, {"ok": False, "error": "checksum_mismatch", "message": "m"}
    )
    assert event is Event.ERROR and isinstance(error, ChecksumMismatchError) and error.message == "m"


def test_the_table_has_no_dead_ends():
    """Every state is reachable from the greeting, and the end is reachable from every state."""
    edges: dict[State, set[State]] = {state: set() for state in State}
    for (state, _role, event), target in TABLE.items():
        edges[state].add(target)
        if event is Event.REQUEST:
            edges[state] |= set(EXCHANGES.values())
    reached, todo = {State.GREETING}, [State.GREETING]
    while todo:
        for target in edges[todo.pop()] - reached:
            reached.add(target)
            todo.append(target)
    assert reached == set(State)
    for state in State:
        seen, todo = {state}, [state]
        while todo:
            for target in edges[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        assert State.CLOSED in seen, state


@given(
    st.lists(
        st.tuples(
            st.sampled_from(Role),
            st.sampled_from(Event),
            st.sampled_from(["ls", "get", "put", "quit", "stat"]),
        ),
        max_size=40,
    )
)
def test_any_sequence_of_events_keeps_both_sides_in_one_state(steps):
    """Feed both sides the same events; whatever is refused is refused by both, and
    whatever passes leaves them agreeing."""
    client, server = pair()
    for role, event, op in steps:
        sender = client if role is C else server
        receiver = server if role is C else client
        op = op if event is Event.REQUEST else None
        if (
            event is Event.REQUEST
            and role is C
            and client.state is not State.IDLE
            and client.may_pipeline(op)
        ):
            continue  # sent ahead: the server reads it only when the exchange before it ends
        legal = (sender.state, role, event) in TABLE
        if not legal:
            with pytest.raises(StateError):
                sender.send(event, op)
            continue
        sender.send(event, op)
        receiver.receive(event, op)
        assert client.state is server.state and client.op == server.op


# -- both sides on real sockets ----------------------------------------------------------


def test_a_server_failure_after_a_gets_last_byte_closes_without_a_frame(server, raw, monkeypatch):
    """Nothing may come that the client would read as the answer to its next request."""
    from ftpserver.handler import Session

    real = Session.log_transfer

    def fails_after_the_data(self, op, path, count, started, result, kept=None):
        real(self, op, path, count, started, result, kept)
        if op == "get":
            raise RuntimeError("the log broke after the transfer")

    monkeypatch.setattr(Session, "log_transfer", fails_after_the_data)
    (server.root / "f.txt").write_bytes(b"x" * 120)
    for reply in ("ack", "cancel"):
        stream = raw()
        header = stream.request("get", path="f.txt")
        stream.send({"op": reply})
        if reply == "ack":
            data = bytearray()
            stream.recv_data(header["size"], data.extend)
            assert bytes(data) == b"x" * 120
        stream.send({"op": "stat", "path": "f.txt"})
        stream.sock.settimeout(5)
        with pytest.raises(PeerClosedError):
            stream.recv()  # no stray `internal`, no stat answer one behind: the end


def test_a_client_interrupted_inside_a_put_closes_without_writing_into_the_data(server, tmp_path):
    data = bytes(range(256)) * 4096  # 1 MiB
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    client = Client("127.0.0.1", server.port, timeout=10)

    def interrupt(done: int, total: int) -> None:
        if done > 0:
            raise KeyboardInterrupt

    client.pace = RateLimiter(4 * 1024 * 1024)  # small chunks, so the interrupt comes mid-file
    with pytest.raises(KeyboardInterrupt):
        client.put(source, "/big.bin", progress=interrupt)
    client.close()  # no StateError, no quit frame inside the upload's bytes
    assert client.closed and client.sock.fileno() == -1
    with Client("127.0.0.1", server.port, timeout=10) as again:
        transfer = again.put(source, "/big.bin")  # resumes from a partial that is a true prefix
        assert 0 < transfer.size - transfer.sent < len(data) and again.stat("/big.bin").md5 == transfer.md5
    assert (server.root / "big.bin").read_bytes() == data


def test_a_malformed_listing_page_closes_the_client(scripted_listing):
    client = scripted_listing
    with pytest.raises(ProtocolMismatchError):
        client.ls("/")
    assert client.closed
    client.close()  # nothing to say: no StateError


@pytest.fixture
def scripted_listing() -> Iterator[Client]:
    """A server whose ls answers a first page with more to come and an unsafe name."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                stream = FrameStream(conn)
                stream.set_timeout(10)
                stream.send({"type": "hello", "proto": 1, "server": "liar/1", "auth": "optional"})
                assert stream.recv()["op"] == "ls"
                entry = {"name": "../x", "type": "file", "size": 1, "mtime": 0}
                stream.send({"ok": True, "path": "/", "entries": [entry], "more": True})
                with pytest.raises(PeerClosedError):
                    stream.recv()  # the client hangs up: it reads no second page, sends no quit
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = Client("127.0.0.1", listener.getsockname()[1], timeout=10)
    yield client
    client.close()
    thread.join(10)
    listener.close()
    assert not thread.is_alive() and failures == []
