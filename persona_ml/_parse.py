"""Bounded JSON and YAML parsing for every artefact and config the library reads.

Python's ``json`` and PyYAML accept inputs that later crash or exhaust the process: nesting deep
enough to hit the recursion limit, integers of thousands of digits (``int()`` refuses them, a
float conversion overflows), ``1e400`` read as infinity, ``NaN`` literals, non-UTF-8 bytes, and
YAML aliases that expand a few hundred bytes into billions of values once anything walks the
result. These loaders refuse all of those with a ``ParseProblem`` (a ``ValueError``) whose
message never echoes the hostile value whole; callers wrap it in their coded error.

YAML is read as YAML 1.1 (PyYAML) with two changes: an integer written with a leading zero
(``010``, which 1.1 reads as octal 8) and sexagesimal numbers (``1:30``, read as 90) are refused
with a message saying how to write them, instead of silently changing value.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: deepest nesting of lists/objects accepted (our files nest at most 5 levels)
MAX_DEPTH = 64
#: integers beyond int64/uint64 are meaningless in every file we read, and overflow floats later
MAX_ABS_INT = 2**64
#: most values a YAML document may expand to through aliases
MAX_YAML_NODES = 100_000


class ParseProblem(ValueError):
    """The text is not acceptable JSON/YAML; ``reason`` is one of ``encoding``, ``syntax``,
    ``depth``, ``number``, ``duplicate_key``, ``aliases``, ``octal``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def decode_utf8(data: bytes | bytearray | memoryview | str, what: str = "the text") -> str:
    """UTF-8 text of ``data`` (a leading BOM dropped); ``ParseProblem('encoding')`` otherwise."""
    if isinstance(data, str):
        return data[1:] if data.startswith("\ufeff") else data
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseProblem("encoding", f"{what} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                                       f"{exc.start})") from None
    return text[1:] if text.startswith("\ufeff") else text


def check_depth(value: Any, max_depth: int = MAX_DEPTH, what: str = "the document") -> None:
    """``ParseProblem('depth')`` when lists/dicts in ``value`` nest deeper than ``max_depth``.

    Iterative, and each container is visited once (a structure shared through YAML aliases is
    not re-walked), so it costs O(distinct containers).
    """
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (dict, list, tuple)):
            continue
        if depth > max_depth:
            raise ParseProblem("depth", f"{what} nests deeper than {max_depth} levels")
        if id(node) in seen:
            continue
        seen.add(id(node))
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))


def _json_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > 20:
        raise ParseProblem("number", f"an integer of {digits} digits is out of range (at most 2**64)")
    value = int(text)
    if abs(value) > MAX_ABS_INT:
        raise ParseProblem("number", f"the integer {value} is out of range (at most 2**64)")
    return value


def _json_float(text: str) -> float:
    if len(text) > 400:
        raise ParseProblem("number", f"a number written with {len(text)} characters is refused")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ParseProblem("number", f"the number {text[:40]} is too large for a float")
    return value


def _json_constant(name: str) -> Any:
    raise ParseProblem("number", f"{name} is not a JSON number (NaN and infinities are refused)")


def _json_object(pairs: list[tuple[str, Any]]) -> dict:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ParseProblem("duplicate_key", f"the key {key[:80]!r} appears twice in one object")
        out[key] = value
    return out


