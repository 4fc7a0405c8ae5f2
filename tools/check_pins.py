"""Check that a venv holds exactly the pinned versions of a requirements file (``make test-min``).

Usage:
    python tools/check_pins.py pins.txt freeze.txt     # freeze.txt: `pip freeze` of the venv

Exits 1 naming every package whose installed version differs (``0.34`` and ``0.34.0`` are equal;
a local suffix such as ``+cpu`` is ignored).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split(";")[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            out[_norm(name.split("[")[0])] = version.strip()
    return out


def same_version(a: str, b: str) -> bool:
    pa, pb = a.split("+")[0].split("."), b.split("+")[0].split(".")
    n = max(len(pa), len(pb))
    return pa + ["0"] * (n - len(pa)) == pb + ["0"] * (n - len(pb))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    want, have = _pins(Path(args[0])), _pins(Path(args[1]))
    wrong = {n: (v, have.get(n)) for n, v in want.items() if not (n in have and same_version(v, have[n]))}
    if wrong:
        print(f"test-min: installed versions differ from the floors (wanted, got): {wrong}", file=sys.stderr)
        return 1
    print("test-min: installed exactly the declared floors: " + ", ".join(f"{n}=={have[n]}" for n in sorted(want)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
