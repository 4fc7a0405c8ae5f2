"""Argument types shared by the subcommands: numbers in ASCII only, finite floats, output paths.

``int("²")`` raises and ``int("١٢")`` is 12: ``str.isdigit`` and ``int`` both accept digits that
no shell user typed on purpose. Every number the CLI reads is ASCII (``[+-]?[0-9]+``, at most 18
digits; floats in Python's ASCII float syntax and finite), and a bad one is an argparse usage
error (exit 2, one line on stderr), never a traceback.
"""

from __future__ import annotations

import argparse
import math
import re

_INT = re.compile(r"[+-]?[0-9]{1,18}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


def parse_ascii_int(text: str) -> int | None:
    """``int(text)`` when ``text`` is an ASCII integer of at most 18 digits, else ``None``."""
    if not isinstance(text, str):
        return None
    stripped = text.strip()
    return int(stripped) if _INT.fullmatch(stripped) else None


def ascii_int(text: str) -> int:
    """argparse type: an ASCII integer."""
    value = parse_ascii_int(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (ASCII digits 0-9)")
    return value


def non_negative_int(text: str) -> int:
    value = ascii_int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def positive_int(text: str) -> int:
    value = ascii_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number in ASCII (``nan``, ``inf`` and ``1e999`` refused)."""
    stripped = text.strip() if isinstance(text, str) else ""
    if not _FLOAT.fullmatch(stripped):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    value = float(stripped)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def output_name(text: str) -> str:
    """argparse type of an ``--out`` naming an artefact (a profile, a prepared dataset): not
    empty and not ``.``, ``..`` or ``/``, which name no file and would replace a folder."""
    from .._atomic import check_output_path
    from ..errors import InputError

    try:
        check_output_path(text, field="--out")
    except InputError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


def output_folder(text: str) -> str:
    """argparse type of an ``--out`` folder that results are written into: not empty."""
    if not isinstance(text, str) or not text.strip() or "\x00" in text:
        raise argparse.ArgumentTypeError("--out must name a folder (it is empty)")
    return text