def loads_json(data: bytes | bytearray | memoryview | str, *, what: str = "the JSON", max_depth: int = MAX_DEPTH,
               allow_nonfinite: bool = False) -> Any:
    """Parse JSON strictly within the bounds of this module.

    Args:
        data: UTF-8 bytes or text.
        what: how messages name the input (``"dataset.json"``).
        max_depth: deepest nesting accepted.
        allow_nonfinite: accept ``NaN``/``Infinity`` literals (never ``1e400``).

    Raises:
        ParseProblem: see the class; its message names ``what`` and never holds the input whole.
    """
    text = decode_utf8(data, what)
    try:
        value = json.loads(text, parse_int=_json_int, parse_float=_json_float, object_pairs_hook=_json_object,
                           parse_constant=float if allow_nonfinite else _json_constant)
    except ParseProblem as exc:
        raise ParseProblem(exc.reason, f"{what}: {exc.message}") from None
    except RecursionError:
        raise ParseProblem("depth", f"{what} nests deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise ParseProblem("syntax", f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column "
                                     f"{exc.colno})") from None
    except ValueError as exc:  # int() digit limits and the like
        raise ParseProblem("number", f"{what}: {str(exc)[:200]}") from None
    check_depth(value, max_depth, what)
    return value


# --- YAML ---------------------------------------------------------------------------------------

_OCTAL_LIKE = re.compile(r"^[-+]?0[0-9_]+$")
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?$")


def _loader_class():
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        """SafeLoader with a depth limit while composing and YAML 1.1 number surprises refused."""

        def __init__(self, stream) -> None:
            super().__init__(stream)
            self._depth = 0

        def compose_node(self, parent, index):
            self._depth += 1
            try:
                if self._depth > MAX_DEPTH:
                    mark = self.peek_event().start_mark
                    raise ParseProblem("depth", f"nests deeper than {MAX_DEPTH} levels (line {mark.line + 1})")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def construct_yaml_int(self, node):
            raw = str(node.value)
            if _OCTAL_LIKE.match(raw):
                raise ParseProblem("octal", f"{raw[:40]!r} (line {node.start_mark.line + 1}) has a leading zero, "
                                            "which YAML 1.1 reads as an octal number; write it without the zero, "
                                            "or quote it if it is text")
            if _SEXAGESIMAL.match(raw):
                raise ParseProblem("octal", f"{raw[:40]!r} (line {node.start_mark.line + 1}) is a base-60 number "
                                            "in YAML 1.1; quote it if it is text")
            if len(raw.replace("_", "").lstrip("+-")) > 22:
                raise ParseProblem("number", f"an integer of {len(raw)} characters (line {node.start_mark.line + 1})"
                                             " is out of range (at most 2**64)")
            value = super().construct_yaml_int(node)
            if abs(value) > MAX_ABS_INT:
                raise ParseProblem("number", f"the integer on line {node.start_mark.line + 1} is out of range "
                                             "(at most 2**64)")
            return value

        def construct_yaml_float(self, node):
            raw = str(node.value)
            if _SEXAGESIMAL.match(raw):
                raise ParseProblem("octal", f"{raw[:40]!r} (line {node.start_mark.line + 1}) is a base-60 number "
                                            "in YAML 1.1; quote it if it is text")
            return super().construct_yaml_float(node)

        def construct_mapping(self, node, deep=False):
            # PyYAML keeps the last of two equal keys silently; a config with `lr:` twice is a mistake.
            # Merge keys (<<) override on purpose, so mappings that merge are left to PyYAML.
            if isinstance(node, yaml.MappingNode) and not any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value):
                seen: set[tuple[str, str]] = set()
                for key_node, _value in node.value:
                    if isinstance(key_node, yaml.ScalarNode):
                        ident = (key_node.tag, key_node.value)
                        if ident in seen:
                            raise ParseProblem("duplicate_key", f"the key {key_node.value[:80]!r} appears twice in "
                                                                f"one mapping (line {key_node.start_mark.line + 1})")
                        seen.add(ident)
            return super().construct_mapping(node, deep=deep)

    BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)
    BoundedLoader.add_constructor("tag:yaml.org,2002:float", BoundedLoader.construct_yaml_float)
    return BoundedLoader


_LOADER = None


