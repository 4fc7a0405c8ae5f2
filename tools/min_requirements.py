"""Print the declared dependency floors of pyproject.toml as exact pins, for ``make test-min``.

Every ``name>=X`` of ``[project] dependencies`` (and of the extras named with ``--extra``) becomes
``name==X``; exact pins (``==``) stay; a requirement without a floor is an error (a floor must be
declared to be tested). A package named again by an extra with a higher floor goes to the
``--raised`` file, for a second pass on top of the first. torch is the one exception: its floor is declared from the APIs we call
but cannot be installed here (PyPI's Linux wheels of older releases pull several GB of CUDA
libraries), so it is replaced by ``--torch`` (default ``torch==2.13.0``, the CPU wheel on disk) and
that substitution is printed to stderr.

Usage:
    python tools/min_requirements.py [--extra dlib --extra dev | --all-extras --exclude-extra gpu] [--skip ruff]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*(;.*)?$")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def floor_pin(requirement: str) -> tuple[str, str]:
    """``"diffusers>=0.34"`` -> ``("diffusers", "diffusers==0.34")``.

    Raises:
        ValueError: the requirement has no lower bound (``>=`` or ``==``) to test.
    """
    m = _REQ.match(requirement)
    if not m:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    name, extras, spec, marker = m.group(1), m.group(2) or "", m.group(3), m.group(4) or ""
    clauses = [c.strip() for c in spec.split(",") if c.strip()]
    exact = [c for c in clauses if c.startswith("==")]
    lower = [c for c in clauses if c.startswith(">=")]
    if exact:
        version = exact[0][2:].strip()
    elif lower:
        version = lower[0][2:].strip()
    else:
        raise ValueError(f"{requirement!r} declares no floor (>=) or pin (==): a floor must be declared to be tested")
    return normalise(name), f"{name}{extras}=={version}{(' ' + marker) if marker else ''}"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else 0 for part in re.split(r"[.+]", version))


def min_requirements(pyproject: Path, extras: list[str] | None, skip: list[str], torch: str,
                     exclude_extras: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """The pins, in pyproject order: ``(base, raised)``.

    ``base`` pins each package once, at its first floor (the core's floor when the core declares it).
    ``raised`` holds the packages an extra declares with a HIGHER floor than ``base`` (``video =
    ["diffusers>=0.42"]`` over the core's 0.40), at the highest such floor: installing them on top of
    ``base`` gives that extra's own floor set, so both floors get tested.
    ``extras=None`` takes every extra but ``exclude_extras``.
    """
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data["project"]
    reqs = [(req, None) for req in project.get("dependencies", [])]
    optional = project.get("optional-dependencies", {})
    if extras is None:
        extras = [e for e in optional if e not in exclude_extras]
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r} (has {', '.join(sorted(optional))})")
        reqs += [(req, extra) for req in optional[extra]]
    skipped = {normalise(s) for s in skip}
    base: dict[str, str] = {}
    raised: dict[str, tuple[str, str]] = {}
    for req, extra in reqs:
        name, pin = floor_pin(req)
        if name in skipped:
            continue
        if name == "torch":
            print(f"min_requirements: torch declared as {req!r}; installing {torch} instead (older CPU-only "
                  "wheels are not on PyPI)", file=sys.stderr)
            pin = torch
        if name not in base:
            base[name] = pin
            continue
        version = pin.split("==", 1)[1].split(";")[0].strip()
        current = (raised.get(name) or (base[name], ""))[0].split("==", 1)[1].split(";")[0].strip()
        if _version_key(version) > _version_key(current):
            raised[name] = (pin, extra or "")
    for name, (pin, extra) in raised.items():
        print(f"min_requirements: extra {extra!r} raises {base[name]} to {pin}: tested in a second pass",
              file=sys.stderr)
    return list(base.values()), [pin for pin, _ in raised.values()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=REPO / "pyproject.toml")
    parser.add_argument("--extra", action="append", default=[], help="also pin this extra's floors")
    parser.add_argument("--all-extras", action="store_true", help="pin every extra's floors")
    parser.add_argument("--exclude-extra", action="append", default=[], help="with --all-extras: leave this one out")
    parser.add_argument("--skip", action="append", default=[], help="leave this package out")
    parser.add_argument("--torch", default="torch==2.13.0", help="what to install for torch")
    parser.add_argument("--raised", type=Path, help="write the pins that an extra raises above the base here")
    args = parser.parse_args(argv)
    extras = None if args.all_extras else args.extra
    base, raised = min_requirements(args.pyproject, extras, args.skip, args.torch, tuple(args.exclude_extra))
    print("\n".join(base))
    if args.raised:
        args.raised.write_text("".join(f"{pin}\n" for pin in raised))
    return 0


if __name__ == "__main__":
    sys.exit(main())
