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
  latency after a switch and whether the switch recompiled;
* ``video:talking-head`` (LTX-2.5 ``LTX2DFRPipeline``, frozen audio latents) and ``video:motion``
  (``WanAnimatePipeline``, animate mode): the pipeline at its real size with random bf16 weights,
  born on the GPU (``persona_ml.video.real_size``, no file, no download), then the library's
  ``TalkingHeadJob`` / ``MotionTransferJob`` at the preview and the full setting for a short clip:
  seconds per second of video, s/step, peak GPU memory per setting (``--dry-run``: the tiny video
  pipelines on CPU). They hold ``VIDEO_RESERVE_S`` of the budget, skip when the card cannot hold
  the weights, and skip the full setting when the preview says it would overrun.

    python scripts/gpu_check.py                    # the whole check, one 8-minute call on an H100/H200
    python scripts/gpu_check.py --json gpu_check.json --workdir /scratch/gpu_check
    python scripts/gpu_check.py --dry-run          # tiny-flux on CPU: the same code path, in make test

Robust by design, since a GPU session may give it one shot: every phase runs in its own
try/except that records the error (an out-of-memory of one preset still leaves the others), a
phase that cannot finish in the time budget (``--budget-s``, default 8 minutes) is skipped and
says so, lines are flushed as they are printed, and the ``--json`` report is rewritten atomically
after every phase and on failure. Phases are a list (``PHASES``); another area can append its own
``Phase`` without touching the others (a ``reserve_s`` keeps its share of the budget).

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
    skipped); ``supported(ctx)`` returns ``None`` or why this device cannot run it; ``reserve_s`` is the
    share of the budget held for it: the phases before it must finish ``reserve_s`` before the deadline
    (released when it cannot run here). A running phase reads its own deadline in ``ctx["phase_deadline"]``
    and may raise ``PhaseSkipped(reason)`` (e.g. too little free memory)."""

    name: str
    run: Callable[[dict], dict]
    needs: tuple[str, ...] = ()
    estimate_s: Callable[[dict], float] = lambda ctx: 0.0
    supported: Callable[[dict], str | None] = lambda ctx: None
    reserve_s: float = 0.0


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
                 f"lora.rank={plan.rank}", f"lora.alpha={plan.rank}", f"cache.dir={work / 'cache' / preset}",
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


# --------------------------------------------------------------------------- video phases

# Seconds of the default budget held for each video phase (the phases before it must leave them) and
# the shortest time one can run in (its build + the preview). Guesses until a GPU run measures them.
VIDEO_RESERVE_S = {"video:talking-head": 60.0, "video:motion": 75.0}
VIDEO_MIN_S = {"video:talking-head": 30.0, "video:motion": 40.0}
# working memory beside the weights (activations, the VAE decode of the full clip): a guess, not measured
VIDEO_WORKING_GIB = {"video:talking-head": 12.0, "video:motion": 24.0}


class PhaseSkipped(Exception):
    """Raised by a phase that finds, once running, that this device cannot run it (e.g. too little free memory)."""


@dataclass
class _CentredFace:
    bbox: tuple[float, float, float, float]
    landmarks: Any


class _CentredFaceFinder:
    """A fixed face box in the middle of every frame: the driving clip is synthetic (no face to detect), and
    face detection is not what this check times. Same ``analyze`` answer shape as ``FaceEmbedder``."""

    def analyze(self, frames) -> list:
        import numpy as np

        out = []
        for f in frames:
            h, w = f.shape[:2]
            s = min(h, w) / 3
            x0, y0 = (w - s) / 2, (h - s) / 3
            lm = np.array([[x0 + .3 * s, y0 + .4 * s], [x0 + .7 * s, y0 + .4 * s], [x0 + .5 * s, y0 + .6 * s],
                           [x0 + .35 * s, y0 + .8 * s], [x0 + .65 * s, y0 + .8 * s]], np.float32)
            out.append([_CentredFace((x0, y0, x0 + s, y0 + s), lm)])
        return out


def _video_settings(plan: Plan, kind: str) -> list[tuple[str, Any, float]]:
    """``(label, settings, clip seconds)``: the library's preview and full settings (short clips on a GPU;
    tiny sizes with ``--dry-run``)."""
    from persona_ml.video.motion import MotionSettings
    from persona_ml.video.talking_head import TalkingHeadSettings

    if kind == "talking_head":
        if plan.dry_run:
            return [("preview", TalkingHeadSettings(height=64, width=64, fps=12.0, max_frames=9, sigmas=(1.0, 0.5),
                                                    max_sequence_length=32), 0.7),
                    ("full", TalkingHeadSettings(height=96, width=96, fps=24.0, max_frames=17,
                                                 sigmas=(1.0, 0.7, 0.4), max_sequence_length=32), 0.7)]
        # preview: 256 px, 12 fps, 25 frames; full: 512 px, 24 fps, LTX-2's 8-step distilled schedule, 4 s of speech
        return [("preview", TalkingHeadSettings.preview(), 2.0), ("full", TalkingHeadSettings(max_frames=97), 4.0)]
    if plan.dry_run:
        # the tiny motion encoder still reads 512 x 512 face crops every step (the real switch): few frames
        return [("preview", MotionSettings(height=32, width=32, num_steps=2, segment_frame_length=5, max_frames=5,
                                           max_sequence_length=16), 5 / 24),
                ("full", MotionSettings(height=64, width=64, num_steps=2, segment_frame_length=5, max_frames=5,
                                        max_sequence_length=16), 5 / 24)]
    # preview: 320 x 576, 33 frames, 8 steps; full: 720 x 1280, a 17-frame clip, 6 of the default 20 steps
    # (steps are sequential identical work: the report also gives the figure at 20 steps, linear in steps)
    return [("preview", MotionSettings.preview(), 33 / 24),
            ("full", MotionSettings(max_frames=17, num_steps=6), 17 / 24)]


def _video_tokens(kind: str, settings: Any, frames: int) -> int:
    """Latent tokens the transformer attends over (LTX-2: 32x spatial, 8x temporal, patch 1; Wan: 8x, 4x,
    patch 2x2, plus the reference frame)."""
    if kind == "talking_head":
        return ((frames - 1) // 8 + 1) * (settings.height // 32) * (settings.width // 32)
    return ((frames - 1) // 4 + 2) * (settings.height // 16) * (settings.width // 16)


def _video_supported(name: str) -> Callable[[dict], str | None]:
    def check(ctx: dict) -> str | None:
        import importlib.util

        try:
            import diffusers

            pipeline = "LTX2DFRPipeline" if name == "video:talking-head" else "WanAnimatePipeline"
            if not hasattr(diffusers, pipeline):
                return f"diffusers {diffusers.__version__} has no {pipeline}"
            for mod, extra in (("av", "video"), ("ftfy", "video"), ("onnxruntime", "core")):
                if importlib.util.find_spec(mod) is None:
                    return f"{mod} is not installed (the {extra} extra: pip install 'persona-ml[video]')"
            if not _is_cuda(ctx):
                return None
            need = _video_need_bytes(ctx, name)
            total = ctx["report"].get("device_total_mem_gib", 0.0) * 2**30
            if total < need:
                return (f"needs about {need / 2**30:.0f} GiB (weights {ctx['video_weights'][name] / 2**30:.0f} GiB + "
                        f"{VIDEO_WORKING_GIB[name]:.0f} GiB working memory); the device has {total / 2**30:.0f} GiB")
            return None
        except Exception as exc:  # noqa: BLE001 - a probe that fails is a reason to skip, not a crash
            return f"cannot probe: {type(exc).__name__}: {exc}"
    return check


def _video_need_bytes(ctx: dict, name: str) -> float:
    from persona_ml.video import real_size

    weights = ctx.setdefault("video_weights", {})
    counts = real_size.LTX2_DFR_PARAMS if name == "video:talking-head" else real_size.WAN_ANIMATE_PARAMS
    weights[name] = 2 * sum(counts.values())   # bf16
    return weights[name] + VIDEO_WORKING_GIB[name] * 2**30


def _video_inputs(ctx: dict, kind: str, settings: Any, seconds: float, out: Path):
    """A synthetic portrait, and the speech (a tone with syllable-rate loudness) or the driving clip (an mp4)."""
    import numpy as np

    yy, xx = np.mgrid[0:320, 0:256]
    portrait = np.stack([xx % 256, yy * 3 // 4 % 256, (xx + yy) // 2 % 256], axis=-1).astype(np.uint8)
    if kind == "talking_head":
        from persona_ml.video.speech import Speech

        t = np.arange(int(seconds * 16000)) / 16000
        wave = 0.4 * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) * np.sin(2 * np.pi * 220 * t)
        return portrait, Speech.from_array(wave.astype(np.float32), 16000, source="gpu_check tone")
    from persona_ml.video.io import write_video

    n = int(round(seconds * 24))
    h, w = settings.height, settings.width
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.stack([np.stack([(xx + 4 * i) % 256, yy % 256, np.full_like(xx, 128)], axis=-1) for i in range(n)])
    return portrait, write_video(out / "driving.mp4", frames.astype(np.uint8), 24.0)


def _video_run(ctx: dict, kind: str, backend: Any, label: str, settings: Any, seconds: float,
               stop_at: float = float("inf")) -> dict:
    """One job of the library (``TalkingHeadJob`` / ``MotionTransferJob``) with per-step timestamps; past
    ``stop_at`` the job is cancelled at the next step (its own cooperative cancel) and says so."""
    from persona_ml.video.jobs import MotionTransferJob, TalkingHeadJob

    out = Path(ctx["workdir"]) / "video" / kind / label
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    portrait, media = _video_inputs(ctx, kind, settings, seconds, out)
    stamps: list[float] = []
    job_cls = TalkingHeadJob if kind == "talking_head" else MotionTransferJob
    job: Any = None

    def on_event(e) -> None:
        if e.kind == "step" or (e.kind == "status" and e.status.value == "running"):
            _sync(ctx)
            stamps.append(time.perf_counter())
            if e.kind == "step" and stamps[-1] > stop_at:
                job.cancel()

    job = job_cls(backend, portrait, media, out / "job", settings=settings, on_event=on_event)
    if _is_cuda(ctx):
        _free(ctx)   # the previous run's activations: the peak below is this run's
    _reset_peak(ctx)
    t0 = time.perf_counter()
    result = job.run()
    _sync(ctx)
    job_s = time.perf_counter() - t0
    steps = [b - a for a, b in zip(stamps[1:], stamps[2:])]   # step k -> k+1; the first also encodes the inputs
    done = result.status.value == "completed"
    video_s = result.num_frames / result.fps if done else None
    record = {"label": label, "status": result.status.value, "height": settings.height, "width": settings.width,
              "fps": result.fps, "frames": result.num_frames, "video_s": video_s, "steps": result.steps_done,
              "total_steps": result.total_steps, "steps_timed": len(steps),
              "video_tokens": _video_tokens(kind, settings, _frames_of(kind, settings, seconds)),
              "s_per_step": sum(steps) / len(steps) if steps else None,
              "first_step_s": stamps[1] - stamps[0] if len(stamps) > 1 else None, "job_s": job_s,
              "s_per_video_s": job_s / video_s if video_s else None, "timings": dict(result.timings),
              "peak_bytes": _peak(ctx)}
    if not done:
        record["reason"] = f"cancelled at the time budget after {result.steps_done} of {result.total_steps} steps"
    default = getattr(type(settings)(), "num_steps", None)
    if done and default and record["s_per_step"] and default != result.total_steps:
        projected = job_s + (default - result.total_steps) * record["s_per_step"]   # linear: same work per step
        record.update({"default_steps": default, f"s_per_video_s_at_{default}_steps": projected / video_s})
    return record


def video_phase(ctx: dict, name: str) -> dict:
    """Build the pipeline (tiny with ``--dry-run``, else the real sizes with random bf16 weights on the GPU), then
    the library's job at the preview and the full setting; s per s of video, s per step, peak memory."""
    import torch

    from persona_ml.video import real_size, testing
    from persona_ml.video.motion import PoseRunner, WanAnimateMotionTransfer
    from persona_ml.video.talking_head import LTX2DFRTalkingHead

    plan: Plan = ctx["plan"]
    kind = "talking_head" if name == "video:talking-head" else "motion"
    _free(ctx)
    if _is_cuda(ctx):
        free = torch.cuda.mem_get_info()[0]
        need = _video_need_bytes(ctx, name)
        if free < need:
            raise PhaseSkipped(f"{free / 2**30:.0f} GiB free on the device, about {need / 2**30:.0f} GiB needed")
    _reset_peak(ctx)
    t0 = time.perf_counter()
    if kind == "talking_head":
        pipe = (testing.build_tiny_ltx2_dfr_pipeline(seed=0) if plan.dry_run
                else real_size.build_ltx2_dfr_pipeline_real_size(plan.device))
        backend: Any = LTX2DFRTalkingHead(pipe, "tiny-ltx2" if plan.dry_run else "ltx-2.5 (random weights)")
    else:
        pipe = (testing.build_tiny_wan_animate_pipeline(seed=0) if plan.dry_run
                else real_size.build_wan_animate_pipeline_real_size(plan.device))
        pose = PoseRunner(testing.write_tiny_pose_onnx(Path(ctx["workdir"]) / "video" / "pose.onnx"))
        backend = WanAnimateMotionTransfer(pipe, pose, _CentredFaceFinder(),
                                           "tiny-wan-animate" if plan.dry_run else "wan2.2-animate (random weights)")
    _sync(ctx)
    build_s = time.perf_counter() - t0
    params = {k: int(sum(p.numel() for p in v.parameters())) for k, v in pipe.components.items()
              if hasattr(v, "parameters")}
    record: dict[str, Any] = {"model": backend.name, "build_s": build_s, "build_peak_bytes": _peak(ctx),
                              "params_billion": {k: v / 1e9 for k, v in params.items()}, "runs": []}
    if kind == "talking_head" and not plan.dry_run:
        record["text_encoder"] = "Gemma-3-12B stand-in (LTX-2.5's Gemma-4 encoder has no single published size)"
    if kind == "motion":
        record["not_timed"] = "pose model (a tiny ONNX with ViTPose's signature) and face detection (a fixed box)"
    # cancel a run's denoising in time for its decode and mp4 to finish inside the budget
    stop_at = ctx.get("phase_deadline", float("inf")) - (0.0 if plan.dry_run else 10.0)
    previous: dict | None = None
    try:
        for i, (label, settings, seconds) in enumerate(_video_settings(plan, kind)):
            if i and previous is None:
                record["runs"].append({"label": label, "status": "skipped", "reason": "the preview did not complete"})
                continue
            if previous is not None and previous["s_per_step"]:   # the full run's steps, scaled by tokens
                tokens = _video_tokens(kind, settings, _frames_of(kind, settings, seconds))
                guess = _steps_of(settings) * previous["s_per_step"] * tokens / max(1, previous["video_tokens"])
                if time.perf_counter() + guess > stop_at:
                    record["runs"].append({"label": label, "status": "skipped",
                                           "reason": f"its steps alone would take about {guess:.0f}s: past the budget"})
                    continue
            try:
                run = _video_run(ctx, kind, backend, label, settings, seconds, stop_at)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory at the full setting: keep the preview
                run = {"label": label, "status": "failed", "reason": f"{type(exc).__name__}: {str(exc)[:500]}"}
                _free(ctx)
            record["runs"].append(run)
            previous = run if run["status"] == "completed" else None
    finally:
        del backend, pipe
        _free(ctx)
    return record


