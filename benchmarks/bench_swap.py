"""Character switch latency: CharacterGenerator (hot-swap into a fixed slot) vs the diffusers
baseline ``unload_lora_weights()`` + ``load_lora_weights(path)``, on a CPU-sized Flux config,
as a ratio; plus RSS growth over many switches. Both run in this process on the same base.

Usage: python benchmarks/bench_swap.py [--switches 500] [--rank 16] [--characters 4] [--tiny]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--switches", type=int, default=500)
    ap.add_argument("--baseline-switches", type=int, default=40)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--characters", type=int, default=4)
    ap.add_argument("--tiny", action="store_true", help="tiny-flux instead of the CPU-sized config")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from persona_ml.inference.testing import make_random_lora
    from persona_ml.models import TinyFluxConfig, build_tiny_flux_pipeline, tiny_flux_fingerprint

    config = TinyFluxConfig() if args.tiny else TinyFluxConfig.cpu_large()
    pipe = build_tiny_flux_pipeline(seed=0, config=config)
    fp = tiny_flux_fingerprint(pipe, 0, config)
    n_params = sum(p.numel() for p in pipe.transformer.parameters())
    tmp = Path(tempfile.mkdtemp(prefix="bench_swap_"))
    loras = [make_random_lora(pipe, tmp / f"c{i}", seed=i, base_model="bench", base_fingerprint=fp, rank=args.rank)
             for i in range(args.characters)]
    lora_mb = loras[0].diffusers_path.stat().st_size / 1e6
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"base: {'tiny' if args.tiny else 'cpu_large'} Flux config, transformer {n_params / 1e6:.1f}M params; "
          f"{args.characters} characters, LoRA rank {args.rank} on the default attention targets "
          f"({lora_mb:.2f} MB each)")

    # Baseline: diffusers' documented way to change LoRA on a loaded pipeline.
    paths = [str(lo.diffusers_path) for lo in loras]
    pipe.load_lora_weights(paths[0], adapter_name="char")
    base_times = []
    for i in range(args.baseline_switches):
        t = time.perf_counter()
        pipe.unload_lora_weights()
        pipe.load_lora_weights(paths[(i + 1) % len(paths)], adapter_name="char")
        base_times.append(time.perf_counter() - t)
    pipe.unload_lora_weights()
    gc.collect()

    results = {}
    for swap in ("diffusers", "direct"):
        results[swap] = run_generator(pipe, fp, loras, args, swap)
        gc.collect()

    def ms(xs):
        return f"median {statistics.median(xs) * 1e3:.2f} ms, p90 {sorted(xs)[int(0.9 * len(xs))] * 1e3:.2f} ms"

    print(f"baseline unload_lora_weights()+load_lora_weights(path): {ms(base_times)} over {len(base_times)} switches")
    ok = len({r[4][1] for r in results.values()}) == 1
    for swap, (cold, warm, rss0, rss1, (intact, _)) in results.items():
        ratio = statistics.median(base_times) / statistics.median(warm)
        print(f"[swap={swap}] cold switch (validate + cache + slot): {ms(cold)}")
        print(f"[swap={swap}] warm switch (CPU cache -> slot): {ms(warm)} over {len(warm)} switches; "
              f"speed-up vs baseline {ratio:.1f}x (median latency ratio)")
        print(f"[swap={swap}] RSS over {len(warm)} switches: {rss0:.1f} MB -> {rss1:.1f} MB ({rss1 - rss0:+.1f} MB); "
              f"base weights unchanged: {intact}")
        ok = ok and intact
    print(f"same base checksum in both runs: {len({r[4][1] for r in results.values()}) == 1}")
    return 0 if ok else 1


def run_generator(pipe, fp, loras, args, swap):
    from persona_ml.inference import Character, CharacterGenerator

    gen = CharacterGenerator(pipe, base_fingerprint=fp, max_rank=max(16, args.rank), swap=swap)
    for i, lo in enumerate(loras):
        gen.register(Character(f"c{i}", lora_path=lo.diffusers_path))
    cold = []
    for i in range(len(loras)):  # first use: disk -> validate -> CPU cache -> slot
        t = time.perf_counter()
        gen.activate(f"c{i}")
        cold.append(time.perf_counter() - t)
    checksum = gen.base_checksum()
    for i in range(20):  # warm-up
        gen.activate(f"c{i % len(loras)}")
    gc.collect()
    rss0 = rss_mb()
    warm = []
    for i in range(args.switches):
        t = time.perf_counter()
        gen.activate(f"c{(i + 1) % len(loras)}", lora_scale=1.0 if i % 2 else 0.8)
        warm.append(time.perf_counter() - t)
    gc.collect()
    rss1 = rss_mb()
    intact = gen.base_checksum() == checksum
    return cold, warm, rss0, rss1, (intact, checksum)


if __name__ == "__main__":
    sys.exit(main())
