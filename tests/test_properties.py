"""Property-based tests: framing under any split, path resolution under any input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftpproto import BadRequestError, ForbiddenError, FrameDecoder, encode_frame, split_path
from ftpserver.config import Account
from ftpserver.storage import Storage

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


@pytest.fixture(scope="module")
def home_with_links(tmp_path_factory) -> tuple[Storage, Account, Path]:
    root = tmp_path_factory.mktemp("root")
    outside = tmp_path_factory.mktemp("outside")
    home = root / "home"
    (home / "a" / "b").mkdir(parents=True)
    os.symlink(outside, home / "out")
    os.symlink(outside, home / "a" / "out")
    os.symlink(home / "a", home / "link")
    os.symlink("../..", home / "a" / "b" / "link")
    account = Account("user", home.resolve(), "rw")
    return Storage(root), account, home.resolve()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=300)
@given(path_text)
def test_no_path_ever_resolves_outside_the_home(home_with_links, path):
    storage, account, home = home_with_links
    for follow in (True, False):
        try:
            _, real = storage.resolve(account, path, follow=follow)
        except (BadRequestError, ForbiddenError):
            continue
        # Without follow, the last name may be a link (rm removes the link): its folder must be inside.
        checked = Path(os.path.realpath(real if follow or real == home else real.parent))
        assert checked == home or home in checked.parents
