"""Benchmark: persona_ml's GE2E speaker embeddings vs Resemblyzer's documented loop, one run.

Ours:      ``load_voice_embedder("ge2e").embed_many(paths)``: PyAV decode + resample, silero-vad
           speech selection, torch STFT mel, partial windows (``partial_rate`` from
           configs/voice_models.yaml) of a batch of clips through one LSTM call.
Baseline:  Resemblyzer's README loop, per file: ``wav = preprocess_wav(path)`` (librosa load +
           soxr resample, volume normalisation, webrtcvad silence trimming) then
           ``VoiceEncoder("cpu").embed_utterance(wav)`` (1.3 windows/s, its default). Same weights.

Each runs in its own child process (this script with ``--worker``) so that peak memory (``ru_maxrss``)
is its own; model loading and a one-file warm-up are timed apart from the loop. Printed: seconds of
audio embedded per wall second and per CPU second, their ratio, peak RSS, the verification AUC and
EER of each over every pair of files in ../shared/voices/speakers (pairs of a recording with its
own re-encode, `same_utterance_as` in MANIFEST.tsv, left out), the embeddings' agreement, the
inputs, the machine and its load. The same text goes to benchmarks/results/bench_voice.txt.

Usage:
    python benchmarks/bench_voice.py [--voices ../shared/voices] [--repeat 1] [--batch 16]
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
DEFAULT_VOICES = Path(os.environ.get("PERSONA_ML_SHARED_VOICES", REPO.parent / "shared" / "voices"))
RESULTS = REPO / "benchmarks" / "results" / "bench_voice.txt"


def manifest(voices: Path) -> list[dict]:
    with open(voices / "MANIFEST.tsv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["path"].startswith("speakers/")]
    for r in rows:
        r["abspath"] = str(voices / r["path"])
    return rows


def pairs(rows: list[dict]) -> list[tuple[int, int, bool]]:
    """(i, j, same_speaker) over every pair except a recording with its own re-encode."""
    origin = {}
    for i, r in enumerate(rows):
        base = r["same_utterance_as"] or r["path"].rsplit("/", 1)[-1]
        # same_utterance_as names the original's file name in the same speaker folder
        origin[i] = (r["speaker"], base.rsplit("/", 1)[-1])
    out = []
    for i, j in itertools.combinations(range(len(rows)), 2):
        if origin[i] == origin[j]:
            continue
        out.append((i, j, rows[i]["speaker"] == rows[j]["speaker"]))
    return out


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(kind: str, paths: list[str], out: str, batch: int, repeat: int) -> None:
    import torch

    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "ours":
        sys.path.insert(0, str(REPO))
        from persona_ml.voice import load_voice_embedder

        embedder = load_voice_embedder("ge2e")

        def run(chunk):
            return [(e.vector, e.duration_s) for e in embedder.embed_many(chunk)]

        step = batch
        settings = f"partial_rate={embedder.spec.partial_rate}, batch of {batch} clips"
    else:
        import warnings

        warnings.simplefilter("ignore")  # webrtcvad imports pkg_resources
        from resemblyzer import VoiceEncoder, preprocess_wav
        from resemblyzer.hparams import sampling_rate

        encoder = VoiceEncoder("cpu", verbose=False)

        def run(chunk):
            outs = []
            for p in chunk:
                wav = preprocess_wav(p)
                outs.append((encoder.embed_utterance(wav), None))
            return outs

        step = 1
        settings = f"embed_utterance defaults (rate=1.3, min_coverage=0.75), {sampling_rate} Hz"
    load_wall, load_cpu = time.perf_counter() - t0, time.process_time() - c0
    rss_loaded = _rss_mb()
    run(paths[:1])  # warm-up: first-call imports, allocator, kernels
    results: list = []
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        results = []
        for i in range(0, len(paths), step):
            results += run(paths[i:i + step])
    wall, cpu = (time.perf_counter() - t0) / repeat, (time.process_time() - c0) / repeat
    Path(out).write_text(json.dumps({
        "kind": kind, "settings": settings, "load_wall_s": load_wall, "load_cpu_s": load_cpu, "wall_s": wall, "cpu_s": cpu,
        "vectors": [np.asarray(v, np.float64).tolist() for v, _ in results],
        "rss_after_load_mb": rss_loaded, "rss_peak_mb": _rss_mb(), "torch_threads": torch.get_num_threads()}))


def audio_seconds(paths: list[str]) -> float:
    sys.path.insert(0, str(REPO))
    from persona_ml.audio import load_audio

    return float(sum(load_audio(p).duration_s for p in paths))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", type=Path, default=DEFAULT_VOICES)
    parser.add_argument("--batch", type=int, default=16, help="clips per embed_many call (ours)")
    parser.add_argument("--repeat", type=int, default=1, help="timed passes over the files (the mean is printed)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    parser.add_argument("--worker", choices=("ours", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, json.loads(Path(args.paths).read_text()), args.out, args.batch, args.repeat)
        return 0
    if not (args.voices / "MANIFEST.tsv").is_file():
        print(f"no MANIFEST.tsv under {args.voices}; pass --voices", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    from persona_ml.voice.metrics import verification_metrics

    rows = manifest(args.voices)
    paths = [r["abspath"] for r in rows]
    load_before = os.getloadavg()
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        plist = Path(tmp) / "paths.json"
        plist.write_text(json.dumps(paths))
        for kind in ("ours", "baseline"):
            out = Path(tmp) / f"{kind}.json"
            subprocess.run([sys.executable, __file__, "--worker", kind, "--paths", str(plist), "--out", str(out),
                            "--batch", str(args.batch), "--repeat", str(args.repeat)], check=True)
            reports[kind] = json.loads(out.read_text())
    load_after = os.getloadavg()
    total_s = audio_seconds(paths)
    pair_list = pairs(rows)
    lines = ["bench_voice: persona_ml GE2E embeddings vs Resemblyzer preprocess_wav + embed_utterance"]
    try:
        import av
        import torch

        versions = f"torch {torch.__version__}, PyAV {av.__version__}"
    except ImportError:
        versions = ""
    lines.append(f"machine: {platform.platform()}; {platform.processor() or platform.machine()}; cpu_count={os.cpu_count()}; "
                 f"python {platform.python_version()}; {versions}; torch threads {reports['ours']['torch_threads']}; "
                 f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min)")
    lines.append(f"inputs: {len(paths)} files, {total_s:.1f} s of audio, from {args.voices}/speakers "
                 f"(FLAC/WAV/MP3/Ogg, 16-44.1 kHz); {args.repeat} timed pass(es) after a one-file warm-up")
    lines.append(f"ours:     {reports['ours']['settings']}")
    lines.append(f"baseline: {reports['baseline']['settings']}")
    lines.append(f"{'':10}{'audio s / wall s':>17}{'audio s / CPU s':>16}{'wall s':>8}{'CPU s':>8}{'load s':>8}"
                 f"{'peak RSS MB':>13}{'AUC':>8}{'EER %':>7}{'EER at':>8}")
    metrics = {}
    for kind in ("ours", "baseline"):
        rep = reports[kind]
        vec = np.asarray(rep["vectors"])
        same = [float(vec[i] @ vec[j]) for i, j, s in pair_list if s]
        diff = [float(vec[i] @ vec[j]) for i, j, s in pair_list if not s]
        m = metrics[kind] = verification_metrics(np.asarray(same), np.asarray(diff))
        lines.append(f"{kind:10}{total_s / rep['wall_s']:>17.1f}{total_s / rep['cpu_s']:>16.1f}{rep['wall_s']:>8.1f}"
                     f"{rep['cpu_s']:>8.1f}{rep['load_wall_s']:>8.2f}{rep['rss_peak_mb']:>13.0f}{m.auc:>8.4f}"
                     f"{100 * m.eer:>7.2f}{m.eer_threshold:>8.3f}")
    o, b = reports["ours"], reports["baseline"]
    lines.append(f"speed ratio (ours / baseline, audio seconds per wall second): {b['wall_s'] / o['wall_s']:.2f}x "
                 f"(per CPU second: {b['cpu_s'] / o['cpu_s']:.2f}x); peak RSS {o['rss_peak_mb']:.0f} vs "
                 f"{b['rss_peak_mb']:.0f} MB")
    mo, mb = metrics["ours"], metrics["baseline"]
    lines.append(f"verification over {mo.n_same} same-speaker / {mo.n_different} different-speaker pairs: "
                 f"ours AUC {mo.auc:.4f} EER {100 * mo.eer:.2f} % (same min {mo.same_min:.3f}, different max "
                 f"{mo.different_max:.3f}); baseline AUC {mb.auc:.4f} EER {100 * mb.eer:.2f} % (same min "
                 f"{mb.same_min:.3f}, different max {mb.different_max:.3f})")
    agree = np.einsum("ij,ij->i", np.asarray(o["vectors"]), np.asarray(b["vectors"]))
    lines.append(f"embedding agreement ours vs baseline (cosine per file): mean {agree.mean():.4f}, min {agree.min():.4f}")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
