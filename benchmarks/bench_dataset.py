"""Wall time and peak memory to screen and prepare a 30-photo set, per stage.

The set is built from ../shared/faces photos (no person there has 30 photos, so it mixes
several people; the identity check still runs against a profile but its cut is disabled with
``identity_min_cosine=-1`` so that every usable photo reaches preparation). Stages:

    decode        load_image on every photo (EXIF, RGB conversion)
    detect+embed  FaceEmbedder("dlib").analyze on the decoded photos
    screening     screen_dataset on decoded photos with precomputed faces (hashes, pHash,
                  exposure, identity, near-duplicates, coverage, rules)
    prepare       prepare_dataset: crops, resizes, masks, captions, PNG writes, manifest

Baseline: the staged run above holds every decoded photo in memory at once (a naive
sequential pipeline); the library's one-call path ``screen_dataset(paths, ...)`` streams the
photos in batches of 8 and drops pixels after measuring. Both run in this process.

Usage: python benchmarks/bench_dataset.py [--faces ../shared/faces] [--n 30]
Printed, and written to benchmarks/results/bench_dataset.txt (``--results``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ("angelina", "deepface_p08", "deepface_p03", "deepface_p29", "deepface_p13", "deepface_p16",
           "deepface_p18", "deepface_p22")


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class PeakSampler:
    """Samples RSS every 2 ms in a thread; ``stage()`` reports wall time and peak RSS of a block."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.rows: list[tuple[str, float, float, float]] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.002)

    @contextmanager
    def stage(self, name: str):
        start_rss = rss_mb()
        self.peak = start_rss
        t0 = time.perf_counter()
        yield
        wall = time.perf_counter() - t0
        time.sleep(0.005)
        peak = max(self.peak, rss_mb())
        self.rows.append((name, wall, peak, peak - start_rss))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def best(runs: list[list[tuple[str, float, float, float]]]) -> list[tuple[str, float, float, float]]:
    """Per stage: the lowest wall time over runs (shared CPUs add noise), the highest peak RSS."""
    out = []
    for i, (name, *_rest) in enumerate(runs[0]):
        rows = [r[i] for r in runs]
        out.append((name, min(r[1] for r in rows), max(r[2] for r in rows), max(r[3] for r in rows)))
    return out


def pick_photos(faces: Path, n: int) -> list[Path]:
    out: list[Path] = []
    for folder in FOLDERS:
        out.extend(sorted((faces / "people" / folder).glob("*.jpg")))
    return out[:n]


