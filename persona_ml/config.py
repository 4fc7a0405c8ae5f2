"""Strict config loading: YAML or dict -> frozen dataclasses.

An unknown key raises ``ConfigError`` naming its dotted path (``train.lr_sheduler``); a value of
the wrong type raises naming the field and the value. ``--set key=value`` overrides go through
the same checks.

YAML is read through ``persona_ml._parse.loads_yaml``: at most 1 MiB, 64 levels deep and 100,000
values after alias expansion; duplicate keys, ``010`` (YAML 1.1 octal) and ``1:30`` (base 60) are
refused rather than read as another number. Every ``float`` field refuses NaN and infinities
(``nan > 0`` is False, so a NaN would pass any range check), every ``int`` field values beyond
int64, and config keys must be strings.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from ._json import short_repr
from .errors import ConfigError

T = TypeVar("T")

CONFIG_ENV = "PERSONA_ML_CONFIG_DIR"

#: the largest integer a config field accepts (int64): larger ones overflow torch, numpy and floats
MAX_CONFIG_INT = 2**63 - 1


def packaged_config_dir() -> Path:
    """The folder of default YAML configs that ships inside the package (``persona_ml/configs``)."""
    from importlib.resources import files

    return Path(str(files("persona_ml") / "configs"))


def config_dir() -> Path:
    """The user config folder named by ``PERSONA_ML_CONFIG_DIR`` if set, else the packaged one.

    Prefer ``config_file(name)``: it falls back to the packaged default for files the user
    folder does not hold.
    """
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else packaged_config_dir()


def config_file(name: str | os.PathLike) -> Path:
    """Resolve a config by its name relative to the configs folder (``"lora_rules.yaml"``,
    ``"train/tiny-cpu.yaml"``).

    Order of precedence (the first that exists wins):

    1. an explicit ``path=`` argument of the loader that calls this (handled by the caller);
    2. ``$PERSONA_ML_CONFIG_DIR/<name>``: a user folder may override any subset of the files;
    3. the default packaged with the library (``persona_ml/configs/<name>``).

    Returns the packaged path when neither exists, so the error names where the default lives.
    """
    env = os.environ.get(CONFIG_ENV)
    if env:
        candidate = Path(env) / name
        if candidate.is_file():
            return candidate
    return packaged_config_dir() / name


#: a config file larger than this is refused before parsing (ours are a few KB)
MAX_CONFIG_BYTES = 1 << 20


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping within the bounds of ``persona_ml._parse`` (size, depth, aliases,
    UTF-8, YAML 1.1 octal/base-60 numbers refused, duplicate keys refused).

    Raises:
        ConfigError: missing or unreadable file (a folder, FIFO or device named as the file:
            ``path_invalid``), invalid or unbounded YAML, a non-mapping top level.
    """
    from ._files import FileProblem, read_regular_file
    from ._parse import ParseProblem, loads_yaml

    path = Path(path)
    try:
        raw = read_regular_file(path, max_bytes=MAX_CONFIG_BYTES)
    except FileProblem as exc:
        if exc.reason == "not_found":
            raise ConfigError(f"config file not found: {path}", field="path", value=str(path)) from None
        raise ConfigError(f"config file {exc.message}", code="path_invalid", field="path", value=str(path),
                          **exc.details()) from None
    try:
        data = loads_yaml(raw, what=str(path))
    except ParseProblem as exc:
        raise ConfigError(f"invalid YAML: {exc.message}", field="path", value=str(path), reason=exc.reason) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}",
                          field="path", value=str(path))
    return data


def load_config(cls: type[T], source: str | os.PathLike | Mapping[str, Any],
                overrides: typing.Sequence[str] = ()) -> T:
    """Build dataclass ``cls`` from a YAML path or a mapping, strictly, then apply overrides.

    Args:
        cls: a (frozen) dataclass type; nested dataclass fields are built recursively.
        source: YAML file path or a mapping.
        overrides: ``"dotted.key=value"`` strings; values are parsed as YAML scalars.

    Raises:
        ConfigError: unknown key (with dotted path), wrong type, or bad override syntax.
    """
    if not isinstance(source, (Mapping, str, os.PathLike)):
        raise ConfigError(f"a config source must be a YAML path or a mapping, got {type(source).__name__}",
                          field="source", value=short_repr(source))
    data = dict(read_yaml(source)) if not isinstance(source, Mapping) else dict(source)
    data = apply_overrides(data, overrides)
    return from_dict(cls, data)


