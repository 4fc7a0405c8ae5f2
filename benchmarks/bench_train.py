#!/usr/bin/env python
"""Trainer speed and memory on a CPU-sized Flux: today's path against bf16, cache off, an int8 base,
real batches and the old whole-pipeline loading order, in one run.

Every case is a ``TrainingJob`` in its own process (peak memory is per process) on the same
synthetic prepared dataset, with the same seed and steps:

* ``baseline``      the shipped path: fp32, latent/text cache on (a reuse run: the cache is warmed
                    first, so the encoders are not loaded at all: fingerprint, cache, transformer),
                    batch 1;
* ``old-loading``   the same but the whole pipeline loaded first and held through the run, as the
                    trainer did before memory-ordered loading (the first load call returns the
                    full pipeline);
* ``bf16``          precision bf16;
* ``cache-off``     the VAE and both text encoders run at every step and stay loaded;
* ``int8``          the transformer int8 weight-only (torchao) under the LoRA, bf16 compute;
* ``batch-4``       4 same-bucket samples stacked per forward (figures per sample as well).

Printed per case: median s/step of the loop (first step excluded), median CPU seconds per step
(all threads: the steadier figure on a shared machine), s/sample, peak RSS of the encode phase and
of the train phase (``TrainResult.memory``: VmHWM reset per phase), and the machine's 1-minute
load average before and after; then each case's ratio against the baseline. The same text goes
to ``benchmarks/results/bench_train.txt``.

    python benchmarks/bench_train.py [--steps 20] [--threads 2] [--repeats 2] [--cases baseline int8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_train.txt"
SIZE, RESOLUTIONS, ITEMS = 128, [128], 8
CASES = {
    "baseline": [],
    "old-loading": [],
    "bf16": ["precision=bf16"],
    "cache-off": ["cache.enabled=false"],
    "int8": ["precision=bf16", "quantization=int8-weight-only"],
    "batch-4": ["data.batch_size=4"],
}


def run_one(case: str, steps: int, workdir: Path) -> dict:
    import torch

    from persona_ml.models.tiny_flux import TinyFluxConfig
    from persona_ml.training import job as jobmod
    from persona_ml.training.config import load_train_config
    from persona_ml.training.testing import TinyLoader, make_synthetic_dataset

    loader = TinyLoader(config=TinyFluxConfig.cpu_large())
    if case == "old-loading":
        held = {}

        def whole(name, *, parts="all", **kw):   # the first load (fingerprint or encoders) brings everything
            if parts in ("none", "encoders") and "loaded" not in held:
                held["loaded"] = loader(name, parts="all", **kw)
                return held["loaded"]
            if parts == "transformer" and "loaded" in held:
                return held.pop("loaded")
            return loader(name, parts=parts, **kw)

        jobmod._load_base_model = whole
    else:
        jobmod._load_base_model = loader
    data = make_synthetic_dataset(workdir / "data", n=ITEMS, size=SIZE)
    over = [f"cache.dir={workdir / 'cache'}", f"steps={steps}", f"checkpoint.every={steps}", "samples.every=-1",
            f"data.resolutions={RESOLUTIONS}", "data.caption_dropout=0.0", *CASES[case]]
    if "cache.enabled=false" not in over:   # warm the cache: the measured run is a reuse run
        jobmod.train_lora(load_train_config("tiny-cpu", [*over, "steps=1", "checkpoint.every=1"]), data.root,
                          workdir / "warm")
    stamps, cpu = [], []

    def on_event(e) -> None:
        if e.kind == "step":
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())

    load_before = os.getloadavg()[0]
    result = jobmod.train_lora(load_train_config("tiny-cpu", over), data.root, workdir / "out", on_event=on_event)
    step_times = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    cpu_times = sorted(b - a for a, b in zip(cpu, cpu[1:]))
    batch = 4 if case == "batch-4" else 1
    med = step_times[len(step_times) // 2]
    mem = result.memory
    return {"case": case, "s_per_step": med, "s_per_sample": med / batch,
            "cpu_s_per_step": cpu_times[len(cpu_times) // 2], "load_s": result.timings.get("load", 0.0),
            "encode_peak_mb": (mem.get("encode", {}).get("peak_bytes") or 0) / 2**20,
            "train_peak_mb": (mem.get("train", {}).get("peak_bytes") or 0) / 2**20,
            "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "load_before": load_before, "load_after": os.getloadavg()[0],
            "transformer_params": sum(p.numel() for p in loader._base.transformer.parameters()),
            "threads": torch.get_num_threads()}


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--one", metavar="CASE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        import logging

        import torch

        logging.disable(logging.WARNING)
        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_one(args.one, args.steps, Path(tmp))))
        return 0

    import torch

    lines: list[str] = []

    def out(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for case in args.cases:   # interleaved: a load spike hits every case alike
            p = subprocess.run([sys.executable, __file__, "--one", case, "--steps", str(args.steps), "--threads",
                                str(args.threads)], env=env, capture_output=True, text=True)
            if p.returncode != 0:
                print(p.stderr[-3000:], file=sys.stderr)
                return 1
            runs.setdefault(case, []).append(json.loads(p.stdout.strip().splitlines()[-1]))
    wall = time.perf_counter() - t0
    rows = {c: {k: (statistics.median(r[k] for r in rs) if isinstance(rs[0][k], (int, float)) else rs[0][k])
                for k in rs[0]} for c, rs in runs.items()}
    params = rows[args.cases[0]]["transformer_params"]
    out(f"machine: {_cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, threads {args.threads}, "
        f"python {platform.python_version()}")
    out(f"load average (1/5/15 min) at start {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, at end "
        + "/".join(f"{v:.2f}" for v in os.getloadavg()) + f"; {wall:.0f}s wall for all runs")
    out(f"inputs: CPU-sized Flux ({params / 1e6:.1f}M-parameter transformer, TinyFluxConfig.cpu_large), {ITEMS} "
        f"synthetic prepared {SIZE}px images, {args.steps} steps, LoRA rank 4 (tiny-cpu preset), seed 0")
    out(f"each case {args.repeats}x in fresh processes, cases interleaved; figures are medians. s/step: wall per "
        "step (first excluded); cpu s: CPU seconds of the process per step (all threads); peaks: VmHWM per phase")
    out(f"{'case':12} {'s/step':>8} {'cpu s/step':>10} {'s/sample':>9} {'encode MB':>10} {'train MB':>9} "
        f"{'load avg':>12}")
    for case, r in rows.items():
        out(f"{case:12} {r['s_per_step']:8.4f} {r['cpu_s_per_step']:10.4f} {r['s_per_sample']:9.4f} "
            f"{r['encode_peak_mb']:10.0f} {r['train_peak_mb']:9.0f} {r['load_before']:5.2f}->{r['load_after']:5.2f}")
    if "baseline" in rows:
        b = rows["baseline"]
        out("ratios against baseline (>1: the case takes more):")
        for case, r in rows.items():
            if case == "baseline":
                continue
            enc = (f", encode-phase peak x{r['encode_peak_mb'] / b['encode_peak_mb']:.2f}"
                   if r["encode_peak_mb"] and b["encode_peak_mb"] else "")
            out(f"  {case:12} s/step x{r['s_per_step'] / b['s_per_step']:.2f}, cpu s/step "
                f"x{r['cpu_s_per_step'] / b['cpu_s_per_step']:.2f}, s/sample x{r['s_per_sample'] / b['s_per_sample']:.2f}, "
                f"train-phase peak x{r['train_peak_mb'] / b['train_peak_mb']:.2f}{enc}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
