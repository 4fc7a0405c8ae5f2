#!/usr/bin/env python
"""GPU check of the library's own path: TrainingJob per preset and CharacterGenerator, no download.

What it runs is what a GPU worker runs. It writes a FLUX.1-dev-shaped diffusers folder with random
bf16 weights (transformer 11.9B, T5-XXL encoder, CLIP-L, the 16-channel VAE; tokenizers built
offline; weight values do not change speed or memory), then, phase by phase:

* ``train:<preset>`` for ``persona-flux-dev`` (bf16), ``persona-flux-dev-24gb`` (int8 base) and
  ``persona-flux-dev-16gb`` (nf4 base): a short ``TrainingJob`` on a synthetic prepared dataset
  at 512 and 1024 px with the latent/text cache (memory-ordered loading, accelerate, 8-bit AdamW
  when bitsandbytes is installed, face masks), printing s/step per resolution, peak GPU memory
  of the encode and train phases, and MFU;
* ``generate``: ``CharacterGenerator`` with the two LoRAs those jobs exported, an image of each
  character at 1024 px / 28 steps, the switch latency between them;
* ``generate:compiled``: the same with ``torch.compile`` and hotswap, compile time, the image
  latency after a switch and whether the switch recompiled.

    python scripts/gpu_check.py                    # the whole check, one 8-minute call on an H100/H200
    python scripts/gpu_check.py --json gpu_check.json --workdir /scratch/gpu_check
    python scripts/gpu_check.py --dry-run          # tiny-flux on CPU: the same code path, in make test

Robust by design, since a GPU session may give it one shot: every phase runs in its own
try/except that records the error (an out-of-memory of one preset still leaves the others), a
phase that cannot finish in the time budget (``--budget-s``, default 8 minutes) is skipped and
says so, lines are flushed as they are printed, and the ``--json`` report is rewritten atomically
after every phase and on failure. Phases are a list (``PHASES``); another area can append its own
``Phase`` without touching the others.

MFU: model FLOPs of a LoRA step on a frozen base = 2 x the forward FLOPs (the backward computes
activation gradients only: no weight gradients for frozen weights; gradient checkpointing's
recomputed forward is not counted), forward = 2 x parameters x tokens + attention (4 x tokens^2 x
hidden per block); divided by the card's dense bf16 peak.

Exit status 0 when every phase that this device supports ran in full, 1 otherwise, 2 without a
usable device.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_S = 8 * 60

# dense bf16 peak FLOP/s by device-name substring (vendor datasheets); unknown cards get no MFU
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "L40": 181e12,
             "RTX 4090": 165e12, "RTX 6000 Ada": 364e12, "A10G": 70e12, "L4": 121e12, "A6000": 155e12}


@dataclass
class Plan:
    """What to run (``--dry-run`` swaps FLUX.1-dev's shapes for tiny-flux's and CUDA for the CPU)."""

    device: str
    dry_run: bool
    presets: tuple[str, ...]
    resolutions: tuple[int, ...]
    train_steps: int
    rank: int
    gen_resolution: int
    gen_steps: int
    compile_backend: str
    workdir: str | None = None
    keep_folder: bool = False
    extra_overrides: tuple[str, ...] = ()


@dataclass
class Phase:
    """One phase: ``run(ctx)`` returns its figures (a dict); ``needs`` names phases whose results it
    uses; ``estimate_s(ctx)`` is its expected duration (a phase that would overrun the budget is
    skipped); ``supported(ctx)`` returns ``None`` or why this device cannot run it."""

    name: str
    run: Callable[[dict], dict]
    needs: tuple[str, ...] = ()
    estimate_s: Callable[[dict], float] = lambda ctx: 0.0
    supported: Callable[[dict], str | None] = lambda ctx: None


def _plan(args: argparse.Namespace) -> Plan:
    presets = tuple(args.presets or ("persona-flux-dev", "persona-flux-dev-24gb", "persona-flux-dev-16gb"))
    if args.dry_run:
        return Plan(device=args.device or "cpu", dry_run=True, presets=presets,
                    resolutions=tuple(args.resolutions or (64, 128)), train_steps=args.steps or 3, rank=4,
                    gen_resolution=64, gen_steps=2, compile_backend="eager", workdir=args.workdir,
                    keep_folder=args.keep_folder)
    return Plan(device=args.device or "cuda", dry_run=False, presets=presets,
                resolutions=tuple(args.resolutions or (512, 1024)), train_steps=args.steps or 7, rank=args.rank,
                gen_resolution=1024, gen_steps=28, compile_backend="inductor", workdir=args.workdir,
                keep_folder=args.keep_folder)


def _log(msg: str) -> None:
    print(msg, flush=True)  # flushed: a killed run still shows every line it reached


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.1f} GiB"


def _is_cuda(ctx: dict) -> bool:
    return ctx["plan"].device.startswith("cuda")


def _sync(ctx: dict) -> None:
    if _is_cuda(ctx):
        import torch

        torch.cuda.synchronize()


def _free(ctx: dict) -> None:
    gc.collect()
    if _is_cuda(ctx):
        import torch

        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the base-model folder

def write_flux_folder(folder: Path, plan: Plan) -> dict:
    """A diffusers folder the library loads as ``flux-dev``: FLUX.1-dev's configs and shapes with
    random bf16 weights, components built on the device one at a time and saved as safetensors
    (``--dry-run``: tiny-flux, saved the same way)."""
    import torch

    from persona_ml.models.tiny_flux import TinyFluxConfig, build_tiny_flux_pipeline

    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    if plan.dry_run:
        build_tiny_flux_pipeline(seed=0, config=TinyFluxConfig()).save_pretrained(folder)
        return {"folder": str(folder), "bytes": _dir_bytes(folder), "write_s": time.perf_counter() - t0}
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from persona_ml.models.tiny_flux import FLUX_SCHEDULER_CONFIG, FLUX_VAE_SCALING_FACTOR, FLUX_VAE_SHIFT_FACTOR

    tiny = build_tiny_flux_pipeline(seed=0)   # its tokenizers (ids below the real vocab sizes) and scheduler
    tiny.tokenizer.save_pretrained(folder / "tokenizer")
    tiny.tokenizer_2.save_pretrained(folder / "tokenizer_2")
    tiny.scheduler.from_config(FLUX_SCHEDULER_CONFIG).save_pretrained(folder / "scheduler")
    builders = {
        "transformer": lambda: FluxTransformer2DModel(guidance_embeds=True),
        "vae": lambda: AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                                     up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                                     layers_per_block=2, latent_channels=16, sample_size=1024,
                                     scaling_factor=FLUX_VAE_SCALING_FACTOR, shift_factor=FLUX_VAE_SHIFT_FACTOR,
                                     use_quant_conv=False, use_post_quant_conv=False),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                                             num_hidden_layers=12, num_attention_heads=12,
                                                             max_position_embeddings=77, projection_dim=768,
                                                             hidden_act="quick_gelu")),
        "text_encoder_2": lambda: T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240,
                                                          num_layers=24, num_heads=64, feed_forward_proj="gated-gelu",
                                                          is_encoder_decoder=False, use_cache=False,
                                                          tie_word_embeddings=False)),
    }
    previous = torch.get_default_dtype()
    params = {}
    for name, build in builders.items():
        torch.manual_seed(0)
        try:
            torch.set_default_dtype(torch.bfloat16)   # born on the device in bf16: no fp32 copy
            with torch.device(plan.device):
                module = build()
        finally:
            torch.set_default_dtype(previous)
        params[name] = sum(p.numel() for p in module.parameters())
        module.save_pretrained(folder / name, safe_serialization=True, max_shard_size="10GB")
        del module
        gc.collect()
        torch.cuda.empty_cache()
    index = {"_class_name": "FluxPipeline", "_diffusers_version": "0.42.1",
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "text_encoder_2": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "tokenizer_2": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "FluxTransformer2DModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return {"folder": str(folder), "bytes": _dir_bytes(folder), "write_s": time.perf_counter() - t0,
            "params_billion": {k: v / 1e9 for k, v in params.items()}}


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- training phases

def _peak_flops(ctx: dict) -> float | None:
    name = ctx["report"].get("device_name", "")
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def _train_flops(transformer_params: int, cfg: dict, image_tokens: int, text_tokens: int) -> float:
    seq = image_tokens + text_tokens
    hidden = cfg.get("num_attention_heads", 24) * cfg.get("attention_head_dim", 128)
    blocks = cfg.get("num_layers", 19) + cfg.get("num_single_layers", 38)
    forward = 2.0 * transformer_params * seq + blocks * 4.0 * seq * seq * hidden
    return 2.0 * forward


def train_preset(ctx: dict, preset: str) -> dict:
    """A short ``TrainingJob`` of ``preset`` on the folder; s/step per resolution, memory, MFU."""
    import torch

    from persona_ml.training import TrainingJob
    from persona_ml.training.config import load_train_config
    from persona_ml.training.testing import make_synthetic_dataset

    plan: Plan = ctx["plan"]
    work = Path(ctx["workdir"])
    data = ctx.get("dataset")
    if data is None:
        size = max(plan.resolutions)
        data = ctx["dataset"] = make_synthetic_dataset(work / "prepared", n=2, size=size)
    steps = plan.train_steps
    overrides = [f"base_model={'flux' if plan.dry_run else 'flux-dev'}", f"base_model_path={ctx['folder']}",
                 "rules.mode=research", f"steps={steps}", f"checkpoint.every={steps}", "samples.every=-1",
                 f"data.resolutions={list(plan.resolutions)}", "data.caption_dropout=0.0",
                 f"lora.rank={plan.rank}", f"lora.alpha={plan.rank}", f"cache.dir={work / 'cache'}",
                 f"device={'cpu' if plan.device == 'cpu' else 'cuda'}", "data.face_loss_weight=2.0",
                 *(["data.max_sequence_length=32"] if plan.dry_run else []), *plan.extra_overrides]
    cfg = load_train_config(preset, overrides)
    tokens: list[int] = []
    stamps: list[tuple[float, int]] = []

    def on_event(e) -> None:
        if e.kind == "step":
            _sync(ctx)
            stamps.append((time.perf_counter(), tokens[-1] if tokens else 0))
        elif e.kind == "status" and e.status.value == "training":
            _sync(ctx)
            stamps.append((time.perf_counter(), -1))

    def hook(module, args, kwargs, out):
        if module.training:
            tokens.append(int(kwargs["hidden_states"].shape[1]))

    from persona_ml.training import job as jobmod

    real_load = jobmod._load_base_model

    def load(*a, **k):   # the library's loader; only a forward hook is added to count tokens
        loaded = real_load(*a, **k)
        if loaded.pipeline.transformer is not None:
            ctx["transformer_config"] = dict(loaded.pipeline.transformer.config)
            ctx["transformer_params"] = sum(p.numel() for p in loaded.pipeline.transformer.parameters())
            loaded.pipeline.transformer.register_forward_hook(hook, with_kwargs=True)
        return loaded

    jobmod._load_base_model = load
    try:
        out_dir = work / "runs" / preset
        shutil.rmtree(out_dir, ignore_errors=True)
        result = TrainingJob(cfg, data, out_dir, on_event=on_event).run()
    finally:
        jobmod._load_base_model = real_load
    per_res: dict[int, list[float]] = {}
    for (t_prev, _), (t, tok) in zip(stamps, stamps[1:]):
        per_res.setdefault(tok, []).append(t - t_prev)
    text_tokens = cfg.data.max_sequence_length
    peak = _peak_flops(ctx)
    figures = []
    for tok, times in sorted(per_res.items()):
        timed = times[1:] if len(times) > 1 else times   # the first step of a bucket warms kernels up
        s_step = sum(timed) / len(timed)
        res = int(round(math.sqrt(tok))) * 16
        flops = _train_flops(ctx["transformer_params"], ctx["transformer_config"], tok, text_tokens)
        figures.append({"resolution": res, "image_tokens": tok, "steps_timed": len(timed), "s_per_step": s_step,
                        "mfu": (flops / s_step / peak) if peak else None})
    mem = result.memory
    ctx.setdefault("loras", {})[preset] = str(result.lora_path)
    record = {"preset": preset, "quantization": cfg.quantization, "status": result.status.value,
              "steps": len(result.losses), "losses_finite": all(math.isfinite(v) for v in result.losses),
              "lora_changed": _lora_trained(result.lora_path), "optimizer": result.optimizer,
              "per_resolution": figures, "encode_peak_bytes": mem.get("encode", {}).get("peak_bytes"),
              "train_peak_bytes": mem.get("train", {}).get("peak_bytes"), "peak_bytes": mem.get("peak_bytes"),
              "memory_measure": mem.get("train", {}).get("measure"), "timings": dict(result.timings),
              "lora_path": str(result.lora_path)}
    del result
    _free(ctx)
    _ = torch
    return record


def _lora_trained(path) -> bool:
    from safetensors.torch import load_file

    sd = load_file(str(path))
    return any(float(v.abs().sum()) > 0 for k, v in sd.items() if "lora_B" in k)


def _train_line(r: dict) -> str:
    parts = [f"{f['resolution']}px {_fmt(f['s_per_step'])} s/step"
             + (f" (MFU {f['mfu']:.0%})" if f.get("mfu") is not None else "") for f in r["per_resolution"]]
    return (f"train {r['preset']} ({r['quantization']}): {', '.join(parts)}; peak {r['memory_measure']}: encode "
            f"{_gib(r['encode_peak_bytes'])}, train {_gib(r['train_peak_bytes'])}; optimizer {r['optimizer']}")


# --------------------------------------------------------------------------- generation phases

def _generator(ctx: dict, compiled: bool):
    from persona_ml.inference import Character, CharacterGenerator
    from persona_ml.models import load_base_model

    plan: Plan = ctx["plan"]
    base = load_base_model("flux" if plan.dry_run else "flux-dev", path=ctx["folder"], dtype="bf16",
                           device=plan.device)
    gen = CharacterGenerator(base, face_embedder=None, max_rank=max(16, plan.rank), compile=compiled,
                             compile_kwargs={"backend": plan.compile_backend} if compiled else None)
    loras = list(ctx.get("loras", {}).values())
    if len(loras) < 2:   # one preset ran: a second character from a random LoRA on the same base
        from persona_ml.inference.testing import make_random_lora

        extra = make_random_lora(base.pipeline, Path(ctx["workdir"]) / "random_lora", seed=3, base_model=base.name,
                                 base_fingerprint=base.fingerprint, rank=plan.rank)
        loras.append(str(extra.diffusers_path))
    for i, path in enumerate(loras[:2]):
        gen.register(Character(f"char{i}", lora_path=path, trigger="ohwx"))
    return gen


def _image(ctx: dict, gen, character: str) -> float:
    from persona_ml.inference import GenerationRequest

    plan: Plan = ctx["plan"]
    _sync(ctx)
    t0 = time.perf_counter()
    gen.generate(GenerationRequest(character, "a portrait photo of {trigger}", seeds=[1], height=plan.gen_resolution,
                                   width=plan.gen_resolution, steps=plan.gen_steps,
                                   max_sequence_length=32 if plan.dry_run else 512))
    _sync(ctx)
    return time.perf_counter() - t0


def _switch(ctx: dict, gen, character: str) -> float:
    _sync(ctx)
    t0 = time.perf_counter()
    gen.activate(character)
    _sync(ctx)
    return time.perf_counter() - t0


def _reset_peak(ctx: dict) -> None:
    if _is_cuda(ctx):
        import torch

        torch.cuda.reset_peak_memory_stats()


def _peak(ctx: dict) -> int | None:
    if _is_cuda(ctx):
        import torch

        return int(torch.cuda.max_memory_allocated())
    return None


def generate(ctx: dict) -> dict:
    """Two characters, eager: first image (warm-up), a switch, an image of the other character."""
    _reset_peak(ctx)
    gen = _generator(ctx, compiled=False)
    first = _image(ctx, gen, "char0")
    switch = _switch(ctx, gen, "char1")
    after = _image(ctx, gen, "char1")
    back = _switch(ctx, gen, "char0")
    record = {"resolution": ctx["plan"].gen_resolution, "steps": ctx["plan"].gen_steps, "first_image_s": first,
              "image_s": after, "switch_s": (switch + back) / 2, "peak_bytes": _peak(ctx),
              "cache": dict(gen.cache_stats().__dict__) if hasattr(gen.cache_stats(), "__dict__") else None}
    del gen
    _free(ctx)
    return record


def generate_compiled(ctx: dict) -> dict:
    """torch.compile + hotswap: compile time (first image), then a switch must not recompile."""
    import torch

    _reset_peak(ctx)
    torch._dynamo.reset()
    gen = _generator(ctx, compiled=True)
    first = _image(ctx, gen, "char0")
    frames_before = _compiled_frames()
    switch = _switch(ctx, gen, "char1")
    after = _image(ctx, gen, "char1")
    record = {"resolution": ctx["plan"].gen_resolution, "steps": ctx["plan"].gen_steps, "backend": ctx["plan"].compile_backend,
              "compile_and_first_image_s": first, "image_s": after, "switch_s": switch,
              "recompiled_on_switch": _compiled_frames() != frames_before, "peak_bytes": _peak(ctx)}
    del gen
    torch._dynamo.reset()
    _free(ctx)
    return record


def _compiled_frames() -> int:
    from torch._dynamo.utils import counters

    return int(sum(counters["stats"].values())) if "stats" in counters else 0


# --------------------------------------------------------------------------- phases

def _nf4_supported(ctx: dict) -> str | None:
    return None if _is_cuda(ctx) else "nf4 (bitsandbytes) needs CUDA"


def _preset_supported(preset: str) -> Callable[[dict], str | None]:
    def check(ctx: dict) -> str | None:
        from persona_ml.training.config import load_train_config

        q = load_train_config(preset).quantization
        if q == "nf4":
            return _nf4_supported(ctx)
        if q == "int8-weight-only":
            import importlib.util

            return None if importlib.util.find_spec("torchao") else "torchao is not installed"
        return None
    return check


def _train_estimate(ctx: dict) -> float:
    return ctx.get("train_estimate_s", 0.0)


def default_phases(plan: Plan) -> list[Phase]:
    """folder -> one training job per preset -> eager generation -> compiled generation."""
    phases = [Phase("folder", lambda ctx: _folder(ctx))]
    for preset in plan.presets:
        phases.append(Phase(f"train:{preset}", (lambda p: lambda ctx: train_preset(ctx, p))(preset), needs=("folder",),
                            estimate_s=_train_estimate, supported=_preset_supported(preset)))
    phases.append(Phase("generate", generate, needs=("folder",), estimate_s=lambda ctx: ctx.get("gen_estimate_s", 0.0)))
    phases.append(Phase("generate:compiled", generate_compiled, needs=("folder",),
                        estimate_s=lambda ctx: 3 * ctx.get("gen_estimate_s", 0.0)))
    return phases


def _folder(ctx: dict) -> dict:
    record = write_flux_folder(Path(ctx["workdir"]) / "flux-base", ctx["plan"])
    ctx["folder"] = record["folder"]
    return record


PHASES: list[Phase] | None = None   # set to a list to replace default_phases (e.g. to append a video phase)


# --------------------------------------------------------------------------- driver

def _error_record(phase: str, exc: BaseException) -> dict:
    return {"phase": phase, "type": type(exc).__name__, "message": str(exc)[:2000],
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]}


def _base_report(plan: Plan) -> dict[str, Any]:
    return {"plan": asdict(plan), "python": platform.python_version(), "errors": [], "skipped": [], "phases": {},
            "ok": False}


def _summary_line(name: str, r: dict) -> str:
    try:
        return _describe(name, r)
    except (KeyError, TypeError, ValueError):   # a plugged-in phase with other figures
        return f"{name}: {json.dumps(r, default=str)[:300]}"


def _describe(name: str, r: dict) -> str:
    if name.startswith("train:"):
        return _train_line(r)
    if name == "folder":
        return f"folder: {_gib(r['bytes'])} written in {r['write_s']:.1f}s ({r['folder']})"
    if name == "generate":
        return (f"generate {r['resolution']}px/{r['steps']} steps: {_fmt(r['image_s'], '.2f')} s/image "
                f"(first {_fmt(r['first_image_s'], '.2f')}s), switch {r['switch_s'] * 1000:.1f} ms, "
                f"peak {_gib(r['peak_bytes'])}")
    if name == "generate:compiled":
        return (f"generate compiled ({r['backend']}): compile + first image {_fmt(r['compile_and_first_image_s'], '.1f')}s, "
                f"then {_fmt(r['image_s'], '.2f')} s/image, switch {r['switch_s'] * 1000:.1f} ms, "
                f"recompiled on switch: {r['recompiled_on_switch']}")
    return f"{name}: {json.dumps(r, default=str)[:300]}"


def _phase_ok(name: str, r: dict) -> bool:
    if name.startswith("train:") and "status" in r:
        return (r["status"] == "completed" and r["losses_finite"] and r["lora_changed"]
                and len(r["per_resolution"]) == len(r.get("_resolutions", r["per_resolution"])) > 0)
    if name == "generate:compiled":
        return not r.get("recompiled_on_switch", False)
    return True


def run(plan: Plan, log=_log, *, budget_s: float = DEFAULT_BUDGET_S, t_start: float | None = None,
        on_update=None, phases: list[Phase] | None = None) -> dict:
    """Run every phase and return the report (also what ``--json`` writes). Never raises.

    Returns:
        ``ok``, ``errors`` (phase, type, message, traceback), ``skipped`` (phase, reason, kind:
        ``budget`` | ``dependency`` | ``unsupported``), ``phases`` (name -> figures), ``total_s``.
    """
    t_start = time.perf_counter() if t_start is None else t_start
    deadline = t_start + budget_s
    report = _base_report(plan)
    report["budget_s"] = budget_s
    update = on_update or (lambda r: None)

    def checkpoint() -> None:
        report["total_s"] = time.perf_counter() - t_start
        try:
            update(report)
        except Exception as exc:  # noqa: BLE001 - a report write must not stop the check
            log(f"could not write the report: {exc}")

    try:
        from persona_ml import _notices

        _notices.install()   # before peft / torchao imports log their unrelated notices
        import diffusers
        import peft
        import torch

        report.update(torch=torch.__version__, cuda=torch.version.cuda, diffusers=diffusers.__version__,
                      peft=peft.__version__)
        if plan.device.startswith("cuda"):
            props = torch.cuda.get_device_properties(plan.device)
            report.update(device_name=props.name, device_total_mem_gib=props.total_memory / 2**30,
                          capability=f"{props.major}.{props.minor}")
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            report["device_name"] = platform.processor() or "cpu"
    except Exception as exc:  # noqa: BLE001
        report["errors"].append(_error_record("setup", exc))
        log(f"setup FAILED: {type(exc).__name__}: {exc}")
        checkpoint()
        return _finish(report, t_start)

    workdir = Path(plan.workdir) if plan.workdir else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    workdir.mkdir(parents=True, exist_ok=True)
    ctx: dict[str, Any] = {"plan": plan, "report": report, "workdir": str(workdir)}
    done: set[str] = set()
    for phase in phases if phases is not None else (PHASES or default_phases(plan)):
        missing = [n for n in phase.needs if n not in done]
        why = phase.supported(ctx)
        if missing:
            report["skipped"].append({"phase": phase.name, "reason": f"needs {missing}", "kind": "dependency"})
            log(f"{phase.name} skipped: needs {missing}")
            continue
        if why:
            report["skipped"].append({"phase": phase.name, "reason": why, "kind": "unsupported"})
            log(f"{phase.name} skipped: {why}")
            continue
        if time.perf_counter() + phase.estimate_s(ctx) > deadline:
            report["skipped"].append({"phase": phase.name, "reason": f"time budget {budget_s:.0f}s", "kind": "budget"})
            log(f"{phase.name} skipped: the time budget ({budget_s:.0f}s) would be exceeded")
            continue
        t0 = time.perf_counter()
        try:
            record = phase.run(ctx)
            record["phase_s"] = time.perf_counter() - t0
            if phase.name.startswith("train:"):
                record["_resolutions"] = list(plan.resolutions)
                ctx["train_estimate_s"] = max(ctx.get("train_estimate_s", 0.0), record["phase_s"])
            if phase.name == "generate":
                ctx["gen_estimate_s"] = record["phase_s"]
            report["phases"][phase.name] = record
            done.add(phase.name)
            log(_summary_line(phase.name, record))
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory in one preset: keep the other figures
            report["errors"].append(_error_record(phase.name, exc))
            log(f"{phase.name} FAILED: {type(exc).__name__}: {str(exc)[:500]}")
            _free(ctx)
        checkpoint()
    if not plan.keep_folder and not plan.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    _finish(report, t_start)
    checkpoint()
    status = "ok" if report["ok"] else (
        f"NOT OK: errors in {[e['phase'] for e in report['errors']]}, skipped "
        f"{[s['phase'] for s in report['skipped'] if s['kind'] != 'unsupported']}")
    log(f"total {report['total_s']:.1f}s, {status}")
    return report


def _finish(report: dict, t_start: float) -> dict:
    report["total_s"] = time.perf_counter() - t_start
    phases = report.get("phases", {})
    report["ok"] = bool(not report["errors"] and phases
                        and not [s for s in report["skipped"] if s["kind"] != "unsupported"]
                        and all(_phase_ok(n, r) for n, r in phases.items()))
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
    parser.add_argument("--dry-run", action="store_true", help="tiny-flux on CPU: checks the code path only")
    parser.add_argument("--json", type=Path, help="write the report as JSON here (after every phase)")
    parser.add_argument("--device", help="torch device (default cuda, or cpu with --dry-run)")
    parser.add_argument("--presets", nargs="+", help="training presets (default: the bf16, 24gb and 16gb presets)")
    parser.add_argument("--resolutions", type=int, nargs="+",
                        help="training sizes in px (default 512 1024; 64 128 with --dry-run)")
    parser.add_argument("--steps", type=int, help="training steps per preset")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--workdir", help="where the model folder, caches and runs go (default: a temp folder, removed)")
    parser.add_argument("--keep-folder", action="store_true", help="keep the temp work folder")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds the whole check may take (default {DEFAULT_BUDGET_S})")
    args = parser.parse_args(argv)
    for res in args.resolutions or ():
        if res <= 0 or res % 16:
            parser.error(f"--resolutions must be positive multiples of 16, got {res}")
    if args.steps is not None and args.steps < 2:
        parser.error(f"--steps must be at least 2 (the first step of each size warms up), got {args.steps}")
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

        usable = not plan.device.startswith("cuda") or torch.cuda.is_available()
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