def apply_overrides(data: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``key.sub=value`` overrides applied (YAML-parsed values)."""
    import copy

    from ._parse import ParseProblem, loads_yaml

    out = copy.deepcopy(data)
    for item in overrides:
        if not isinstance(item, str):
            raise ConfigError(f"an override must be a 'key=value' string, got {type(item).__name__}",
                              field="--set", value=short_repr(item))
        if "=" not in item:
            raise ConfigError(f"override must look like key=value, got {item!r}", field="--set", value=item)
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override has an empty key: {item!r}", field="--set", value=item)
        try:
            value = loads_yaml(raw, what=f"override {key}") if raw.strip() else ""
        except ParseProblem as exc:
            if exc.reason == "syntax":  # not YAML at all: the text itself, as a string
                value = raw
            else:  # 010, 1:30, a 5000-digit number, aliases: refused, never silently changed
                raise ConfigError(exc.message, field=key, value=raw, reason=exc.reason) from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section", field=key, value=raw)
            node = nxt
        node[parts[-1]] = value
    return out


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Strictly build dataclass ``cls`` from ``data``; see ``load_config``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__} {short_repr(data)}",
                          field=path, value=data)
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:  # YAML reads `1:`, `yes:` or `null:` as non-string keys; they would also break sorting
        raise ConfigError(f"{path or cls.__name__}: config keys must be names, got {type(bad_keys[0]).__name__} "
                          f"key {short_repr(bad_keys[0])}", field=_join(path, short_repr(bad_keys[0])),
                          value=short_repr(bad_keys[0]))
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        dotted = ", ".join(_join(path, k) for k in unknown)
        raise ConfigError(f"unknown config key(s): {dotted} (allowed: {', '.join(sorted(fields))})",
                          field=_join(path, unknown[0]), value=data[unknown[0]])
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, _join(path, name))
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        raise ConfigError(f"missing config key(s): {', '.join(_join(path, m) for m in missing)}",
                          field=_join(path, missing[0]), value=None)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{path or cls.__name__}: {exc}", field=path, value=dict(data)) from exc


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict/list (tuples become lists), for YAML/JSON dumps."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(f"{path}: bad value {short_repr(value)}", field=path,
                                                  value=value)
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{path}: must be one of {list(get_args(tp))}, got {short_repr(value)}", field=path,
                              value=value)
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {short_repr(value)}", field=path, value=value)
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {short_repr(value)}", field=path,
                                  value=value)
            items = [_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            inner = args[0] if args else Any
            items = [_coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {short_repr(value)}", field=path, value=value)
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(kt, k, path): _coerce(vt, v, _join(path, str(k))) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {short_repr(value)}", field=path, value=value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {short_repr(value)}", field=path, value=value)
        if abs(value) > MAX_CONFIG_INT:
            raise ConfigError(f"{path}: the integer {short_repr(value)} is out of range (|x| <= 2**63 - 1)",
                              field=path, value=value)
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value) if len(value) <= 64 else value
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {short_repr(value)}", field=path, value=value)
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
        if not math.isfinite(number):  # NaN passes every `x > 0` check; inf breaks every schedule
            raise ConfigError(f"{path}: expected a finite number, got {short_repr(value)}", field=path, value=value)
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {short_repr(value)}", field=path, value=value)
        return value
    if tp is Path:
        if not isinstance(value, (str, os.PathLike)) or (isinstance(value, str) and "\x00" in value):
            raise ConfigError(f"{path}: expected a path, got {short_repr(value)}", field=path, value=value)
        return Path(value)
    return value
