"""One conversion of nested report/error values to JSON-ready Python values, and the bounds that
keep hostile values (huge strings, deep or alias-expanded structures, giant integers) out of
error messages and details."""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from typing import Any

#: limits of ``bounded``: what an error's details may carry of one value
MAX_DETAIL_STR = 1000
MAX_DETAIL_ITEMS = 50
MAX_DETAIL_DEPTH = 6
#: integers beyond this magnitude are described, not carried (``str()`` of a 5000-digit int raises)
MAX_DETAIL_INT = 2**64


def jsonable(value: Any, *, fallback: Callable[[Any], Any] = str) -> Any:
    """Dicts (keys as str), lists/tuples, numpy scalars and JSON primitives pass through
    recursively; anything else becomes ``fallback(value)``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, fallback=fallback) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, fallback=fallback) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    return fallback(value)


def bounded(value: Any, _depth: int = 0) -> Any:
    """``value`` with long strings/bytes cut, long lists and dicts shortened, nesting below
    ``MAX_DETAIL_DEPTH`` replaced by a short repr and giant integers described. Small values come
    back unchanged (same types), so ordinary details are untouched. Never recurses without bound,
    so a self-referencing or alias-expanded structure costs at most a few thousand steps."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_DETAIL_INT:
            return f"<integer of {value.bit_length()} bits>"
        return value
    if isinstance(value, str):
        if len(value) > MAX_DETAIL_STR:
            return value[:MAX_DETAIL_STR] + f"... [{len(value) - MAX_DETAIL_STR} more characters cut]"
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value[:MAX_DETAIL_STR + 1])
        return raw if len(value) <= MAX_DETAIL_STR else raw[:MAX_DETAIL_STR]
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        if _depth >= MAX_DETAIL_DEPTH:
            return short_repr(value)
        if isinstance(value, dict):
            items = list(value.items())[:MAX_DETAIL_ITEMS]
            out_d = {k if isinstance(k, (str, int, float, bool)) or k is None else short_repr(k):
                     bounded(v, _depth + 1) for k, v in items}
            if len(value) > MAX_DETAIL_ITEMS:
                out_d["..."] = f"{len(value) - MAX_DETAIL_ITEMS} more entries cut"
            return out_d
        seq = list(value)[:MAX_DETAIL_ITEMS] if isinstance(value, (set, frozenset)) else value[:MAX_DETAIL_ITEMS]
        out = [bounded(v, _depth + 1) for v in seq]
        if len(value) > MAX_DETAIL_ITEMS:
            out.append(f"... {len(value) - MAX_DETAIL_ITEMS} more items cut")
        return tuple(out) if isinstance(value, tuple) else out
    return value


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = 120
_REPR.maxother = 120
_REPR.maxlong = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 8
MAX_REPR_CHARS = 300


def short_repr(value: Any) -> str:
    """A repr of at most ``MAX_REPR_CHARS`` characters, for error messages: nested, shared (YAML
    aliases) or huge values are abbreviated without being expanded."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_DETAIL_INT:
        return f"<integer of {value.bit_length()} bits>"
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 (a hostile __repr__ must not turn an error message into a crash)
        return f"<{type(value).__name__}>"
    return text if len(text) <= MAX_REPR_CHARS else text[:MAX_REPR_CHARS - 3] + "..."
