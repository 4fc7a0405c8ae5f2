"""Benchmark: persona_ml's dlib face pipeline vs face_recognition, same photos, one run.

Ours:        persona_ml.load_image + FaceEmbedder("dlib") (HOG on a copy downscaled to 800 px,
             upsampling only when nothing is found; 5-point alignment and descriptor on full res).
Defaults:    face_recognition.load_image_file + face_locations (HOG, 1 upsampling, full res)
             + face_encodings (5-point "small" model, num_jitters=1) - the library's defaults.
Downscaled:  face_recognition as its own examples use it on large frames
             (facerec_from_webcam_faster.py: detect on a resized copy, scale the boxes back):
             cv2.resize to the same long side as ours (--detect-max-side), face_locations there
             (upsample=1), boxes scaled back, face_encodings on the full-resolution image. The
             strongest fair baseline: same detection size as ours, same descriptor resolution.

Each pipeline runs in its own child process (this script with ``--worker``) so that peak memory
(``ru_maxrss`` of that process, and tracemalloc's Python-side peak) and CPU seconds (user + system
of that process) are measured cleanly; model loading is timed separately from the per-image loop,
and the machine's load average is read before and after each loop (this machine is shared: compare
CPU seconds as well as wall seconds). Printed (and written to benchmarks/results/bench_faces.txt):
images/s of each and both ratios,
peak memory, per-face cosine agreement of the two embeddings (largest face of each photo, matched
by box overlap), verification ROC AUC of each over labelled identities (MANIFEST.tsv; `unknown`
and near-duplicates left out), inputs and machine.

Usage:
    python benchmarks/bench_faces.py [--faces ../shared/faces] [--limit N] [--detect-max-side 800]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FACES = Path(os.environ.get("PERSONA_ML_SHARED_FACES", REPO.parent / "shared" / "faces"))


def _manifest(faces: Path) -> list[dict]:
    with open(faces / "MANIFEST.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    for r in rows:
        notes = (r.get("notes") or "").lower()
        r["near_duplicate"] = "near-duplicate" in notes or "mirrored copy" in notes
    return [r for r in rows if r["path"].startswith("people/")]


def _rss_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _cpu_s() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


KINDS = ("ours", "baseline", "downscaled")
LABELS = {"ours": "ours", "baseline": "defaults", "downscaled": "downscaled"}


def worker(kind: str, paths: list[str], out: str, detect_max_side: int) -> None:
    import tracemalloc

    rss_start = _rss_peak_mb()
    t0 = time.perf_counter()
    if kind == "ours":
        sys.path.insert(0, str(REPO))
        from persona_ml.faces import FaceEmbedder

        embedder = FaceEmbedder("dlib", detect_max_side=detect_max_side)

        def run(path):
            faces = embedder.analyze_one(path)
            return [(f.bbox, f.embedding) for f in faces]
    elif kind == "baseline":
        import face_recognition  # imports face_recognition_models (needs pkg_resources)

        def run(path):
            img = face_recognition.load_image_file(path)
            locs = face_recognition.face_locations(img)
            encs = face_recognition.face_encodings(img, locs)
            return [((float(left), float(t), float(r), float(b)), np.asarray(e, np.float32))
                    for (t, r, b, left), e in zip(locs, encs)]
    else:
        import cv2
        import face_recognition

        def run(path):
            img = face_recognition.load_image_file(path)
            h, w = img.shape[:2]
            scale = min(1.0, detect_max_side / max(h, w))
            small = cv2.resize(img, (0, 0), fx=scale, fy=scale) if scale < 1.0 else img
            locs_small = face_recognition.face_locations(small)
            locs = [(min(h, round(t / scale)), min(w, round(r / scale)), min(h, round(b / scale)), round(left / scale))
                    for (t, r, b, left) in locs_small]
            encs = face_recognition.face_encodings(img, locs)
            return [((float(left), float(t), float(r), float(b)), np.asarray(e, np.float32))
                    for (t, r, b, left), e in zip(locs, encs)]
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_peak_mb()
    tracemalloc.start()
    results = {}
    per_image = {}
    load_before = os.getloadavg()
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    for path in paths:
        t_img = time.perf_counter()
        try:
            faces = run(path)
        except Exception as exc:  # noqa: BLE001 (a pipeline failing on one photo counts as a miss)
            faces = []
            print(f"{kind}: {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        if faces:
            bbox, emb = max(faces, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))
            emb = np.asarray(emb, np.float32)
            results[path] = (list(map(float, bbox)), (emb / np.linalg.norm(emb)).tolist(), len(faces))
        per_image[path] = time.perf_counter() - t_img
    elapsed = time.perf_counter() - t0
    cpu_s = _cpu_s() - cpu0
    load_after = os.getloadavg()
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    Path(out).write_text(json.dumps({
        "kind": kind, "load_s": load_s, "elapsed_s": elapsed, "cpu_s": cpu_s, "loadavg": [load_before[0], load_after[0]],
        "n": len(paths), "results": results, "per_image_s": per_image,
        "rss_start_mb": rss_start, "rss_after_load_mb": rss_loaded, "rss_peak_mb": _rss_peak_mb(),
        "tracemalloc_peak_mb": py_peak / 2**20}))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula, ties averaged (the library's ``persona_ml.metrics``)."""
    from persona_ml.metrics import verification_metrics

    pos = labels.astype(bool)
    if pos.all() or not pos.any():
        return float("nan")
    return verification_metrics(scores[pos], scores[~pos]).auc


