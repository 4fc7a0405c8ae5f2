"""A lower stage never imports a higher one (STYLE.md, Layout): shared formats live in lora/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "persona_ml"

# stage -> stages it must not import
FORBIDDEN = {
    "images": {"faces", "dataset", "training", "inference", "eval", "voice", "video", "cli"},
    "faces": {"dataset", "training", "inference", "eval", "voice", "video", "cli"},
    "lora": {"training", "inference", "eval", "voice", "video", "cli"},
    "dataset": {"training", "inference", "eval", "voice", "video", "cli"},
    "training": {"voice", "video", "cli"},
    "inference": {"training", "eval", "voice", "video", "cli"},
    "eval": {"voice", "video", "cli"},
    "voice": {"training", "inference", "eval", "video", "cli"},
    "video": {"training", "eval", "cli"},
}


def _imported_stages(path: Path) -> set[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(PACKAGE).parts
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = list(rel[:-1])[: len(rel) - node.level]
                names = [".".join(["persona_ml", *base, *(node.module.split(".") if node.module else [])])]
            elif node.module:
                names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "persona_ml" and len(parts) > 1:
                out.add((parts[1], node.lineno))
    return out


@pytest.mark.parametrize("stage", sorted(FORBIDDEN))
def test_lower_stage_does_not_import_a_higher_one(stage):
    root = PACKAGE / stage
    files = [root.with_suffix(".py")] if root.with_suffix(".py").is_file() else sorted(root.rglob("*.py"))
    bad = [f"{f.relative_to(PACKAGE)}:{line} imports persona_ml.{s}" for f in files
           for s, line in _imported_stages(f) if s in FORBIDDEN[stage]]
    assert not bad, bad
