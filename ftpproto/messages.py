"""The op table of protocol v1, its extensions, and request validation.

`OPS` says, for each op, which fields it takes (with their JSON type and
default), whether it needs a logged-in or anonymous user, whether it writes,
and which extension it belongs to (none for the ops of v1). The greeting
lists the extensions a server offers (`FEATURES`); a client uses one only if
the greeting names it. `validate_request()` is the one gatekeeper for field
types: it returns the op's spec and its arguments with defaults filled in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .errors import BadRequestError, UnknownOpError

__all__ = [
    "EAGER_PUT_MAX",
    "FEATURES",
    "OPS",
    "PROTOCOL_VERSION",
    "Field",
    "OpSpec",
    "check_type",
    "op_spec",
    "parse_args",
    "validate_md5",
    "validate_request",
]

PROTOCOL_VERSION = 1
REQUIRED = object()
EAGER_PUT_MAX = 1_048_576  # bytes an eager put may carry: what a refused one costs to drain
MAX_TIME = 1e11  # seconds either side of 1970: beyond the year 5000, and within what a float holds to the microsecond
_MD5 = re.compile(r"[0-9a-fA-F]{32}")


@dataclass(frozen=True)
class Field:
    kind: str  # "str", "int" (non-negative), "bool", "md5", "time" (seconds), "mode" (permission bits)
    default: Any = REQUIRED
    feature: str | None = None  # the extension that adds the field to a v1 op


@dataclass(frozen=True)
class OpSpec:
    name: str
    fields: dict[str, Field] = field(default_factory=dict)
    needs_auth: bool = True
    writes: bool = False
    feature: str | None = None  # the extension the op belongs to; None for v1's own ops


OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("login", {"user": Field("str"), "password": Field("str")}, needs_auth=False),
        OpSpec("ls", {"path": Field("str", "/"), "md5": Field("bool", False, "ls-md5")}),
        OpSpec("stat", {"path": Field("str")}),
        OpSpec(
            "get",
            {
                "path": Field("str"),
                "offset": Field("int", 0),
                "attributes": Field("bool", False, "attributes"),
                "eager": Field("bool", False, "eager"),
            },
        ),
        OpSpec(
            "put",
            {
                "path": Field("str"),
                "size": Field("int"),
                "md5": Field("md5"),
                "overwrite": Field("bool", True),
                "parents": Field("bool", False),
                "mtime": Field("time", None, "attributes"),
                "mode": Field("mode", None, "attributes"),
                "eager": Field("bool", False, "eager"),
            },
            writes=True,
        ),
        OpSpec("mkdir", {"path": Field("str"), "parents": Field("bool", False)}, writes=True),
        OpSpec("rm", {"path": Field("str"), "recursive": Field("bool", False, "rm-recursive")}, writes=True),
        OpSpec("quit", needs_auth=False),
        # Extensions (docs/protocol.md section 16): ops of their own, and fields above.
        OpSpec("usage", feature="usage"),
        OpSpec(
            "rename",
            {"path": Field("str"), "to": Field("str"), "overwrite": Field("bool", False)},
            writes=True,
            feature="rename",
        ),
    )
}

# The extensions this implementation offers, as the greeting's `features` lists them.
FEATURES: tuple[str, ...] = tuple(
    sorted(
        {spec.feature for spec in OPS.values() if spec.feature}
        | {f.feature for spec in OPS.values() for f in spec.fields.values() if f.feature}
    )
)

# Frames that are only valid inside a get exchange (docs/protocol.md section 8).
GET_REPLIES = ("ack", "cancel")


def check_type(name: str, value: Any, kind: str) -> Any:
    """Return `value` if it has JSON type `kind`, else raise `BadRequestError`."""
    if kind == "str":
        ok = isinstance(value, str)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        # JSON true/false decode to bool, a subclass of int: not an integer here.
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    elif kind == "md5":
        return validate_md5(value, name)
    elif kind == "time":  # seconds since the epoch, as a file system can hold them
        ok = isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < MAX_TIME
    elif kind == "mode":
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777
    else:  # pragma: no cover - a typo in the table
        raise AssertionError(kind)
    if not ok:
        wanted = {
            "str": "a string",
            "bool": "true or false",
            "int": "a non-negative integer",
            "time": f"a number of seconds since the epoch (below {MAX_TIME:.0e} either way)",
            "mode": "permission bits, an integer from 0 to 4095 (0o7777)",
        }
        raise BadRequestError(f"field '{name}' must be {wanted[kind]}")
    return value


def validate_md5(value: Any, name: str = "md5") -> str:
    """Return a 32-digit hex MD5 in lower case, else raise `BadRequestError`."""
    if not isinstance(value, str) or not _MD5.fullmatch(value):
        raise BadRequestError(f"field '{name}' must be 32 hexadecimal digits")
    return value.lower()


def op_spec(message: dict) -> OpSpec:
    """Return the spec of the request's op; `UnknownOpError` if there is none."""
    op = message.get("op")
    if not isinstance(op, str):
        raise BadRequestError("request has no string field 'op'")
    spec = OPS.get(op)
    if spec is None:
        if op in GET_REPLIES:
            raise BadRequestError(f"'{op}' is only valid right after a get header")
        raise UnknownOpError(f"unknown op {op[:40]!r}")
    return spec


def parse_args(spec: OpSpec, message: dict) -> dict[str, Any]:
    """Return the op's arguments, v1 defaults filled in and unknown fields dropped; an
    extension's field appears only when sent (the op's handler has its default).

    Raises `BadRequestError` for a missing or mistyped field.
    """
    args: dict[str, Any] = {}
    for name, spec_field in spec.fields.items():
        if name in message:
            args[name] = check_type(name, message[name], spec_field.kind)
        elif spec_field.default is REQUIRED:
            raise BadRequestError(f"'{spec.name}' needs field '{name}'")
        elif spec_field.feature is None:  # an extension's field left out: a v1 request, as it was
            args[name] = spec_field.default
    return args


def validate_request(message: dict) -> tuple[OpSpec, dict[str, Any]]:
    """Check a request frame against the op table: `op_spec()` then `parse_args()`."""
    spec = op_spec(message)
    return spec, parse_args(spec, message)
