"""Framing: the decoder fed whole, split and hostile byte streams; the stream reading a pipelining peer."""

import socket
import struct
import threading

import pytest

from ftpproto import BadRequestError, FrameDecoder, FrameTooLargeError, encode_frame
from ftpproto.framing import MAX_FRAME
from ftpproto.io import FrameStream
from ftpproto.io import stream as stream_module

MESSAGES = [{"op": "ls", "path": "/"}, {"op": "put", "path": "中文 😀", "size": 1}, {"a": [1, {"b": None}]}]


def decode_all(decoder: FrameDecoder) -> list[dict]:
    out = []
    while (message := decoder.next_message()) is not None:
        out.append(message)
    return out


def test_several_frames_in_one_chunk():
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode_frame(m) for m in MESSAGES))
    assert decode_all(decoder) == MESSAGES
    assert decoder.buffered == 0


def test_one_byte_at_a_time():
    stream = b"".join(encode_frame(m) for m in MESSAGES)
    decoder = FrameDecoder()
    got = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        got += decode_all(decoder)
    assert got == MESSAGES


def test_partial_header_needs_more():
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00")
    assert decoder.next_message() is None


def test_bytes_after_a_frame_stay_buffered_for_a_data_phase():
    decoder = FrameDecoder()
    decoder.feed(encode_frame({"op": "x"}) + b"RAW")
    assert decoder.next_message() == {"op": "x"}
    assert decoder.next_message() is None  # "RAW" is shorter than a header
    assert decoder.take_buffered(10) == b"RAW"
    assert decoder.buffered == 0


def test_frame_of_exactly_the_cap_is_accepted():
    body = b'{"a":"' + b"x" * (MAX_FRAME - 8) + b'"}'
    assert len(body) == MAX_FRAME
    decoder = FrameDecoder()
    decoder.feed(struct.pack("!I", len(body)) + body)
    assert decoder.next_message() == {"a": "x" * (MAX_FRAME - 8)}


@pytest.mark.parametrize("length", [MAX_FRAME + 1, 0xFFFFFFFF])
def test_oversized_length_is_refused_before_the_body_arrives(length):
    decoder = FrameDecoder()
    decoder.feed(struct.pack("!I", length))
    with pytest.raises(FrameTooLargeError) as info:
        decoder.next_message()
    assert info.value.closes


@pytest.mark.parametrize(
    "body, why",
    [
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_bad_bodies_are_closing_bad_requests(body, why):
    decoder = FrameDecoder()
    decoder.feed(struct.pack("!I", len(body)) + body)
    with pytest.raises(BadRequestError, match=why) as info:
        decoder.next_message()
    assert info.value.closes


def test_zero_length_frame():
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(BadRequestError, match="zero-length"):
        decoder.next_message()


def test_encode_refuses_messages_over_the_cap():
    with pytest.raises(FrameTooLargeError):
        encode_frame({"a": "x" * MAX_FRAME})


def test_encode_is_utf8_json_with_big_endian_length():
    frame = encode_frame({"op": "é"})
    (length,) = struct.unpack("!I", frame[:4])
    assert frame[4:] == '{"op":"é"}'.encode()
    assert length == len(frame) - 4


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_constants_are_refused(constant):
    body = b'{"x": ' + constant + b"}"
    decoder = FrameDecoder()
    decoder.feed(struct.pack("!I", len(body)) + body)
    with pytest.raises(BadRequestError, match="not valid JSON"):
        decoder.next_message()


def test_a_stream_reads_in_bigger_pieces_while_a_peer_pipelines_and_loses_nothing():
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(10)
        reader = FrameStream(left)
        right.sendall(encode_frame({"op": "stat", "path": "alone"}))
        assert reader.recv() == {"op": "stat", "path": "alone"}
        assert len(reader._control) == stream_module.CONTROL_BUFFER_SIZE  # a lone request: small
        messages = [{"op": "put", "path": f"f{i}", "data": "x" * (i % 300)} for i in range(2000)]
        sender = threading.Thread(target=right.sendall, args=(b"".join(map(encode_frame, messages)),))
        sender.start()
        received, sizes = [], set()
        for _ in messages:
            received.append(reader.recv())
            sizes.add(len(reader._control))
        sender.join(10)
        assert received == messages  # frames across the switches of buffer arrive whole
        assert stream_module.PIPELINE_BUFFER_SIZE in sizes
        right.sendall(encode_frame({"op": "stat", "path": "after"}))
        assert reader.recv() == {"op": "stat", "path": "after"}
        assert len(reader._control) == stream_module.CONTROL_BUFFER_SIZE  # the burst is over
