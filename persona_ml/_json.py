"""One conversion of nested report/error values to JSON-ready Python values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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
