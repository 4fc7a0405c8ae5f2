"""Every ``# noqa`` in the tree names rules that ruff knows (ruff itself only warns about unknown
codes, and a bare ``# noqa`` silences every rule on the line)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINTED = ("persona_ml", "scripts", "benchmarks", "tests", "tools")  # what `make lint` checks
_NOQA = re.compile(r"#\s*noqa(?P<colon>\s*:\s*(?P<codes>[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*))?", re.IGNORECASE)


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    return [exe]


def noqa_markers(paths) -> list[tuple[str, int, str, list[str]]]:
    """(file, line, comment, codes) of every noqa comment (real comments only, not strings)."""
    found = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type != tokenize.COMMENT:
                continue
            m = _NOQA.search(tok.string)
            if m:
                codes = re.split(r"\s*,\s*", m.group("codes")) if m.group("codes") else []
                found.append((str(path.relative_to(ROOT)), tok.start[0], tok.string, codes))
    return found


def test_every_noqa_names_rules_ruff_knows():
    rules = json.loads(subprocess.run([*_ruff(), "rule", "--all", "--output-format", "json"], capture_output=True,
                                      text=True, check=True).stdout)
    known = {r["code"] for r in rules}
    assert len(known) > 500  # the listing really came back
    files = sorted(p for d in LINTED if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*.py"))
    markers = noqa_markers(files)
    assert markers, "no noqa markers found at all: the scan is broken"
    bare = [f"{f}:{n}: {c}" for f, n, c, codes in markers if not codes]
    assert not bare, f"bare `# noqa` silences every rule; name the rule(s): {bare}"
    unknown = [f"{f}:{n}: {code}" for f, n, _, codes in markers for code in codes if code.upper() not in known]
    assert not unknown, f"noqa markers name rules ruff does not know: {unknown}"


def test_the_scan_finds_bare_and_unknown_markers(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    f = tmp_path / "x.py"
    f.write_text("import os  # noqa\nimport re  # noqa: F401, XQ999 (why)\ns = '# noqa: E501'\n")
    assert noqa_markers([f]) == [("x.py", 1, "# noqa", []), ("x.py", 2, "# noqa: F401, XQ999 (why)", ["F401", "XQ999"])]
