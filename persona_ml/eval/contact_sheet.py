"""Contact sheet: one row per prompt, one column per seed, each tile captioned with its identity."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._atomic import atomic_path
from ..errors import InputError

__all__ = ["contact_sheet"]


def contact_sheet(rows: Sequence[tuple[str, Sequence[tuple[Any, str]]]], path: str | os.PathLike, *,
                  tile: int = 128) -> Path:
    """Write a PNG grid.

    Args:
        rows: ``(row label, [(PIL image, caption), ...])`` per row.
        path: output PNG (written atomically).
        tile: tile side in pixels.

    Returns:
        The path.

    Raises:
        InputError: no rows.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise InputError("contact sheet needs at least one row", field="rows", value=0)
    cols = max(len(r[1]) for r in rows)
    label_w, cap_h = 120, 14
    sheet = Image.new("RGB", (label_w + cols * tile, len(rows) * (tile + cap_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, cells) in enumerate(rows):
        y = r * (tile + cap_h)
        draw.text((4, y + tile // 2), label[:18], fill="black")
        for c, (img, caption) in enumerate(cells):
            x = label_w + c * tile
            sheet.paste(img.convert("RGB").resize((tile, tile)), (x, y))
            draw.text((x + 2, y + tile), caption[:22], fill="black")
    with atomic_path(path, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)
