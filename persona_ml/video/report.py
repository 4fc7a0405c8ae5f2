"""The identity report's pictures and file: a strip of frames (PNG), similarity over time (PNG), JSON.

Every file is written atomically (temp file beside it, fsync, rename).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._atomic import atomic_path, atomic_write_json
from ..errors import InputError
from .identity import FLAG_FACE_LOST, FLAG_IDENTITY_LOW, VideoIdentityReport

_COLOURS = {"ok": (40, 160, 60), FLAG_IDENTITY_LOW: (210, 40, 40), FLAG_FACE_LOST: (130, 130, 130)}


def write_strip(report: VideoIdentityReport, frames: np.ndarray, path: str | os.PathLike, *, count: int = 8,
                tile: int = 128) -> Path:
    """A row of ``count`` evenly spaced scored frames, each framed by its outcome (green: the character,
    red: ``identity_low``, grey: ``face_lost``) and captioned with its time and similarity.

    Raises:
        InputError: ``frames`` and the report disagree on the frame count.
    """
    from PIL import Image, ImageDraw

    if len(frames) != len(report.frames):
        raise InputError(f"{len(frames)} frames for a report of {len(report.frames)}", field="frames",
                         value=len(frames))
    scored = [f for f in report.frames if f.scored] or report.frames
    # flagged frames first in line for a place, so a short glitch is never left out of the strip
    picks = {scored[int(round(k))].index for k in np.linspace(0, len(scored) - 1, min(count, len(scored)))}
    for span in report.spans:
        if len(picks) >= count + 2:
            break
        picks.add(span.start_frame)
    chosen = sorted(picks)
    cap, border = 16, 4
    sheet = Image.new("RGB", (len(chosen) * (tile + border), tile + cap + border), "white")
    draw = ImageDraw.Draw(sheet)
    for k, idx in enumerate(chosen):
        fs = report.frames[idx]
        state = FLAG_FACE_LOST if FLAG_FACE_LOST in fs.flags else FLAG_IDENTITY_LOW if fs.flags else "ok"
        x = k * (tile + border)
        draw.rectangle([x, 0, x + tile + border - 1, tile + border - 1], fill=_COLOURS[state])
        img = Image.fromarray(np.asarray(frames[idx], np.uint8)).convert("RGB")
        img.thumbnail((tile, tile))
        sheet.paste(img, (x + border // 2 + (tile - img.width) // 2, border // 2 + (tile - img.height) // 2))
        sim = "no face" if fs.similarity is None else f"{fs.similarity:.3f}"
        draw.text((x + 2, tile + border), f"{fs.time_s:.2f}s {sim}", fill="black")
    with atomic_path(path, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)


def write_similarity_plot(report: VideoIdentityReport, path: str | os.PathLike) -> Path:
    """Similarity over time (scored frames as dots, the interpolated line, the threshold, flagged spans shaded)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    t = np.array([f.time_s for f in report.frames])
    s = np.array([np.nan if f.similarity is None else f.similarity for f in report.frames])
    ax.plot(t, s, lw=1.0, color="tab:blue", label="similarity")
    sc = [f for f in report.frames if f.scored and f.similarity is not None]
    ax.scatter([f.time_s for f in sc], [f.similarity for f in sc], s=8, color="tab:blue", label="scored frame")
    ax.axhline(report.threshold, ls="--", color="grey", label="same-person threshold")
    for span in report.spans:
        ax.axvspan(span.start_s, span.end_s, color="red" if span.flag == FLAG_IDENTITY_LOW else "grey", alpha=0.2,
                   lw=0)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("cosine to profile")
    ax.set_title(f"identity over time (detection {report.detection_rate:.0%}, {report.frames_scored} of "
                 f"{len(report.frames)} frames embedded)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def write_report(report: VideoIdentityReport, frames: np.ndarray, out_dir: str | os.PathLike, *,
                 stem: str = "identity") -> Path:
    """Write ``<stem>_strip.png``, ``<stem>_similarity.png`` and ``<stem>.json`` into ``out_dir``.

    Returns:
        The JSON path (its ``strip_path``/``plot_path`` name the PNGs).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report.strip_path = str(write_strip(report, frames, out / f"{stem}_strip.png"))
    report.plot_path = str(write_similarity_plot(report, out / f"{stem}_similarity.png"))
    return atomic_write_json(out / f"{stem}.json", report.to_dict())
