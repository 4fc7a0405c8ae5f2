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

Robust by design, since a GPU session may give it one shot: every phase (build, LoRA, each
training resolution, inference) runs in its own try/except that records the error (an
out-of-memory at 1024 px still leaves the 512 px figures and the inference timing), training
steps stop early when the time budget (``--budget-s``, default 8 minutes from start) would be
exceeded, output lines are flushed as they are printed, and the ``--json`` report is rewritten
atomically after every phase and also on failure (no CUDA device, an import error, a kill).

Exit status 0 when every phase ran in full with finite losses and LoRA gradients, 1 otherwise,
2 without a usable device.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_S = 8 * 60

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
            device=args.device or "cpu", dtype="bfloat16", resolutions=tuple(args.resolutions or (64, 128)),
            train_steps=args.steps or 2, warmup_steps=1,
            inference_steps=2, inference_resolution=128, rank=4, gradient_checkpointing=True, text_len=16,
            joint_dim=cfg.t5_d_model, pooled_dim=cfg.clip_hidden_size,
            transformer=dict(num_layers=cfg.num_layers, num_single_layers=cfg.num_single_layers,
                             attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads,
                             axes_dims_rope=tuple(cfg.axes_dims_rope), joint_attention_dim=cfg.t5_d_model,
                             pooled_projection_dim=cfg.clip_hidden_size),
        )
    quick = args.quick
    return Plan(
        device=args.device or "cuda", dtype="bfloat16", resolutions=tuple(args.resolutions or (512, 1024)),
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
    except Exception as exc:  # noqa: BLE001 - a torch that refuses a bf16 default dtype: slower path
        torch.set_default_dtype(previous)
        print(f"building in {plan.dtype} directly failed ({type(exc).__name__}: {exc}); "
              "building in float32 on the device and casting", flush=True)
        gc.collect()
        with torch.device(plan.device):
            model = FluxTransformer2DModel(guidance_embeds=True, **plan.transformer)
        model.to(dtype)
    finally:
        torch.set_default_dtype(previous)
    model.requires_grad_(False)
    return model


def add_lora(model, plan: Plan) -> list:
    """Rank-``plan.rank`` LoRA on the default targets, trainable params in fp32 (as the trainer)."""
    from peft import LoraConfig

    from persona_ml.lora.formats import DEFAULT_LORA_TARGETS, lora_target_modules

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


def train_timing(model, params: list, plan: Plan, resolution: int, deadline: float = math.inf) -> dict:
    """Flow-matching LoRA steps (guidance 1.0, as dev LoRAs are trained); s/step after warm-up.

    Warm-up steps always run; a timed step is not started when it would end after ``deadline``
    (``time.perf_counter()`` seconds), so ``steps_timed`` may be below ``plan.train_steps``.
    """
    import torch

    model.train()
    optimizer = torch.optim.AdamW(params, lr=plan.lr)
    gen = torch.Generator().manual_seed(resolution)
    batch = synthetic_batch(plan, resolution, gen)
    if torch.device(plan.device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(plan.device)
    losses, times, grad_norms = [], [], []
    last = 0.0
    for step in range(plan.warmup_steps + plan.train_steps):
        if step >= plan.warmup_steps and time.perf_counter() + last > deadline:
            break
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
        last = time.perf_counter() - t0
        if step >= plan.warmup_steps:
            times.append(last)
        losses.append(float(loss.detach()))
    out = {
        "resolution": resolution,
        "image_tokens": batch["latents"].shape[1],
        "steps_timed": len(times),
        "stopped_by_budget": len(times) < plan.train_steps,
        "s_per_step": sum(times) / len(times) if times else None,
        "s_per_step_min": min(times) if times else None,
        "losses": losses,
        "grad_norms": grad_norms,
        "finite": all(math.isfinite(v) for v in losses + grad_norms),
        # zero LoRA gradients would mean the adapter is cut off (e.g. by checkpointing): a false "ok"
        "lora_grads_nonzero": bool(grad_norms) and all(g > 0 for g in grad_norms),
    }
    if torch.device(plan.device).type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(plan.device) / 2**30
    del optimizer
    return out


def inference_timing(model, plan: Plan, deadline: float = math.inf) -> dict:
    """Transformer forward per denoising step (guidance 3.5, LoRA active), the bulk of generation time.

    The first (warm-up) forward always runs; later ones stop at ``deadline``.
    """
    import torch

    model.eval()
    gen = torch.Generator().manual_seed(1)
    batch = synthetic_batch(plan, plan.inference_resolution, gen)
    if torch.device(plan.device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(plan.device)
    times = []
    last = 0.0
    with torch.inference_mode():
        for step in range(1 + plan.inference_steps):
            if step >= 1 and time.perf_counter() + last > deadline:
                break
            _sync(plan.device)
            t0 = time.perf_counter()
            out = _forward(model, batch, batch["latents"], batch["sigma"], guidance=3.5)
            _sync(plan.device)
            last = time.perf_counter() - t0
            if step >= 1:
                times.append(last)
    per = sum(times) / len(times) if times else None
    res = {
        "resolution": plan.inference_resolution,
        "steps_timed": len(times),
        "stopped_by_budget": len(times) < plan.inference_steps,
        "s_per_forward": per,
        "est_s_per_image_28_steps": 28 * per if per is not None else None,
        "finite": bool(torch.isfinite(out.float()).all()),
    }
    if torch.device(plan.device).type == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated(plan.device) / 2**30
    return res


def _log(msg: str) -> None:
    print(msg, flush=True)  # flushed: a killed run still shows every line it reached


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _error_record(phase: str, exc: BaseException) -> dict:
    return {"phase": phase, "type": type(exc).__name__, "message": str(exc)[:2000],
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]}


def _free_memory(plan: Plan, params: list | None = None) -> None:
    """After a failed phase: drop stale gradients and cached blocks so the next phase can run."""
    for p in params or ():
        p.grad = None
    gc.collect()
    try:
        import torch

        if torch.device(plan.device).type == "cuda" and torch.cuda.is_available():
            torch.cuda.synchronize(plan.device)
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - cleanup must never raise over the real error
        pass


def _base_report(plan: Plan) -> dict[str, Any]:
    return {"plan": {**asdict(plan), "resolutions": list(plan.resolutions)}, "python": platform.python_version(),
            "errors": [], "skipped": [], "train": [], "inference": None, "ok": False}


def _finish(report: dict, t_start: float) -> dict:
    report["total_s"] = time.perf_counter() - t_start
    train = report.get("train") or []
    inf = report.get("inference")
    plan = report["plan"]
    report["ok"] = bool(
        not report["errors"] and not report["skipped"]
        and [t["resolution"] for t in train] == list(plan["resolutions"])
        and all(t["finite"] and t["lora_grads_nonzero"] and t["steps_timed"] > 0 for t in train)
        and inf is not None and inf["finite"] and inf["steps_timed"] > 0
    )
    return report


def run(plan: Plan, log=_log, *, budget_s: float = DEFAULT_BUDGET_S, t_start: float | None = None,
        on_update=None) -> dict:
    """Run the whole check and return the report (also what ``--json`` writes). Never raises.

    Args:
        plan: what to run.
        log: line printer.
        budget_s: seconds from ``t_start`` the whole check may take (training leaves room for
            the inference timing); phases that cannot start in time are listed in ``skipped``.
        t_start: ``time.perf_counter()`` at program start (default: now).
        on_update: called with the report after every phase (``main`` writes the JSON there).

    Returns:
        The report: ``ok``, ``errors`` (phase, type, message, traceback), ``skipped``, ``train``
        (one entry per resolution that ran), ``inference``, ``total_s`` and versions.
    """
    t_start = time.perf_counter() if t_start is None else t_start
    deadline = t_start + budget_s
    report = _base_report(plan)
    report["budget_s"] = budget_s
    update = on_update or (lambda r: None)

    def failed(phase: str, exc: BaseException, params: list | None = None) -> None:
        record = _error_record(phase, exc)
        report["errors"].append(record)
        log(f"{phase} FAILED: {type(exc).__name__}: {str(exc)[:500]}\n{record['traceback'][-1500:]}")
        _free_memory(plan, params)

    def checkpoint() -> None:
        report["total_s"] = time.perf_counter() - t_start
        try:
            update(report)
        except Exception as exc:  # noqa: BLE001 - a report write must not stop the check
            log(f"could not write the report: {exc}")

    try:
        import diffusers
        import peft
        import torch

        report.update(torch=torch.__version__, cuda=torch.version.cuda, diffusers=diffusers.__version__,
                      peft=peft.__version__)
        cuda = torch.device(plan.device).type == "cuda"
        if cuda:
            props = torch.cuda.get_device_properties(plan.device)
            report.update(device_name=props.name, device_total_mem_gib=props.total_memory / 2**30,
                          capability=f"{props.major}.{props.minor}")
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            report["device_name"] = platform.processor() or "cpu"
    except Exception as exc:  # noqa: BLE001
        failed("setup", exc)
        checkpoint()
        return _finish(report, t_start)

    model = params = None
    try:
        t0 = time.perf_counter()
        model = build_transformer(plan)
        _sync(plan.device)
        report["build_s"] = time.perf_counter() - t0
        report["params_billion"] = sum(p.numel() for p in model.parameters()) / 1e9
        if cuda:
            report["weights_mem_gib"] = torch.cuda.memory_allocated(plan.device) / 2**30
        log(f"built FluxTransformer2DModel ({report['params_billion']:.2f}B params, {plan.dtype}) "
            f"on {report['device_name']} in {report['build_s']:.1f}s")
    except Exception as exc:  # noqa: BLE001
        failed("build", exc)
        model = None
    checkpoint()

    if model is not None:
        try:
            params = add_lora(model, plan)
            report["lora_params_million"] = sum(p.numel() for p in params) / 1e6
            log(f"LoRA rank {plan.rank}: {report['lora_params_million']:.1f}M trainable params, "
                f"gradient checkpointing {'on' if plan.gradient_checkpointing else 'off'}")
        except Exception as exc:  # noqa: BLE001
            failed("lora", exc)
            params = None
        checkpoint()

    # training stops early enough to leave the inference timing ~10% of the budget
    train_deadline = deadline - (0.1 * budget_s if plan.inference_steps > 0 else 0.0)
    for res in plan.resolutions:
        phase = f"train_{res}"
        if model is None or params is None:
            report["skipped"].append({"phase": phase, "reason": "no model" if model is None else "no LoRA"})
            continue
        if time.perf_counter() >= train_deadline:
            report["skipped"].append({"phase": phase, "reason": f"time budget {budget_s:.0f}s spent"})
            log(f"{phase} skipped: time budget spent")
            continue
        try:
            r = train_timing(model, params, plan, res, deadline=train_deadline)
            report["train"].append(r)
            mem = f", peak {r['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in r else ""
            loss = _fmt(r["losses"][-1], ".4f") if r["losses"] else "n/a"
            log(f"train {res}px ({r['image_tokens']} image tokens): {_fmt(r['s_per_step'])} s/step "
                f"(min {_fmt(r['s_per_step_min'])}, {r['steps_timed']} timed"
                f"{', stopped by the time budget' if r['stopped_by_budget'] else ''}){mem}, loss {loss}")
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory at 1024 px: keep the other figures
            failed(phase, exc, params)
        checkpoint()

    if model is None or params is None:
        report["skipped"].append({"phase": "inference", "reason": "no model" if model is None else "no LoRA"})
    elif time.perf_counter() >= deadline:
        report["skipped"].append({"phase": "inference", "reason": f"time budget {budget_s:.0f}s spent"})
        log("inference skipped: time budget spent")
    else:
        try:
            r = inference_timing(model, plan, deadline=deadline)
            report["inference"] = r
            mem = f", peak {r['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in r else ""
            log(f"inference {r['resolution']}px: {_fmt(r['s_per_forward'])} s per transformer step "
                f"(~{_fmt(r['est_s_per_image_28_steps'], '.1f')}s for 28 steps){mem}")
        except Exception as exc:  # noqa: BLE001
            failed("inference", exc, params)

    _finish(report, t_start)
    checkpoint()
    status = "ok" if report["ok"] else (
        f"NOT OK: {len(report['errors'])} error(s) {[e['phase'] for e in report['errors']]}, "
        f"skipped {[s['phase'] for s in report['skipped']]}")
    log(f"total {report['total_s']:.1f}s, {status}")
    return report


def write_report(path: Path, report: dict) -> None:
    """Write ``report`` as JSON atomically (temp file + rename; no persona_ml import needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # persona_ml from this checkout when not installed
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timed steps (about half the time)")
    parser.add_argument("--dry-run", action="store_true", help="tiny-flux sizes on CPU: checks the code path only")
    parser.add_argument("--json", type=Path, help="write the report as JSON here (after every phase)")
    parser.add_argument("--device", help="torch device (default cuda, or cpu with --dry-run)")
    parser.add_argument("--resolutions", type=int, nargs="+",
                        help="training sizes in px (default 512 1024; 64 128 with --dry-run)")
    parser.add_argument("--steps", type=int, help="timed training steps per resolution")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds the whole check may take (default {DEFAULT_BUDGET_S})")
    args = parser.parse_args(argv)
    for res in args.resolutions or ():
        if res <= 0 or res % 16:
            parser.error(f"--resolutions must be positive multiples of 16, got {res}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.rank < 1:
        parser.error(f"--rank must be at least 1, got {args.rank}")
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")

    latest: dict[str, Any] = {}

    def save(report: dict) -> None:
        latest["report"] = report
        if args.json:
            write_report(args.json, report)

    plan = _plan(args)
    try:
        import torch

        usable = torch.device(plan.device).type != "cuda" or torch.cuda.is_available()
        why = "no CUDA device (torch.cuda.is_available() is False)"
    except Exception as exc:  # noqa: BLE001 - torch missing or broken: still leave a report
        usable, why = False, f"torch unusable: {type(exc).__name__}: {exc}"
    if not usable:
        report = _base_report(plan)
        report["errors"].append({"phase": "device", "type": "DeviceUnavailable", "message": why})
        report["total_s"] = time.perf_counter() - t_start
        save(report)
        print(f"{why}: run on a GPU machine, or use --dry-run to check the code path on CPU", file=sys.stderr)
        return 2
    try:
        report = run(plan, budget_s=args.budget_s, t_start=t_start, on_update=save)
    except BaseException as exc:
        report = latest.get("report") or _base_report(plan)  # keep the phases that finished
        report["ok"] = False
        report["errors"].append(_error_record("run", exc))
        report["total_s"] = time.perf_counter() - t_start
        save(report)
        if not isinstance(exc, Exception):
            raise
        print(f"gpu_check failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(f"report: {args.json}", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
