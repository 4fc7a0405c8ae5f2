#!/usr/bin/env python
"""Trainer speed and memory: latent/text caching on vs off, on tiny-flux and a larger CPU Flux.

Each case runs in its own process (peak RSS is per process). "cache on" trains from cached VAE
latents and T5/CLIP embeddings with the encoders released; "cache off" encodes every sample with
the VAE and both text encoders at every step and keeps them loaded. Printed: s/step of the
training loop, peak RSS of the whole process and during the training loop, and the ratios
off / on, with the inputs and the machine.

    python benchmarks/bench_train.py [--steps 30] [--threads 2] [--repeats 3]

On this tiny scale the encoders are small next to the transformer's forward and backward pass,
so the speed ratio is modest; with FLUX.1-dev the T5-XXL encoder (4.7B parameters) and the VAE
encoder at 1024 px run every step without the cache, and ~10 GB of T5 weights stay on the GPU.
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

CASES = {
    "tiny-flux": {"model": "default", "size": 64, "resolutions": [64]},
    "cpu-large-flux": {"model": "cpu_large", "size": 128, "resolutions": [128]},
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(case: str, cache: bool, steps: int, workdir: Path) -> dict:
    import torch

    from persona_ml.models.tiny_flux import TinyFluxConfig
    from persona_ml.training import job as jobmod
    from persona_ml.training.config import load_train_config
    from persona_ml.training.testing import TinyLoader, make_synthetic_dataset

    spec = CASES[case]
    model_cfg = TinyFluxConfig.cpu_large() if spec["model"] == "cpu_large" else TinyFluxConfig()
    loader = TinyLoader(config=model_cfg)
    jobmod._load_base_model = loader
    data = make_synthetic_dataset(workdir / "data", n=4, size=spec["size"])
    cfg = load_train_config("tiny-cpu", [f"cache.dir={workdir / 'cache'}", f"cache.enabled={str(cache).lower()}",
                                         f"steps={steps}", f"checkpoint.every={steps}", "samples.every=-1",
                                         f"data.resolutions={spec['resolutions']}", "data.caption_dropout=0.0"])
    train_rss, stamps, cpu_stamps = [], [], []

    def on_event(e) -> None:
        if e.kind == "step":
            stamps.append(time.perf_counter())
            cpu_stamps.append(time.process_time())
            train_rss.append(_rss_mb())

    result = jobmod.train_lora(cfg, data.root, workdir / "out", on_event=on_event)
    # median of step-to-step times (first step excluded): robust to other processes on a shared machine
    step_times = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    # CPU seconds of this process per step (all threads): barely moved by other processes' load
    cpu_times = sorted(b - a for a, b in zip(cpu_stamps, cpu_stamps[1:]))
    params = sum(p.numel() for p in loader._base.transformer.parameters())
    median_step = step_times[len(step_times) // 2] if step_times else result.timings["s_per_step"]
    return {"case": case, "cache": cache, "s_per_step": median_step,
            "mean_s_per_step": result.timings["s_per_step"],
            "cpu_s_per_step": cpu_times[len(cpu_times) // 2] if cpu_times else 0.0,
            "encode_s": result.timings.get("encode", 0.0), "load_s": result.timings.get("load", 0.0),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "train_peak_rss_mb": max(train_rss), "transformer_params": params, "threads": torch.get_num_threads()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", nargs=2, metavar=("CASE", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        import logging

        import torch

        logging.disable(logging.WARNING)
        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            # warm the cache in a throwaway run first so "cache on" measures a reuse run
            if args.one[1] == "on":
                run_one(args.one[0], True, 1, Path(tmp) / "warm")
                os.replace(Path(tmp) / "warm" / "cache", Path(tmp) / "run_cache_src")
                (Path(tmp) / "run").mkdir()
                os.replace(Path(tmp) / "run_cache_src", Path(tmp) / "run" / "cache")
            print(json.dumps(run_one(args.one[0], args.one[1] == "on", args.steps, Path(tmp) / "run")))
        return 0

    import torch

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"machine: {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, threads {args.threads}, "
          f"python {platform.python_version()}")
    print("s/step: median wall time per training step (first excluded); cpu s/step: median CPU seconds of the "
          "process per step (all threads), the steadier figure on a shared machine")
    print(f"inputs: 4 synthetic prepared images per case, {args.steps} steps, batch 1, LoRA rank 4 (tiny-cpu preset)")
    print(f"each case runs {args.repeats} times, on/off interleaved, in fresh processes; figures are medians")
    runs: dict[tuple[str, str], list[dict]] = {}
    for case in CASES:
        for _ in range(args.repeats):
            for cache in ("on", "off"):
                out = subprocess.run([sys.executable, __file__, "--one", case, cache, "--steps", str(args.steps),
                                      "--threads", str(args.threads)], env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 1
                runs.setdefault((case, cache), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = {key: {k: (statistics.median(r[k] for r in rs) if isinstance(rs[0][k], (int, float))
                      and not isinstance(rs[0][k], bool) else rs[0][k]) for k in rs[0]}
            for key, rs in runs.items()}
    print(f"{'case':16} {'cache':5} {'params':>8} {'s/step':>8} {'cpu s/step':>10} {'peak RSS MB':>12} "
          f"{'train RSS MB':>13}")
    for (case, cache), r in rows.items():
        print(f"{case:16} {cache:5} {r['transformer_params'] / 1e6:7.2f}M {r['s_per_step']:8.4f} "
              f"{r['cpu_s_per_step']:10.4f} {r['peak_rss_mb']:12.0f} {r['train_peak_rss_mb']:13.0f}")
    for case, spec in CASES.items():
        on, off = rows[(case, "on")], rows[(case, "off")]
        print(f"{case} ({spec['size']} px): cache off / on  s/step x{off['s_per_step'] / on['s_per_step']:.2f}, "
              f"cpu s/step x{off['cpu_s_per_step'] / on['cpu_s_per_step']:.2f}, "
              f"train-loop RSS x{off['train_peak_rss_mb'] / on['train_peak_rss_mb']:.2f}, "
              f"process peak RSS x{off['peak_rss_mb'] / on['peak_rss_mb']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
