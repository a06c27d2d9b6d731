"""Virtual path rules, one line per case (docs/protocol.md section 6)."""

import pytest

from ftpproto import BadRequestError, ForbiddenError, join_path, split_path


@pytest.mark.parametrize(
    "path, parts",
    [
        ("", ()),
        ("/", ()),
        (".", ()),
        ("a", ("a",)),
        ("/a/b", ("a", "b")),
        ("//a///b/", ("a", "b")),
        ("a/./b", ("a", "b")),
        ("a/../b", ("b",)),
        ("a/b/..", ("a",)),
        ("/etc/passwd", ("etc", "passwd")),
        ("spaces are fine", ("spaces are fine",)),
        ("中文/😀", ("中文", "😀")),
        ("...", ("...",)),
        ("x" * 255, ("x" * 255,)),
        ("é" * 127, ("é" * 127,)),  # 254 bytes
    ],
)
def test_valid_paths(path, parts):
    assert split_path(path) == parts


@pytest.mark.parametrize("path", ["..", "../x", "/../x", "a/../../x", "a/b/../../..", "./..", "a/../.."])
def test_climbing_above_the_home_is_forbidden(path):
    with pytest.raises(ForbiddenError):
        split_path(path)


@pytest.mark.parametrize(
    "path",
    [
        "a\x00b",
        "a\nb",
        "tab\there",
        "del\x7f",
        "back\\slash",
        "..\\x",
        "x" * 256,
        "é" * 128,  # 256 bytes
        "a/" * 2049,  # over 4096 bytes
        "bad\udcffsurrogate",
    ],
)
def test_malformed_paths_are_bad_requests(path):
    with pytest.raises(BadRequestError):
        split_path(path)


@pytest.mark.parametrize("path", [".sockftp", ".sockftp.part.abc", "a/.sockftp-x"])
def test_reserved_names_are_forbidden(path):
    with pytest.raises(ForbiddenError):
        split_path(path)


def test_names_are_not_unicode_normalised():
    assert split_path("e\u0301") != split_path("\u00e9")


def test_join_path():
    assert join_path(()) == "/"
    assert join_path(("a", "b")) == "/a/b"