def _expanded_size(root, limit: int) -> int:
    """Values the composed node graph expands to when aliases are followed (cycles refused)."""
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            else:
                children = []
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > limit:
                raise ParseProblem("aliases", f"expands through aliases to more than {limit} values")
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in active:
            raise ParseProblem("aliases", "an alias refers to a node that contains it (a recursive structure)")
        active.add(key)
        stack.append((node, True))
        if isinstance(node, yaml.MappingNode):
            stack.extend((n, False) for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((n, False) for n in node.value)
    return sizes[id(root)]


def loads_yaml(data: bytes | bytearray | memoryview | str, *, what: str = "the YAML",
               max_nodes: int = MAX_YAML_NODES) -> Any:
    """Parse one YAML document (safe tags only) within the bounds of this module.

    Raises:
        ParseProblem: non-UTF-8, invalid YAML, nesting deeper than ``MAX_DEPTH``, more than
            ``max_nodes`` values after alias expansion or a recursive alias, an out-of-range
            integer, a leading-zero (octal) or base-60 number.
    """
    import yaml

    global _LOADER
    if _LOADER is None:
        _LOADER = _loader_class()
    text = decode_utf8(data, what)
    loader = _LOADER(text)
    try:
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _expanded_size(node, max_nodes)
            value = loader.construct_document(node)
        finally:
            loader.dispose()
    except ParseProblem as exc:
        raise ParseProblem(exc.reason, f"{what}: {exc.message}") from None
    except yaml.YAMLError as exc:
        raise ParseProblem("syntax", f"{what} is not valid YAML: {str(exc)[:500]}") from None
    except RecursionError:
        raise ParseProblem("depth", f"{what} nests deeper than {MAX_DEPTH} levels") from None
    except (ValueError, TypeError, OverflowError) as exc:  # PyYAML constructors on odd scalars (dates, ints)
        raise ParseProblem("syntax", f"{what}: a value cannot be read: {str(exc)[:200]}") from None
    return value


# --- safetensors headers ------------------------------------------------------------------------

#: the safetensors library's own bound on a header
MAX_SAFETENSORS_HEADER = 100_000_000
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
SAFETENSORS_FLOAT_DTYPES = ("F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64")


def safetensors_header_length(head: bytes, file_size: int, what: str = "the file") -> int:
    """The header length the first 8 bytes of a safetensors file claim, checked against the file."""
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if n < 2 or n > min(MAX_SAFETENSORS_HEADER, file_size - 8):
        raise ParseProblem("syntax", f"{what} is not a safetensors file (header length {n}, file {file_size} bytes)")
    return n


def parse_safetensors_header(raw: bytes, file_size: int, what: str = "the file") -> tuple[dict, dict[str, str]]:
    """``({tensor name: {"dtype", "shape", "data_offsets"}}, metadata)`` of a safetensors header.

    ``raw`` is the header JSON (the bytes after the 8-byte length). Every entry is checked the
    way the format defines it: a known dtype, a shape of non-negative integers whose byte size
    equals its data range, offsets inside the file; the metadata maps strings to strings.

    Raises:
        ParseProblem: with ``what`` in the message.
    """
    header = loads_json(raw, what=f"{what} (safetensors header)")
    if not isinstance(header, dict):
        raise ParseProblem("syntax", f"{what}: the safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ParseProblem("syntax", f"{what}: the safetensors __metadata__ must map strings to strings")
    data_size = file_size - 8 - len(raw)
    for name, entry in header.items():
        label = f"{what}: tensor {name[:80]!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ParseProblem("syntax", f"{label} is not a safetensors entry (dtype, shape, data_offsets)")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise ParseProblem("syntax", f"{label} has an unknown dtype {str(dtype)[:20]!r}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ParseProblem("syntax", f"{label} has an invalid shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise ParseProblem("syntax", f"{label} has invalid data_offsets")
        begin, end = offsets
        count = 1
        for d in shape:
            count *= d
        if not 0 <= begin <= end <= data_size or end - begin != count * SAFETENSORS_DTYPES[dtype]:
            raise ParseProblem("syntax", f"{label}: data_offsets {begin}..{end} do not fit its shape/dtype or the "
                                         f"file ({data_size} data bytes)")
    return header, dict(meta)
