"""Canonical JSON: the exact bytes that are hashed and signed (docs/archive-format.md, section 3).

It is the RFC 8785 (JCS) serialization restricted to values without floating-point numbers:
UTF-8, no insignificant whitespace, object members sorted by the UTF-16 code units of their
names, strings escaped as ECMAScript's JSON.stringify does, integers within +-(2^53 - 1). With no
floats, any JCS library produces the same bytes, and so does a few lines of code in any language.
"""

from __future__ import annotations

import json
from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1


class CanonicalJsonError(ValueError):
    """A value cannot be represented, or bytes are not valid JSON for this format."""


def canonical_json(value: Any) -> bytes:
    parts: list[str] = []
    _encode(value, parts, "$")
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as error:
        raise CanonicalJsonError(f"a string holds a lone surrogate: {error}") from None


def parse_json(data: bytes) -> Any:
    """Parse strict JSON: UTF-8, no duplicate member names, no floats, NaN or Infinity."""
    try:
        text = data.decode("utf-8")
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_float,
        )
    except UnicodeDecodeError as error:
        raise CanonicalJsonError(f"not UTF-8: {error}") from None
    except json.JSONDecodeError as error:
        raise CanonicalJsonError(f"not JSON: {error}") from None


def _encode(value: Any, out: list[str], where: str) -> None:
    # bool before int: in Python True is an int, in JSON it is not a number.
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise CanonicalJsonError(f"{where}: integer {value} is beyond +-(2^53 - 1)")
        out.append(str(value))
    elif isinstance(value, str):
        # Python's encoder with ensure_ascii=False escapes exactly what JCS escapes: '"', '\\' and
        # U+0000..U+001F (\b \t \n \f \r short, the rest as lowercase \u00xx).
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, list | tuple):
        out.append("[")
        for position, item in enumerate(value):
            if position:
                out.append(",")
            _encode(item, out, f"{where}[{position}]")
        out.append("]")
    elif isinstance(value, dict):
        if not all(isinstance(name, str) for name in value):
            raise CanonicalJsonError(f"{where}: object member names must be strings")
        out.append("{")
        for position, name in enumerate(sorted(value, key=_utf16_order)):
            if position:
                out.append(",")
            out.append(json.dumps(name, ensure_ascii=False))
            out.append(":")
            _encode(value[name], out, f"{where}.{name}")
        out.append("}")
    elif isinstance(value, float):
        raise CanonicalJsonError(f"{where}: floats are not allowed; write {value!r} as a string")
    else:
        raise CanonicalJsonError(f"{where}: {type(value).__name__} is not a JSON value")


def _utf16_order(name: str) -> bytes:
    # JCS sorts by UTF-16 code units, which differs from code point order above U+FFFF.
    return name.encode("utf-16-be", "surrogatepass")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise CanonicalJsonError(f"duplicate member name {name!r}")
        result[name] = value
    return result


def _no_float(text: str) -> Any:
    raise CanonicalJsonError(f"number {text} is not an integer; floats are not allowed")