def machine() -> str:
    import numpy

    try:
        import dlib

        dlib_v = dlib.__version__
    except Exception:  # noqa: BLE001 - report only
        dlib_v = "n/a"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}; {os.cpu_count()} logical CPUs (affinity {len(os.sched_getaffinity(0))}); "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; Python {platform.python_version()}; "
            f"numpy {numpy.__version__}; dlib {dlib_v}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", default=str(REPO.parent / "shared" / "faces"))
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each variant; best wall time per stage")
    args = ap.parse_args()
    faces = Path(args.faces)
    if not (faces / "MANIFEST.tsv").is_file():
        print(f"../shared/faces not found at {faces}; nothing to benchmark", file=sys.stderr)
        return 2

    from persona_ml.dataset.prepare import prepare_dataset
    from persona_ml.dataset.screening import ScreeningConfig, screen_dataset
    from persona_ml.faces.api import build_profile
    from persona_ml.faces.embedder import FaceEmbedder
    from persona_ml.images import load_image

    photos = pick_photos(faces, args.n)
    mp = 0.0
    from PIL import Image

    for p in photos:
        with Image.open(p) as im:
            mp += im.width * im.height / 1e6
    print(f"inputs: {len(photos)} photos from {faces} (people/{{{','.join(FOLDERS)}}}, mixed identities), "
          f"{mp:.1f} MP in total, {sum(p.stat().st_size for p in photos) / 1e6:.1f} MB on disk")
    print(f"machine: {machine()}")

    embedder = FaceEmbedder("dlib")
    profile = build_profile([embedder.embed_primary(p) for p in sorted((faces / "people" / "deepface_p08")
                                                                       .glob("*.jpg"))[:3]])
    cfg = ScreeningConfig(identity_min_cosine=-1.0, allow_near_duplicates=False)
    out_root = Path(tempfile.mkdtemp(prefix="bench_dataset_"))
    sampler = PeakSampler()
    staged_runs, streamed_runs = [], []
    try:
        base_rss = rss_mb()
        for rep in range(args.repeat):  # alternate the two variants; the best wall time of each stage is kept
            sampler.rows.clear()
            with sampler.stage("decode"):
                loaded = [load_image(p) for p in photos]
            with sampler.stage("detect+embed"):
                analyses = embedder.analyze(loaded)
            with sampler.stage("screening logic"):
                report = screen_dataset(loaded, profile, embedder, config=cfg, faces=analyses)
            with sampler.stage("crops/masks/writes"):
                result = prepare_dataset(report, out_root / f"staged{rep}", trigger="ohwx")
            staged_runs.append(list(sampler.rows))
            del loaded, analyses, report
            sampler.rows.clear()
            with sampler.stage("screen_dataset(paths) one call, streamed"):
                report2 = screen_dataset([str(p) for p in photos], profile, embedder, config=cfg)
            with sampler.stage("prepare_dataset(report) re-reads files"):
                result2 = prepare_dataset(report2, out_root / f"streamed{rep}", trigger="ohwx")
            streamed_runs.append(list(sampler.rows))
    finally:
        sampler.close()
        shutil.rmtree(out_root, ignore_errors=True)
    staged = best(staged_runs)
    streamed = best(streamed_runs)
    print(f"\nprocess RSS before the stages: {base_rss:.0f} MB; {args.repeat} run(s) of each variant, "
          "best wall time per stage, highest peak RSS")
    print(f"result: {len(report2.accepted)} accepted / {len(report2.rejected)} rejected "
          f"({', '.join(f'{k} {v}' for k, v in report2.to_dict()['rejected_by_code'].items()) or 'none'}); "
          f"{result2.info.num_items} training images from {result2.info.num_source_images} photos; "
          f"same dataset_hash both ways: {result.info.dataset_hash == result2.info.dataset_hash}")
    print(f"\n{'stage (staged: all photos decoded at once = baseline)':<48} {'wall s':>8} {'s/photo':>8} "
          f"{'peak RSS MB':>12} {'+MB':>8}")
    for name, wall, peak, delta in staged:
        print(f"{name:<48} {wall:8.2f} {wall / len(photos):8.3f} {peak:12.0f} {delta:8.0f}")
    total_staged = sum(r[1] for r in staged)
    peak_staged = max(r[2] for r in staged)
    print(f"{'total':<48} {total_staged:8.2f} {total_staged / len(photos):8.3f} {peak_staged:12.0f}")
    print(f"\n{'library path (streamed in batches of 8)':<48} {'wall s':>8} {'s/photo':>8} {'peak RSS MB':>12} "
          f"{'+MB':>8}")
    for name, wall, peak, delta in streamed:
        print(f"{name:<48} {wall:8.2f} {wall / len(photos):8.3f} {peak:12.0f} {delta:8.0f}")
    total_streamed = sum(r[1] for r in streamed)
    peak_streamed = max(r[2] for r in streamed)
    print(f"{'total':<48} {total_streamed:8.2f} {total_streamed / len(photos):8.3f} {peak_streamed:12.0f}")
    t = report2.timings
    print(f"  inside screen_dataset (last run): decode {t['decode']:.2f} s, detect+embed {t['detect_embed']:.2f} s, "
          f"measure {t['measure']:.2f} s, decide {t['decide']:.3f} s")
    print(f"\nratio staged/streamed: wall {total_staged / total_streamed:.2f}x, "
          f"peak RSS {peak_staged / peak_streamed:.2f}x")
    return 0


class _Tee:
    """stdout that also keeps what was printed, for the results file."""

    def __init__(self, stream) -> None:
        self.stream, self.parts = stream, []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


if __name__ == "__main__":
    results = REPO / "benchmarks" / "results" / "bench_dataset.txt"
    if "--results" in sys.argv:
        i = sys.argv.index("--results")
        results = Path(sys.argv[i + 1])
        del sys.argv[i:i + 2]
    tee = _Tee(sys.stdout)
    sys.stdout = tee
    rc = main()
    sys.stdout = tee.stream
    if rc == 0:
        results.parent.mkdir(parents=True, exist_ok=True)
        tmp = results.with_suffix(".tmp")
        tmp.write_text("".join(tee.parts))
        os.replace(tmp, results)
    sys.exit(rc)
