"""RFC 8785 JSON Canonicalization Scheme (JCS), standard library only.

:func:`canonicalize` turns a JSON value built from ``dict`` (``str`` keys), ``list``/``tuple``,
``str``, ``int``, ``float``, ``bool`` and ``None`` into the one byte sequence RFC 8785 allows:

* §3.2.1 — no whitespace between tokens; UTF-8 output (§3.2.4).
* §3.2.2.1 — literals ``null``, ``true``, ``false``.
* §3.2.2.2 — strings: only ``"``, ``\\`` and controls below U+0020 are escaped; ``\\b \\t \\n
  \\f \\r`` use the short forms, other controls ``\\u00xx`` with lowercase hex; every other
  character, U+2028/U+2029 and non-ASCII included, is written literally. Lone surrogates cannot
  be encoded (I-JSON, RFC 7493 §2.1) and are refused.
* §3.2.2.3 — numbers are IEEE-754 doubles written as ECMAScript ``Number.prototype.toString``
  does: shortest round-trip digits, decimal notation for 1e-7 ≤ |x| < 1e21, exponent notation
  (``1e+21``, ``1.5e-7``) otherwise, ``-0`` as ``0``; NaN and ±Infinity are refused.
* §3.2.3 — object members are sorted by the UTF-16 code units of their names, compared as
  unsigned integers (not by Unicode code points: U+1F600 sorts before U+FB33).

Array order is kept. Refusals raise :class:`ValueError` (bad values) or :class:`TypeError`
(something that is not a JSON value, or a non-``str`` member name).
"""

from __future__ import annotations

import json
import math
import re

__all__ = ["MAX_EXACT_INT", "canonicalize", "dumps", "dumps_general"]

#: Largest magnitude an ``int`` may have: JCS numbers are IEEE-754 doubles (RFC 8785 §3.2.2.3),
#: and every integer up to 2**53 in magnitude is exactly representable as one.
MAX_EXACT_INT = 2**53

_SHORT_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}
_ESCAPES: dict[int, str] = {c: _SHORT_ESCAPES.get(c, f"\\u{c:04x}") for c in range(0x20)}
_ESCAPES[ord('"')] = '\\"'
_ESCAPES[ord("\\")] = "\\\\"


def _string(s: str) -> str:
    """Serialize a string per RFC 8785 §3.2.2.2."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"string contains a lone surrogate at index {exc.start}; "
            "JCS output must be valid UTF-8 (RFC 8785 §3.2.4)"
        ) from None
    return '"' + s.translate(_ESCAPES) + '"'


def _number(x: float) -> str:
    """Serialize a double as ECMAScript Number.prototype.toString does (RFC 8785 §3.2.2.3)."""
    if not math.isfinite(x):
        raise ValueError(f"{x!r} is not a JSON number; RFC 8785 §3.2.2.3 refuses NaN and Infinity")
    if x == 0:
        return "0"  # also -0
    sign = "-" if x < 0 else ""
    # repr() gives the shortest digits that round-trip, as ECMAScript requires; only the
    # layout differs. Reduce it to digits d1..dk and exponent n with x = 0.d1..dk × 10**n.
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac
    n = len(whole) + int(exp or "0")
    significant = digits.lstrip("0")
    n -= len(digits) - len(significant)
    digits = significant.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * -n + digits
    else:
        e = n - 1
        body = (
            digits[0] + ("." + digits[1:] if k > 1 else "") + f"e{'+' if e >= 0 else '-'}{abs(e)}"
        )
    return sign + body


def _integer(i: int) -> str:
    if abs(i) > MAX_EXACT_INT:
        raise ValueError(
            f"integer {i} exceeds 2**53 in magnitude: JCS numbers are IEEE-754 doubles "
            "(RFC 8785 §3.2.2.3), which cannot hold it exactly; send it as a string"
        )
    return _number(float(i))


def _utf16_key(name: str) -> bytes:
    # Big-endian UTF-16 bytes compare like the sequence of 16-bit code units (§3.2.3).
    return name.encode("utf-16-be", "surrogatepass")


def _serialize(value: object, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int):
        out.append(_integer(value))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _serialize(item, out)
        out.append("]")
    elif isinstance(value, dict):
        for name in value:
            if not isinstance(name, str):
                raise TypeError(f"JSON object member names must be str, not {type(name).__name__}")
        out.append("{")
        for index, name in enumerate(sorted(value, key=_utf16_key)):
            if index:
                out.append(",")
            out.append(_string(name))
            out.append(":")
            _serialize(value[name], out)
        out.append("}")
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


class _NotFast(Exception):
    """The value needs the general serializer (floats, huge integers)."""


def _refuse_float(_: str) -> float:
    raise _NotFast


def _check_int(text: str) -> int:
    number = int(text)
    if len(text) > 15 and abs(number) > MAX_EXACT_INT:
        raise _NotFast
    return number


_FAST_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)
_FAST_DECODER = json.JSONDecoder(parse_float=_refuse_float, parse_int=_check_int)
_FOUR_BYTE_UTF8 = re.compile(rb"[\xf0-\xf4]")


def _fast(value: object) -> bytes | None:
    """The C ``json`` encoder's output when it provably equals JCS, else ``None``.

    With sorted keys, no whitespace and ``ensure_ascii=False`` the standard encoder escapes
    strings exactly as §3.2.2.2 does and writes integers as JCS does. It differs only for floats
    (layout), integers beyond 2**53 (refused by JCS), non-``str`` member names (converted),
    tuples (fine, but not round-trippable), lone surrogates (not UTF-8) and characters outside the
    BMP (code-point order is not UTF-16 order for member names). Decoding the output again and
    comparing it with the input, and looking for 4-byte UTF-8 sequences, rule all of these out at
    C speed; anything else goes to the general serializer.
    """
    try:
        text = _FAST_ENCODER.encode(value)
        data = text.encode("utf-8")
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return None
    if not text.isascii() and _FOUR_BYTE_UTF8.search(data):
        return None
    try:
        if _FAST_DECODER.decode(text) != value:
            return None
    except _NotFast:
        return None
    return data


def canonicalize(value: object) -> bytes:
    """Return the RFC 8785 canonical form of ``value`` as UTF-8 bytes."""
    fast = _fast(value)
    return fast if fast is not None else dumps_general(value).encode("utf-8")


def dumps(value: object) -> str:
    """Return the RFC 8785 canonical form of ``value`` as a ``str``."""
    return canonicalize(value).decode("utf-8")


def dumps_general(value: object) -> str:
    """The general serializer, every rule of RFC 8785 spelled out (``dumps`` tries a fast path)."""
    out: list[str] = []
    _serialize(value, out)
    return "".join(out)
