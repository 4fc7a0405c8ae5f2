"""Every error code is declared once; every code the package raises is declared; the README's
error table lists exactly the declared codes; no declared code is dead."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from persona_ml import errors

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "persona_ml"
# every place that may construct an error: the package and the entry-point scripts users run
SOURCES = (PACKAGE, ROOT / "scripts")


def _error_classes() -> dict[str, type]:
    return {name: obj for name, obj in vars(errors).items()
            if isinstance(obj, type) and issubclass(obj, errors.PersonaMLError)}


def _source_files() -> list[Path]:
    return sorted(p for root in SOURCES if root.is_dir() for p in root.rglob("*.py"))


def _class_codes() -> dict[str, str]:
    """Error class name -> its default code, for the classes of persona_ml.errors and for every
    subclass defined anywhere else in the sources (found in the AST, so an error class added in
    another module cannot escape the checks)."""
    codes = {name: cls.code for name, cls in _error_classes().items()}
    defs = []
    for path in _source_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", None) for b in node.bases]
                own = next((st.value.value for st in node.body if isinstance(st, ast.Assign)
                            and any(isinstance(t, ast.Name) and t.id == "code" for t in st.targets)
                            and isinstance(st.value, ast.Constant)), None)
                defs.append((node.name, bases, own))
    changed = True
    while changed:  # subclasses of subclasses
        changed = False
        for name, bases, own in defs:
            parent = next((b for b in bases if b in codes), None)
            if parent is not None and name not in codes:
                codes[name] = own if own is not None else codes[parent]
                changed = True
    return codes


def _string_values(node: ast.AST, func: ast.AST) -> list[str] | None:
    """The string(s) ``node`` can evaluate to: a literal, a conditional of literals, or a local
    name assigned only such values in the enclosing function. ``None`` when it cannot be told."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        a, b = _string_values(node.body, func), _string_values(node.orelse, func)
        return None if a is None or b is None else a + b
    if isinstance(node, ast.Name) and func is not None:
        found: list[str] = []
        for sub in ast.walk(func):
            if isinstance(sub, ast.Assign) and any(isinstance(t, ast.Name) and t.id == node.id for t in sub.targets):
                vals = _string_values(sub.value, None)
                if vals is None:
                    return None
                found += vals
        return found or None
    return None


def raised_codes() -> dict[str, list[str]]:
    """code -> ["path:line", ...] for every construction of a PersonaMLError subclass in the sources
    (also through an import alias: ``from persona_ml.errors import InputError as Bad``)."""
    class_codes = _class_codes()
    out: dict[str, list[str]] = {}
    for path in _source_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {a.asname: a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                   for a in n.names if a.asname and a.name in class_codes}
        funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", None)
            name = aliases.get(name or "", name)
            if name not in class_codes:
                continue
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            kw = next((k for k in call.keywords if k.arg == "code"), None)
            if kw is None:
                codes = [class_codes[name]]
            else:
                enclosing = [f for f in funcs if f.lineno <= call.lineno <= (f.end_lineno or f.lineno)]
                codes = _string_values(kw.value, enclosing[-1] if enclosing else None)
                assert codes is not None, f"{where}: code= must be a literal (or a local of literals) to be checked"
            for code in codes:
                out.setdefault(code, []).append(where)
    return out


def readme_codes() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("| code | HTTP |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        m = re.match(r"\|\s*`([a-z0-9_]+)`\s*\|\s*(\d{3})\s*\|", line)
        assert m, f"README error table row not of the form | `code` | status | ...: {line!r}"
        rows.append((m.group(1), int(m.group(2))))
    return rows


def test_every_raised_code_is_declared():
    undeclared = {c: w for c, w in raised_codes().items() if c not in errors.ERROR_CODES}
    assert not undeclared, f"raised but not declared in persona_ml.errors: {undeclared}"


def test_every_declared_code_is_raised_somewhere():
    dead = sorted(set(errors.ERROR_CODES) - set(raised_codes()))
    assert not dead, f"declared but never raised (remove them, or raise them): {dead}"


def test_readme_table_lists_exactly_the_declared_codes_with_their_status():
    rows = readme_codes()
    codes = [c for c, _ in rows]
    assert len(codes) == len(set(codes)), "a code is listed twice in the README"
    assert set(codes) == set(errors.ERROR_CODES), (
        f"README only: {sorted(set(codes) - set(errors.ERROR_CODES))}; "
        f"undocumented: {sorted(set(errors.ERROR_CODES) - set(codes))}")
    wrong = {c: (s, errors.ERROR_CODES[c].http_status) for c, s in rows if errors.ERROR_CODES[c].http_status != s}
    assert not wrong, f"README status differs from the registry (readme, registry): {wrong}"


def test_http_status_comes_from_the_code():
    assert errors.InputError("x", code="base_model_unknown").http_status == 400
    assert errors.ModelNotFoundError("x", code="model_corrupt").http_status == 503
    assert errors.TrainingError("x", code="device_unavailable").http_status == 503


def test_an_undeclared_code_is_recorded(caplog):
    before = len(errors.UNDECLARED_CODES_SEEN)
    err = errors.InputError("x", code="no_such_code_anywhere")
    assert err.code == "no_such_code_anywhere" and err.http_status == 400
    assert errors.UNDECLARED_CODES_SEEN[before:] == ["no_such_code_anywhere"]
    del errors.UNDECLARED_CODES_SEEN[before:]  # keep the conftest guard quiet for this deliberate case


def test_the_scan_sees_aliases_and_subclasses_defined_elsewhere(tmp_path, monkeypatch):
    """The static checks would miss an error raised through an alias or a subclass in another module."""
    pkg = tmp_path / "persona_ml"
    pkg.mkdir()
    (pkg / "extra.py").write_text(
        "from persona_ml.errors import InputError as Bad, PersonaMLError\n"
        "class WidgetError(PersonaMLError):\n    code = 'widget_broken'\n"
        "class SubWidgetError(WidgetError):\n    pass\n"
        "def f():\n    raise Bad('x', code='alias_code')\n"
        "def g():\n    raise SubWidgetError('y')\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "SOURCES", (pkg,))
    found = raised_codes()
    assert found["alias_code"] == ["persona_ml/extra.py:7"]
    assert found["widget_broken"] == ["persona_ml/extra.py:9"]


def test_declaring_a_code_twice_is_refused():
    with pytest.raises(RuntimeError, match="declared twice"):
        errors._declare(400, {"invalid_input": "again"})
