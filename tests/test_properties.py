"""Property-based tests: framing under any split, path resolution under any input."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftpproto import BadRequestError, ForbiddenError, FrameDecoder, ProtocolError, encode_frame, split_path
from ftpserver.config import Account
from ftpserver.storage import LocalStorage, Snapshot

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
messages = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_any_split_of_a_valid_stream_decodes_to_the_same_messages(batch, data):
    stream = b"".join(encode_frame(m) for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder, got, start = FrameDecoder(), [], 0
    for cut in [*cuts, len(stream)]:
        decoder.feed(stream[start:cut])
        start = cut
        while (message := decoder.next_message()) is not None:
            got.append(message)
    assert got == batch and decoder.buffered == 0


path_text = st.lists(
    st.sampled_from(["..", ".", "", "a", "b", "link", "out", "é", "x" * 10]), max_size=8
).map("/".join) | st.text(max_size=40)


@given(path_text)
def test_split_path_never_climbs(path):
    try:
        parts = split_path(path)
    except (BadRequestError, ForbiddenError):
        return
    assert all(part not in ("", ".", "..") and "/" not in part for part in parts)


SECRET = b"outside the home"


@pytest.fixture(scope="module")
def home_with_links(tmp_path_factory) -> tuple[LocalStorage, Account, Path]:
    root = tmp_path_factory.mktemp("root")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret").write_bytes(SECRET)
    home = root / "home"
    (home / "a" / "b").mkdir(parents=True)
    os.symlink(outside, home / "out")
    os.symlink(outside, home / "a" / "out")
    os.symlink(home / "a", home / "link")  # absolute, into the home: followed from the home
    os.symlink("../..", home / "a" / "b" / "link")
    os.symlink("b/..", home / "a" / "up")
    account = Account("user", home.resolve(), "rw")
    return LocalStorage(root.resolve()), account, outside


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=300)
@given(path_text)
def test_no_path_ever_reaches_outside_the_home(home_with_links, path):
    storage, account, outside = home_with_links
    for read in (storage.stat, storage.list, storage.open_snapshot):
        try:
            result = read(account, path)
        except ProtocolError:
            continue
        if isinstance(result, Snapshot):
            with result.file:
                assert result.file.read() != SECRET
        else:
            assert "secret" not in repr(result) and hashlib.md5(SECRET).hexdigest() not in repr(result)
    with contextlib.suppress(ProtocolError):
        storage.mkdir(account, path, parents=True)
    assert os.listdir(outside) == ["secret"]