def verification(results: dict, rows: list[dict], keep: set[str]) -> tuple[float, int, int]:
    labelled = [r for r in rows if r["identity"] != "unknown" and not r["near_duplicate"] and r["abspath"] in keep]
    scores, labels = [], []
    for a, b in itertools.combinations(labelled, 2):
        ea, eb = np.asarray(results[a["abspath"]][1]), np.asarray(results[b["abspath"]][1])
        scores.append(float(ea @ eb))
        labels.append(a["identity"] == b["identity"])
    s, y = np.asarray(scores), np.asarray(labels)
    return auc(s, y), int(y.sum()), int((~y).sum())


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, default=DEFAULT_FACES)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N photos (0 = all)")
    parser.add_argument("--detect-max-side", type=int, default=800)
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "bench_faces.txt",
                        help="where the printed report is also written")
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, json.loads(Path(args.paths).read_text()), args.out, args.detect_max_side)
        return 0
    if not (args.faces / "MANIFEST.tsv").is_file():
        print(f"no MANIFEST.tsv under {args.faces}; pass --faces", file=sys.stderr)
        return 2
    rows = _manifest(args.faces)
    for r in rows:
        r["abspath"] = str(args.faces / r["path"])
    if args.limit:
        rows = rows[: args.limit]
    paths = [r["abspath"] for r in rows]
    sizes = []
    from PIL import Image

    for p in paths:
        with Image.open(p) as im:
            sizes.append(im.size[0] * im.size[1])
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        plist = Path(tmp) / "paths.json"
        plist.write_text(json.dumps(paths))
        for kind in KINDS:
            out = Path(tmp) / f"{kind}.json"
            cmd = [sys.executable, __file__, "--worker", kind, "--paths", str(plist), "--out", str(out),
                   "--detect-max-side", str(args.detect_max_side)]
            subprocess.run(cmd, check=True)
            reports[kind] = json.loads(out.read_text())
    ours = reports["ours"]
    mp = np.asarray(sizes) / 1e6
    try:
        import dlib

        dlib_version = dlib.__version__
    except ImportError:
        dlib_version = "?"
    lines: list[str] = []
    say = lines.append
    say("bench_faces: persona_ml dlib pipeline vs face_recognition (its defaults, and as its examples use it on "
        "large frames)")
    say(f"machine: {platform.platform()}; {platform.processor() or platform.machine()}; "
        f"cpu_count={os.cpu_count()}; python {platform.python_version()}; dlib {dlib_version}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    say(f"inputs: {len(paths)} photos from {args.faces}/people (sizes {mp.min():.2f}-{mp.max():.2f} MP, "
        f"median {np.median(mp):.2f} MP, {int((mp > 4).sum())} over 4 MP); largest face per photo")
    say(f"ours:       detect_max_side={args.detect_max_side}, upsample only when nothing found, num_jitters=0")
    say("defaults:   face_locations(img) [hog, upsample=1] + face_encodings(img, locs) [small, num_jitters=1]")
    say(f"downscaled: face_locations(cv2.resize to long side {args.detect_max_side}) [hog, upsample=1], boxes scaled "
        "back, face_encodings(full img, boxes) [small, num_jitters=1]")
    say(f"{'':11}{'images/s':>9}{'CPU s':>8}{'loop s':>8}{'load s':>8}{'loadavg':>12}{'peak RSS MB':>13}"
        f"{'RSS +MB':>9}{'py peak MB':>12}{'found':>8}")
    for kind in KINDS:
        rep = reports[kind]
        la = rep["loadavg"]
        say(f"{LABELS[kind]:11}{rep['n'] / rep['elapsed_s']:>9.2f}{rep['cpu_s']:>8.1f}{rep['elapsed_s']:>8.1f}"
            f"{rep['load_s']:>8.2f}{f'{la[0]:.2f}->{la[1]:.2f}':>12}{rep['rss_peak_mb']:>13.0f}"
            f"{rep['rss_peak_mb'] - rep['rss_after_load_mb']:>9.0f}{rep['tracemalloc_peak_mb']:>12.1f}"
            f"{len(rep['results']):>5}/{rep['n']}")
    for kind in KINDS[1:]:
        base = reports[kind]
        name = LABELS[kind]
        wall = (ours["n"] / ours["elapsed_s"]) / (base["n"] / base["elapsed_s"])
        cpu = base["cpu_s"] / ours["cpu_s"]
        say(f"ratio vs {name}: {wall:.2f}x images/s (wall), {cpu:.2f}x less CPU time")
        for label, lo, hi in (("<= 0.1 MP (150 px crops)", 0, 0.1), ("0.1-1 MP", 0.1, 1.0),
                              ("> 1 MP (photos)", 1.0, 1e9)):
            sel = [p for p, m in zip(paths, mp) if (lo < m <= hi if lo else m <= hi)]
            if sel:
                to = sum(ours["per_image_s"][p] for p in sel)
                tb = sum(base["per_image_s"][p] for p in sel)
                say(f"  {label:26} n={len(sel):3}: ours {len(sel) / to:6.2f} img/s, {name} {len(sel) / tb:6.2f} img/s, "
                    f"ratio {tb / to:.2f}x")
        both = set(ours["results"]) & set(base["results"])
        agree = np.asarray([float(np.dot(ours["results"][p][1], base["results"][p][1])) for p in sorted(both)
                            if iou(ours["results"][p][0], base["results"][p][0]) > 0.5])
        if len(agree):
            say(f"  embedding agreement with ours (cosine, same face, n={len(agree)}): mean {agree.mean():.4f}, "
                f"median {np.median(agree):.4f}, min {agree.min():.4f}")
        auc_o, n_pos, n_neg = verification(ours["results"], rows, both)
        auc_b, _, _ = verification(base["results"], rows, both)
        say(f"  verification AUC on photos both found ({n_pos} same / {n_neg} different pairs): ours {auc_o:.4f}, "
            f"{name} {auc_b:.4f}")
    for kind in KINDS:
        auc_k, p_k, n_k = verification(reports[kind]["results"], rows, set(reports[kind]["results"]))
        say(f"verification AUC on its own detections: {LABELS[kind]} {auc_k:.4f} ({p_k}/{n_k} pairs)")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
