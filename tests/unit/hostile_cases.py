"""Generated hostile inputs for the fuzz tests of every entry point (seeded, bounded).

``mutations(doc, rng, n)`` yields ``n`` variants of a valid JSON-like document, each with one or
two hostile edits: a leaf replaced by a value of another type or an absurd one (NaN, 2**80, a
5000-digit integer, a 200 KB string, a list nested 5000 deep, a non-ASCII digit string), a key
removed, renamed or added, the whole document replaced by a scalar. ``hostile_json_texts`` adds
texts that are not even valid JSON (truncated, non-UTF-8, duplicate keys, deep nesting).
``assert_coded(fn, *args)`` is the property every fuzz test checks: the call returns, or raises a
``PersonaMLError`` with a declared code and JSON-serialisable, bounded details; any other
exception fails the test with the input that caused it.
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

from persona_ml.errors import ERROR_CODES, PersonaMLError


def _deep(depth: int) -> Any:
    out: Any = 1
    for _ in range(depth):
        out = [out]
    return out


def hostile_scalars() -> list[Any]:
    return [None, True, False, 0, -1, 1, 2**80, -(2**80), 1.5, -0.0, math.nan, math.inf, -math.inf, 1e308,
            "", " ", "x" * 200_000, "²", "١٢", "../../etc/passwd", "/etc/passwd", "a\x00b", "é",
            [], {}, [1, "a", None], {"1": 2}, _deep(300), {"a": {"b": {"c": []}}}]


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _set(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def _delete(doc: Any, path: tuple) -> Any:
    if not path:
        return doc
    node = doc
    for key in path[:-1]:
        node = node[key]
    if isinstance(node, dict):
        node.pop(path[-1], None)
    elif isinstance(node, list) and node:
        node.pop(path[-1])
    return doc


def mutations(doc: Any, rng: random.Random, n: int) -> Iterator[Any]:
    """``n`` hostile variants of ``doc`` (which is left untouched)."""
    scalars = hostile_scalars()
    for i in range(n):
        out = copy.deepcopy(doc)
        for _ in range(1 + (i % 2)):
            paths = _paths(out)
            path = rng.choice(paths)
            action = rng.random()
            if action < 0.6:
                out = _set(out, path, copy.deepcopy(rng.choice(scalars)))
            elif action < 0.75:
                out = _delete(out, path)
            elif action < 0.9 and isinstance(out, dict):
                out[rng.choice(["extra", "__proto__", "", "1", "x" * 300])] = rng.choice(scalars)
            else:
                out = _set(out, path, [copy.deepcopy(rng.choice(scalars))] * rng.randint(0, 3))
        yield out


def dumps_any(doc: Any) -> str:
    """JSON text of ``doc`` (NaN/inf as the non-standard literals Python writes)."""
    import sys

    limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)
    try:
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))
        return json.dumps(doc)
    finally:
        if hasattr(sys, "set_int_max_str_digits"):
            sys.set_int_max_str_digits(limit)


def hostile_json_texts(valid: str) -> list[bytes]:
    """Texts around a valid JSON document that are not acceptable JSON at all."""
    return [b"", b"{", valid[: len(valid) // 2].encode(), b"\xff\xfe\x00{", valid.encode("utf-16"),
            b"[" * 100_000 + b"]" * 100_000, b'{"a": ' * 5000 + b"1" + b"}" * 5000, b"1" * 5000,
            b'{"a": 1, "a": 2}', b"NaN", b"[1e400]", b"null", b"[]", b'"text"', ("{" + '"k": 1,' * 10 + "}").encode()]


def assert_coded(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; a ``PersonaMLError`` with a declared code and bounded, JSON-ready details is
    fine, anything else fails with the input shown. Returns the result or the error."""
    try:
        return fn(*args, **kwargs)
    except PersonaMLError as exc:
        assert exc.code in ERROR_CODES, f"undeclared code {exc.code!r} for {_show(args)}"
        text = json.dumps(exc.to_dict())
        assert len(text) < 100_000, f"error of {len(text)} characters for {_show(args)}"
        assert len(exc.message) <= 4100
        return exc
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__}: {str(exc)[:300]} raised for {_show(args)}") from exc


def _show(args: tuple) -> str:
    from persona_ml._json import short_repr

    return short_repr(args)
