"""Benchmark: persona_ml's dlib face pipeline vs face_recognition's defaults, same photos, one run.

Ours:      persona_ml.load_image + FaceEmbedder("dlib") (HOG on a copy downscaled to 800 px,
           upsampling only when nothing is found; 5-point alignment and descriptor on full res).
Baseline:  face_recognition.load_image_file + face_locations (HOG, 1 upsampling, full res)
           + face_encodings (5-point "small" model, num_jitters=1) - the library's defaults.

Each pipeline runs in its own child process (this script with ``--worker``) so that peak memory
(``ru_maxrss`` of that process, and tracemalloc's Python-side peak) is measured cleanly; model
loading is timed separately from the per-image loop. Printed: images/s of each and their ratio,
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
    else:
        import face_recognition  # imports face_recognition_models (needs pkg_resources)

        def run(path):
            img = face_recognition.load_image_file(path)
            locs = face_recognition.face_locations(img)
            encs = face_recognition.face_encodings(img, locs)
            return [((float(left), float(t), float(r), float(b)), np.asarray(e, np.float32))
                    for (t, r, b, left), e in zip(locs, encs)]
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_peak_mb()
    tracemalloc.start()
    results = {}
    per_image = {}
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
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    Path(out).write_text(json.dumps({
        "kind": kind, "load_s": load_s, "elapsed_s": elapsed, "n": len(paths), "results": results, "per_image_s": per_image,
        "rss_start_mb": rss_start, "rss_after_load_mb": rss_loaded, "rss_peak_mb": _rss_peak_mb(),
        "tracemalloc_peak_mb": py_peak / 2**20}))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged; numpy only."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    pos = labels.astype(bool)
    if pos.all() or not pos.any():
        return float("nan")
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


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
    parser.add_argument("--worker", choices=("ours", "baseline"), help=argparse.SUPPRESS)
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
        for kind in ("ours", "baseline"):
            out = Path(tmp) / f"{kind}.json"
            cmd = [sys.executable, __file__, "--worker", kind, "--paths", str(plist), "--out", str(out),
                   "--detect-max-side", str(args.detect_max_side)]
            subprocess.run(cmd, check=True)
            reports[kind] = json.loads(out.read_text())
    ours, base = reports["ours"], reports["baseline"]
    both = set(ours["results"]) & set(base["results"])
    agree = []
    for p in sorted(both):
        (bo, eo, _), (bb, eb, _) = ours["results"][p], base["results"][p]
        if iou(bo, bb) > 0.5:
            agree.append(float(np.dot(eo, eb)))
    agree_arr = np.asarray(agree)
    ips_ours = ours["n"] / ours["elapsed_s"]
    ips_base = base["n"] / base["elapsed_s"]
    mp = np.asarray(sizes) / 1e6
    auc_ours, n_pos, n_neg = verification(ours["results"], rows, both)
    auc_base, _, _ = verification(base["results"], rows, both)
    auc_ours_all, p_all, n_all = verification(ours["results"], rows, set(ours["results"]))
    auc_base_all, pb_all, nb_all = verification(base["results"], rows, set(base["results"]))
    try:
        import dlib

        dlib_version = dlib.__version__
    except ImportError:
        dlib_version = "?"
    print("bench_faces: persona_ml dlib pipeline vs face_recognition defaults")
    print(f"machine: {platform.platform()}; {platform.processor() or platform.machine()}; "
          f"cpu_count={os.cpu_count()}; python {platform.python_version()}; dlib {dlib_version}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"inputs: {len(paths)} photos from {args.faces}/people (sizes {mp.min():.2f}-{mp.max():.2f} MP, "
          f"median {np.median(mp):.2f} MP, {int((mp > 4).sum())} over 4 MP); largest face per photo")
    print(f"ours:     detect_max_side={args.detect_max_side}, upsample only when nothing found, num_jitters=0")
    print("baseline: face_locations(img) [hog, upsample=1] + face_encodings(img, locs) [small, num_jitters=1]")
    print(f"{'':10}{'images/s':>10}{'load s':>9}{'loop s':>9}{'peak RSS MB':>13}{'RSS +MB':>9}"
          f"{'py peak MB':>12}{'found':>8}")
    for name, rep in (("ours", ours), ("baseline", base)):
        print(f"{name:10}{rep['n'] / rep['elapsed_s']:>10.2f}{rep['load_s']:>9.2f}{rep['elapsed_s']:>9.1f}"
              f"{rep['rss_peak_mb']:>13.0f}{rep['rss_peak_mb'] - rep['rss_after_load_mb']:>9.0f}"
              f"{rep['tracemalloc_peak_mb']:>12.1f}{len(rep['results']):>5}/{rep['n']}")
    print(f"speed ratio (ours / baseline images/s): {ips_ours / ips_base:.2f}x")
    for label, lo, hi in (("<= 0.1 MP (150 px crops)", 0, 0.1), ("0.1-1 MP", 0.1, 1.0), ("> 1 MP (photos)", 1.0, 1e9)):
        sel = [p for p, m in zip(paths, mp) if lo < m <= hi] if lo else [p for p, m in zip(paths, mp) if m <= hi]
        if sel:
            to = sum(ours["per_image_s"][p] for p in sel)
            tb = sum(base["per_image_s"][p] for p in sel)
            print(f"  {label:26} n={len(sel):3}: ours {len(sel) / to:6.2f} img/s, baseline {len(sel) / tb:6.2f} img/s, "
                  f"ratio {tb / to:.2f}x")
    if len(agree_arr):
        print(f"embedding agreement (cosine, same face in both, n={len(agree_arr)}): mean {agree_arr.mean():.4f}, "
              f"median {np.median(agree_arr):.4f}, min {agree_arr.min():.4f}")
    print(f"verification AUC on photos both found ({n_pos} same / {n_neg} different pairs): "
          f"ours {auc_ours:.4f}, baseline {auc_base:.4f}")
    print(f"verification AUC on each one's own detections: ours {auc_ours_all:.4f} ({p_all}/{n_all} pairs), "
          f"baseline {auc_base_all:.4f} ({pb_all}/{nb_all} pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
