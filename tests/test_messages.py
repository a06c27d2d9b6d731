"""The op table and field validation."""

import pytest

from ftpproto import BadRequestError, UnknownOpError, validate_request
from ftpproto.errors import ERRORS_BY_CODE, ProtocolError, error_from_response

MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def test_defaults_are_filled_and_unknown_fields_dropped():
    spec, args = validate_request({"op": "put", "path": "a", "size": 0, "md5": MD5, "future": 1})
    assert spec.writes
    assert args == {"path": "a", "size": 0, "md5": MD5, "overwrite": True, "parents": False}
    assert validate_request({"op": "ls"})[1] == {"path": "/"}
    assert validate_request({"op": "get", "path": "x"})[1] == {"path": "x", "offset": 0}


@pytest.mark.parametrize(
    "message",
    [
        {"op": "put", "path": "a", "size": 1, "md5": MD5, "overwrite": "no"},
        {"op": "get", "path": "a", "offset": 1.5},
        {"op": "get", "path": "a", "offset": -1},
        {"op": "put", "path": "a", "size": True, "md5": MD5},
        {"op": "put", "path": "a", "size": 1, "md5": "xyz"},
        {"op": "put", "path": "a", "size": 1, "md5": MD5 + "0"},
        {"op": "put", "path": "a", "size": 1},
        {"op": "stat"},
        {"op": "stat", "path": None},
        {"op": "ls", "path": 7},
        {"op": "login", "user": "a"},
        {"op": "mkdir", "path": "a", "parents": 1},
        {"op": 5},
        {"path": "a"},
        {"op": "ack"},
        {"op": "cancel"},
    ],
)
def test_bad_requests(message):
    with pytest.raises(BadRequestError):
        validate_request(message)


def test_unknown_op():
    with pytest.raises(UnknownOpError):
        validate_request({"op": "chmod", "path": "a"})


def test_md5_is_accepted_in_any_case_and_lowered():
    assert validate_request({"op": "put", "path": "a", "size": 0, "md5": MD5.upper()})[1]["md5"] == MD5


def test_every_code_round_trips_through_a_response():
    assert len(ERRORS_BY_CODE) == 17
    for code, cls in ERRORS_BY_CODE.items():
        error = error_from_response(cls("why").to_response())
        assert type(error) is cls and error.code == code and error.message == "why"


def test_unknown_code_from_a_newer_server_keeps_its_code():
    error = error_from_response({"ok": False, "error": "shiny_new", "message": "m"})
    assert isinstance(error, ProtocolError) and error.code == "shiny_new"
