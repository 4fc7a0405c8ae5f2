"""Benchmark: the video identity report vs embedding every frame, and tiny-pipeline seconds per frame.

1. Identity report. Baseline: ``score_video(..., every_frame=True)`` - the face model (dlib) on
   every frame, the naive and exact answer. Ours: the default adaptive sampling (a sparse grid,
   bisection where neighbours disagree, both sides of every cut). Same clip, same profile, same
   embedder, one process. Printed: frames covered per second of each and their ratio, frames
   embedded, and how far our min / mean / p10 / flagged spans are from the baseline's.
   The clip is made from ../shared/faces photos: the character (two photos not in its profile),
   a stranger for 6 frames, no face for 10 frames; each still held with a little jitter.
2. Tiny pipelines: seconds per output frame of the tiny random LTX-2.5 DFR (talking head) and
   Wan2.2-Animate (motion transfer) pipelines on CPU - a plumbing cost, not a model speed.

GPU figures (real sizes, seconds per second of video, peak memory) are not measured: no GPU here.
Wall and CPU seconds are both printed; this machine is shared, so wall times are noisy.

Usage:
    python benchmarks/bench_video.py [--faces ../shared/faces] [--frames-per-still 60]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_FACES = Path(os.environ.get("PERSONA_ML_SHARED_FACES", REPO.parent / "shared" / "faces"))


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES)
    ap.add_argument("--frames-per-still", type=int, default=60)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_video.txt")
    args = ap.parse_args()
    import torch

    from persona_ml.faces import FaceEmbedder, FaceProfile
    from persona_ml.images import load_image
    from persona_ml.video.clips import hold_clip
    from persona_ml.video.identity import score_video

    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    load = os.getloadavg()
    say("bench_video: identity report (adaptive sampling) vs embedding every frame; tiny video pipelines")
    say(f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), load average {load[0]:.2f} {load[1]:.2f}")
    if not (args.faces / "MANIFEST.tsv").is_file():
        say(f"identity part skipped: no ../shared/faces at {args.faces}")
    else:
        people = args.faces / "people"
        embedder = FaceEmbedder("dlib")
        profile = FaceProfile.build([embedder.embed_primary(people / "angelina" / f"img{i}.jpg") for i in (1, 2, 4, 5)])
        k = args.frames_per_still
        stills = [people / "angelina" / "img6.jpg", people / "deepface_p08" / "img8.jpg",
                  args.faces / "nonfaces" / "white.png", people / "angelina" / "img7.jpg"]
        counts = [k, 6, 10, k]
        clip = hold_clip([load_image(p).pixels for p in stills], counts, size=args.size)
        say(f"input: {len(clip)} frames at {args.size}x{args.size}, 24 fps: "
            + ", ".join(f"{p.parent.name}/{p.name} x{c}" for p, c in zip(stills, counts))
            + f"; profile of 4 angelina photos; embedder {embedder.provenance.model_name} (dlib, CPU)")
        naive, nw, nc = _timed(lambda: score_video(clip, 24.0, profile, embedder, every_frame=True))
        ours, ow, oc = _timed(lambda: score_video(clip, 24.0, profile, embedder))
        n = len(clip)
        say(f"baseline (every frame): {n / nw:7.2f} frames/s wall ({nw:.2f} s wall, {nc:.2f} s CPU), "
            f"{naive.frames_scored} frames embedded")
        say(f"ours (adaptive):        {n / ow:7.2f} frames/s wall ({ow:.2f} s wall, {oc:.2f} s CPU), "
            f"{ours.frames_scored} frames embedded")
        say(f"ratio: {nw / ow:.2f}x wall, {nc / oc:.2f}x CPU")
        for key in ("similarity_min", "similarity_mean", "similarity_p10", "detection_rate"):
            a, b = getattr(naive, key), getattr(ours, key)
            say(f"  {key:16s} baseline {a:.5f}  ours {b:.5f}  |diff| {abs(a - b):.5f}")
        same = [s.to_dict() for s in naive.spans] == [s.to_dict() for s in ours.spans]
        say(f"  flagged spans identical: {same} ({', '.join(f'{s.flag} {s.start_frame}-{s.end_frame}' for s in ours.spans)})")

    from persona_ml.video.motion import MotionSettings, PoseRunner, WanAnimateMotionTransfer
    from persona_ml.video.speech import Speech
    from persona_ml.video.talking_head import LTX2DFRTalkingHead, TalkingHeadSettings
    from persona_ml.video.testing import (
        build_tiny_ltx2_dfr_pipeline,
        build_tiny_wan_animate_pipeline,
        write_tiny_pose_onnx,
    )

    portrait = np.full((96, 96, 3), 128, np.uint8)
    t = np.arange(16000) / 16000
    speech = Speech.from_array((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    backend = LTX2DFRTalkingHead(build_tiny_ltx2_dfr_pipeline())
    settings = TalkingHeadSettings(height=64, width=64, fps=24.0)
    backend.generate(portrait, speech, TalkingHeadSettings(height=64, width=64, sigmas=(1.0,)))  # warm-up
    gen, w, c = _timed(lambda: backend.generate(portrait, speech, settings))
    nf = len(gen.frames)
    say(f"tiny LTX-2.5 DFR talking head (64x64, {nf} frames, {gen.total_steps} steps, CPU): "
        f"{w / nf:.3f} s/frame wall, {c / nf:.3f} s/frame CPU")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        pose = PoseRunner(write_tiny_pose_onnx(Path(tmp) / "pose.onnx"))
        from persona_ml.faces import FaceEmbedder

        if (args.faces / "MANIFEST.tsv").is_file():
            from persona_ml.images import load_image
            from persona_ml.video.clips import hold_clip

            driving = hold_clip([load_image(args.faces / "people" / "deepface_p08" / "img8.jpg").pixels], [17], size=128)
            mt = WanAnimateMotionTransfer(build_tiny_wan_animate_pipeline(), pose, FaceEmbedder("dlib"))
            ms = MotionSettings(height=64, width=64, num_steps=2, segment_frame_length=17, max_sequence_length=16)
            gen, w, c = _timed(lambda: mt.generate(portrait, driving, 24.0, ms))
            nf = len(gen.frames)
            say(f"tiny Wan2.2-Animate motion transfer (64x64, {nf} frames, {gen.total_steps} steps, 512 px face crops, "
                f"CPU): {w / nf:.3f} s/frame wall, {c / nf:.3f} s/frame CPU")
    say("GPU (real sizes, random weights): not measured (no GPU on this machine)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from persona_ml._atomic import atomic_write_text

    atomic_write_text(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
