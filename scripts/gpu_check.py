#!/usr/bin/env python
"""GPU check: LoRA training and inference speed of the full FLUX.1-dev transformer, no download.

Builds ``FluxTransformer2DModel(guidance_embeds=True)`` with FLUX.1-dev's default sizes (about
11.9B parameters) directly on the GPU with random bf16 weights (speed does not depend on weight
values), adds a rank-16 PEFT LoRA on persona_ml's default targets, enables gradient checkpointing,
and runs LoRA training steps from synthetic cached inputs of the real shapes (T5 sequence
512 x 4096, CLIP pooled 768, packed latents (H/16)(W/16) x 64: 1024 tokens at 512 px, 4096 at
1024 px). Prints s/step and peak GPU memory per resolution, then the transformer forward time per
denoising step at 1024 px (LoRA active, unmerged, as the generator runs it).

    python scripts/gpu_check.py                 # full check, a few minutes on an H100/H200
    python scripts/gpu_check.py --quick --json gpu_check.json
    python scripts/gpu_check.py --dry-run       # tiny config on CPU: the same code path, seconds

Exit status 0 when every step ran with a finite loss, 1 otherwise, 2 without a usable device.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# FLUX.1-dev facts (shared/FLUX_FACTS.md): text sequence length, T5 width, CLIP pooled width.
FLUX_DEV = {"max_sequence_length": 512, "joint_attention_dim": 4096, "pooled_projection_dim": 768}


@dataclass
class Plan:
    """What to run. ``transformer`` holds ``FluxTransformer2DModel`` kwargs beyond the defaults."""

    device: str
    dtype: str
    resolutions: tuple[int, ...]
    train_steps: int
    warmup_steps: int
    inference_steps: int
    inference_resolution: int
    rank: int
    gradient_checkpointing: bool
    text_len: int
    joint_dim: int
    pooled_dim: int
    transformer: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-4


def _plan(args: argparse.Namespace) -> Plan:
    if args.dry_run:
        from persona_ml.models.tiny_flux import TinyFluxConfig

        cfg = TinyFluxConfig()
        return Plan(
            device=args.device or "cpu", dtype="bfloat16", resolutions=(64, 128), train_steps=2, warmup_steps=1,
            inference_steps=2, inference_resolution=128, rank=4, gradient_checkpointing=True, text_len=16,
            joint_dim=cfg.t5_d_model, pooled_dim=cfg.clip_hidden_size,
            transformer=dict(num_layers=cfg.num_layers, num_single_layers=cfg.num_single_layers,
                             attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads,
                             axes_dims_rope=tuple(cfg.axes_dims_rope), joint_attention_dim=cfg.t5_d_model,
                             pooled_projection_dim=cfg.clip_hidden_size),
        )
    quick = args.quick
    return Plan(
        device=args.device or "cuda", dtype="bfloat16", resolutions=tuple(args.resolutions),
        train_steps=args.steps or (3 if quick else 8), warmup_steps=1 if quick else 2,
        inference_steps=3 if quick else 10, inference_resolution=1024, rank=args.rank,
        gradient_checkpointing=not args.no_gradient_checkpointing, text_len=FLUX_DEV["max_sequence_length"],
        joint_dim=FLUX_DEV["joint_attention_dim"], pooled_dim=FLUX_DEV["pooled_projection_dim"],
    )


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def build_transformer(plan: Plan):
    """FLUX.1-dev-shaped transformer with random weights, created directly on the device in its dtype."""
    import torch
    from diffusers import FluxTransformer2DModel

    dtype = getattr(torch, plan.dtype)
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        # parameters are born on the device in bf16: no 48 GB fp32 copy, no host round trip
        torch.set_default_dtype(dtype)
        with torch.device(plan.device):
            model = FluxTransformer2DModel(guidance_embeds=True, **plan.transformer)
    finally:
        torch.set_default_dtype(previous)
    model.requires_grad_(False)
    return model


def add_lora(model, plan: Plan) -> list:
    """Rank-``plan.rank`` LoRA on the default targets, trainable params in fp32 (as the trainer)."""
    from peft import LoraConfig

    from persona_ml.training.export import DEFAULT_LORA_TARGETS, lora_target_modules

    targets = lora_target_modules(model, DEFAULT_LORA_TARGETS)
    model.add_adapter(LoraConfig(r=plan.rank, lora_alpha=plan.rank, init_lora_weights=True, target_modules=targets))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if plan.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return params


def synthetic_batch(plan: Plan, resolution: int, generator) -> dict:
    """Cached-input shapes of one training sample at ``resolution`` px (batch 1)."""
    import torch

    dtype = getattr(torch, plan.dtype)
    side = resolution // 16  # 8x VAE, then 2x2 packing
    n_img = side * side
    dev = plan.device
    latents = torch.randn(1, n_img, 64, generator=generator).to(dev, dtype)
    noise = torch.randn(1, n_img, 64, generator=generator).to(dev, dtype)
    sigma = torch.sigmoid(torch.randn(1, generator=generator)).to(dev)
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] = torch.arange(side)[:, None]
    img_ids[..., 2] = torch.arange(side)[None, :]
    return {
        "latents": latents,
        "noise": noise,
        "sigma": sigma,
        "encoder_hidden_states": torch.randn(1, plan.text_len, plan.joint_dim, generator=generator).to(dev, dtype),
        "pooled_projections": torch.randn(1, plan.pooled_dim, generator=generator).to(dev, dtype),
        "txt_ids": torch.zeros(plan.text_len, 3, device=dev, dtype=dtype),
        "img_ids": img_ids.reshape(n_img, 3).to(dev, dtype),
    }


def _forward(model, batch: dict, hidden, sigma, guidance: float):
    import torch

    return model(
        hidden_states=hidden,
        timestep=sigma.to(hidden.dtype),
        guidance=torch.full((hidden.shape[0],), guidance, device=hidden.device, dtype=torch.float32),
        pooled_projections=batch["pooled_projections"],
        encoder_hidden_states=batch["encoder_hidden_states"],
        txt_ids=batch["txt_ids"],
        img_ids=batch["img_ids"],
        return_dict=False,
    )[0]


def train_timing(model, params: list, plan: Plan, resolution: int) -> dict:
    """Flow-matching LoRA steps (guidance 1.0, as dev LoRAs are trained); s/step after warm-up."""
    import torch

    model.train()
    optimizer = torch.optim.AdamW(params, lr=plan.lr)
    gen = torch.Generator().manual_seed(resolution)
    batch = synthetic_batch(plan, resolution, gen)
    if torch.device(plan.device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(plan.device)
    losses, times, grad_norms = [], [], []
    for step in range(plan.warmup_steps + plan.train_steps):
        _sync(plan.device)
        t0 = time.perf_counter()
        s = batch["sigma"].to(batch["latents"].dtype)
        noisy = (1 - s) * batch["latents"] + s * batch["noise"]
        pred = _forward(model, batch, noisy, batch["sigma"], guidance=1.0)
        loss = torch.nn.functional.mse_loss(pred.float(), (batch["noise"] - batch["latents"]).float())
        loss.backward()
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, 1.0)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(plan.device)
        if step >= plan.warmup_steps:
            times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    out = {
        "resolution": resolution,
        "image_tokens": batch["latents"].shape[1],
        "steps_timed": len(times),
        "s_per_step": sum(times) / len(times),
        "s_per_step_min": min(times),
        "losses": losses,
        "grad_norms": grad_norms,
        "finite": all(math.isfinite(v) for v in losses + grad_norms),
    }
    if torch.device(plan.device).type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(plan.device) / 2**30
    del optimizer
    return out


def inference_timing(model, plan: Plan) -> dict:
    """Transformer forward per denoising step (guidance 3.5, LoRA active), the bulk of generation time."""
    import torch

    model.eval()
    gen = torch.Generator().manual_seed(1)
    batch = synthetic_batch(plan, plan.inference_resolution, gen)
    if torch.device(plan.device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(plan.device)
    times = []
    with torch.inference_mode():
        for step in range(1 + plan.inference_steps):
            _sync(plan.device)
            t0 = time.perf_counter()
            out = _forward(model, batch, batch["latents"], batch["sigma"], guidance=3.5)
            _sync(plan.device)
            if step >= 1:
                times.append(time.perf_counter() - t0)
    res = {
        "resolution": plan.inference_resolution,
        "steps_timed": len(times),
        "s_per_forward": sum(times) / len(times),
        "est_s_per_image_28_steps": 28 * sum(times) / len(times),
        "finite": bool(torch.isfinite(out.float()).all()),
    }
    if torch.device(plan.device).type == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated(plan.device) / 2**30
    return res


def run(plan: Plan, log=print) -> dict:
    """Run the whole check and return the report (also what ``--json`` writes)."""
    import diffusers
    import peft
    import torch

    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "plan": {**asdict(plan), "resolutions": list(plan.resolutions)},
        "torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__,
        "python": platform.python_version(),
        "device_name": torch.cuda.get_device_name(plan.device) if torch.device(plan.device).type == "cuda"
        else platform.processor() or "cpu",
    }
    if torch.device(plan.device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t0 = time.perf_counter()
    model = build_transformer(plan)
    _sync(plan.device)
    report["build_s"] = time.perf_counter() - t0
    report["params_billion"] = sum(p.numel() for p in model.parameters()) / 1e9
    log(f"built FluxTransformer2DModel ({report['params_billion']:.2f}B params, {plan.dtype}) "
        f"on {report['device_name']} in {report['build_s']:.1f}s")
    params = add_lora(model, plan)
    report["lora_params_million"] = sum(p.numel() for p in params) / 1e6
    log(f"LoRA rank {plan.rank}: {report['lora_params_million']:.1f}M trainable params, "
        f"gradient checkpointing {'on' if plan.gradient_checkpointing else 'off'}")
    report["train"] = []
    for res in plan.resolutions:
        r = train_timing(model, params, plan, res)
        report["train"].append(r)
        mem = f", peak {r['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in r else ""
        log(f"train {res}px ({r['image_tokens']} image tokens): {r['s_per_step']:.3f} s/step "
            f"(min {r['s_per_step_min']:.3f}, {r['steps_timed']} timed){mem}, loss {r['losses'][-1]:.4f}")
    r = inference_timing(model, plan)
    report["inference"] = r
    mem = f", peak {r['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in r else ""
    log(f"inference {r['resolution']}px: {r['s_per_forward']:.3f} s per transformer step "
        f"(~{r['est_s_per_image_28_steps']:.1f}s for 28 steps){mem}")
    report["total_s"] = time.perf_counter() - t_start
    report["ok"] = all(t["finite"] for t in report["train"]) and r["finite"]
    log(f"total {report['total_s']:.1f}s, {'ok' if report['ok'] else 'NON-FINITE LOSS/OUTPUT'}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timed steps (about half the time)")
    parser.add_argument("--dry-run", action="store_true", help="tiny-flux sizes on CPU: checks the code path only")
    parser.add_argument("--json", type=Path, help="write the report as JSON here")
    parser.add_argument("--device", help="torch device (default cuda, or cpu with --dry-run)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[512, 1024], help="training sizes in px")
    parser.add_argument("--steps", type=int, help="timed training steps per resolution")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    args = parser.parse_args(argv)
    for res in args.resolutions:
        if res % 16:
            parser.error(f"--resolutions must be multiples of 16, got {res}")

    import torch

    plan = _plan(args)
    if torch.device(plan.device).type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or use --dry-run to check the code path on CPU",
              file=sys.stderr)
        return 2
    report = run(plan)
    if args.json:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from persona_ml._atomic import atomic_write_json

        atomic_write_json(args.json, report)
        print(f"report: {args.json}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