def _frames_of(kind: str, settings: Any, seconds: float) -> int:
    """The frames the backend will render for a clip of ``seconds`` (its own grid rules)."""
    if kind == "talking_head":
        from persona_ml.video.talking_head import frames_for

        return frames_for(seconds, settings.fps, 8, settings.max_frames)
    n = min(int(round(seconds * 24)), settings.max_frames)
    return ((n - 1) // 4) * 4 + 1


def _steps_of(settings: Any) -> int:
    sigmas = getattr(settings, "sigmas", None)
    return getattr(settings, "num_steps", None) or (len(sigmas) if sigmas else 8)


def _video_line(name: str, r: dict) -> str:
    parts = []
    for run in r["runs"]:
        if run["status"] != "completed":
            parts.append(f"{run['label']} {run['status']} ({run['reason']})")
            continue
        extra = next((f", {v:.1f} at {run['default_steps']} steps" for k, v in run.items()
                      if k.startswith("s_per_video_s_at_")), "")
        parts.append(f"{run['label']} {run['width']}x{run['height']} {run['frames']} frames: "
                     f"{_fmt(run['s_per_video_s'], '.1f')} s per s of video{extra}, {_fmt(run['s_per_step'])} s/step, "
                     f"peak {_gib(run['peak_bytes'])}")
    total = sum(r["params_billion"].values())
    return f"{name} ({r['model']}, {total:.1f}B params, built in {r['build_s']:.1f}s): " + "; ".join(parts)


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
    """folder -> one training job per preset -> eager generation -> compiled generation -> talking head ->
    motion transfer (the video phases hold ``VIDEO_RESERVE_S`` of the budget)."""
    phases = [Phase("folder", lambda ctx: _folder(ctx))]
    for preset in plan.presets:
        phases.append(Phase(f"train:{preset}", (lambda p: lambda ctx: train_preset(ctx, p))(preset), needs=("folder",),
                            estimate_s=_train_estimate, supported=_preset_supported(preset)))
    phases.append(Phase("generate", generate, needs=("folder",), estimate_s=lambda ctx: ctx.get("gen_estimate_s", 0.0)))
    phases.append(Phase("generate:compiled", generate_compiled, needs=("folder",),
                        estimate_s=lambda ctx: 3 * ctx.get("gen_estimate_s", 0.0)))
    for name in ("video:talking-head", "video:motion"):
        phases.append(Phase(name, (lambda n: lambda ctx: video_phase(ctx, n))(name), supported=_video_supported(name),
                            estimate_s=(lambda n: lambda ctx: 0.0 if ctx["plan"].dry_run else VIDEO_MIN_S[n])(name),
                            reserve_s=0.0 if plan.dry_run else VIDEO_RESERVE_S[name]))
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
    if name.startswith("video:"):
        return _video_line(name, r)
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
    if name.startswith("video:") and "runs" in r:
        return bool(r["runs"]) and all(run.get("status") == "completed" for run in r["runs"])
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
    todo = list(phases if phases is not None else (PHASES or default_phases(plan)))
    # a phase holding a share of the budget is asked up front: a share it cannot use here is released
    support = {p.name: p.supported(ctx) for p in todo if p.reserve_s > 0}
    for i, phase in enumerate(todo):
        held = sum(p.reserve_s for p in todo[i + 1:] if p.reserve_s > 0 and not support[p.name])
        ctx["phase_deadline"] = deadline - held
        missing = [n for n in phase.needs if n not in done]
        why = support[phase.name] if phase.name in support else phase.supported(ctx)
        if missing:
            report["skipped"].append({"phase": phase.name, "reason": f"needs {missing}", "kind": "dependency"})
            log(f"{phase.name} skipped: needs {missing}")
            continue
        if why:
            report["skipped"].append({"phase": phase.name, "reason": why, "kind": "unsupported"})
            log(f"{phase.name} skipped: {why}")
            continue
        if time.perf_counter() + phase.estimate_s(ctx) > ctx["phase_deadline"]:
            reason = f"time budget {budget_s:.0f}s" + (f", {held:.0f}s of it held for later phases" if held else "")
            report["skipped"].append({"phase": phase.name, "reason": reason, "kind": "budget"})
            log(f"{phase.name} skipped: the time budget would be exceeded ({reason})")
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
        except PhaseSkipped as exc:
            report["skipped"].append({"phase": phase.name, "reason": str(exc), "kind": "unsupported"})
            log(f"{phase.name} skipped: {exc}")
            _free(ctx)
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
