"""The shared MD5 helpers: in line and on a thread, any chunking, early stop."""

from __future__ import annotations

import hashlib
import os

import pytest

from ftpproto.io.hashing import BACKGROUND_THRESHOLD, HASH_CHUNK, BackgroundMD5, md5_of, new_md5
from ftpproto.io.writeback import STEP, Writeback

DATA = os.urandom(3 * HASH_CHUNK + 12345)


@pytest.mark.parametrize("threaded", [True, False])
@pytest.mark.parametrize("chunk", [997, 65536, HASH_CHUNK, HASH_CHUNK + 1, len(DATA)])
def test_any_chunking_gives_the_md5_of_the_whole(threaded, chunk):
    digest = BackgroundMD5(threaded=threaded)
    view = memoryview(DATA)
    for start in range(0, len(DATA), chunk):
        digest.update(view[start : start + chunk])
    assert digest.hexdigest() == hashlib.md5(DATA).hexdigest()


@pytest.mark.parametrize("chunk", [997, 65536, HASH_CHUNK + 1])
def test_bytes_received_in_place_mixed_with_copied_ones_give_the_md5_of_the_whole(chunk):
    """What recv_data does: fill the digest's own space, or pass bytes from elsewhere."""
    digest = BackgroundMD5()
    view, done, step, in_place = memoryview(DATA), 0, 0, 0
    while done < len(DATA):  # each step passes at least one byte
        space = digest.space()
        count = min(chunk, len(space), len(DATA) - done)
        if step % 3:  # two chunks in three arrive where the hash thread reads them
            space[:count] = view[done : done + count]
            digest.update(space[:count])
            in_place += count
        else:
            digest.update(view[done : done + count])
        done, step = done + count, step + 1
    assert in_place > len(DATA) // 2
    assert digest.hexdigest() == hashlib.md5(DATA).hexdigest()
    assert BackgroundMD5(threaded=False).space() is None


def test_it_continues_from_a_prefix_and_stops_early_on_close():
    start = hashlib.md5(DATA[:100])
    digest = BackgroundMD5(start)
    digest.update(DATA[100:])
    assert digest.hexdigest() == hashlib.md5(DATA).hexdigest()
    abandoned = BackgroundMD5()
    abandoned.update(DATA)
    abandoned.close()  # a failed transfer: the thread ends without waiting to be asked
    assert not abandoned._thread.is_alive()


def test_a_thread_only_for_big_transfers():
    assert new_md5(BACKGROUND_THRESHOLD)._thread is not None
    small = new_md5(BACKGROUND_THRESHOLD - 1)
    assert small._thread is None
    small.update(b"abc")
    assert small.hexdigest() == hashlib.md5(b"abc").hexdigest()


def test_md5_of_a_file_and_of_its_prefix(tmp_path):
    (tmp_path / "f").write_bytes(DATA)
    with open(tmp_path / "f", "rb") as file:
        assert md5_of(file).hexdigest() == hashlib.md5(DATA).hexdigest()
        assert md5_of(file, 5000).hexdigest() == hashlib.md5(DATA[:5000]).hexdigest()
        assert md5_of(file, 0).hexdigest() == hashlib.md5().hexdigest()


def test_writeback_leaves_the_bytes_intact(tmp_path):
    data = os.urandom(STEP + 4096)
    with open(tmp_path / "f", "wb") as file:
        writeback = Writeback(file)
        for start in range(0, len(data), 1 << 20):
            file.write(data[start : start + (1 << 20)])
            file.flush()
            writeback.wrote(len(data[start : start + (1 << 20)]))
    assert (tmp_path / "f").read_bytes() == data
