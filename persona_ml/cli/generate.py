"""``persona-ml generate``: images of one character from its LoRA (or a reference image), scored
against its face profile; one JSON line per image on stdout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._args import ascii_int, finite_float, output_folder, positive_int


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate images of a character (LoRA or reference-image tier)",
                       description="Load the base model once, validate the LoRA, generate one image per seed, "
                                   "score each against the profile, write PNGs and results.json to --out.")
    p.add_argument("--base-model", default="tiny-flux", help="base model name (configs/base_models.yaml)")
    p.add_argument("--base-path", default=None, help="explicit base model folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--lora", help="LoRA file (diffusers, kohya or ComfyUI safetensors) or export folder")
    src.add_argument("--reference", help="reference image (ip_adapter tier; needs --ip-adapter/--ip-encoder)")
    p.add_argument("--ip-adapter", default=None, help="Flux IP-Adapter .safetensors file")
    p.add_argument("--ip-encoder", default=None, help="CLIP vision encoder folder of the IP-Adapter")
    p.add_argument("--prompt", required=True, help="prompt; {trigger} is replaced by --trigger")
    p.add_argument("--trigger", default=None, help="trigger word (default: the LoRA's metadata)")
    p.add_argument("--seeds", type=ascii_int, nargs="+", default=[0], help="one seed per image")
    p.add_argument("--keep", type=positive_int, default=None, help="best-of-N: keep this many images")
    p.add_argument("--lora-scale", type=finite_float, default=1.0)
    p.add_argument("--height", type=positive_int, default=1024)
    p.add_argument("--width", type=positive_int, default=1024)
    p.add_argument("--steps", type=positive_int, default=28)
    p.add_argument("--guidance", type=finite_float, default=3.5)
    p.add_argument("--max-sequence-length", type=positive_int, default=512)
    p.add_argument("--profile", default=None, help="character FaceProfile (scores each image)")
    p.add_argument("--face-backend", default="dlib", choices=("dlib", "insightface"))
    p.add_argument("--face-model-dir", default=None)
    p.add_argument("--dtype", default="float32", help="float32, bf16 or fp16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--allow-unverified", action="store_true", help="accept LoRAs without a base fingerprint")
    p.add_argument("--out", required=True, type=output_folder, help="output folder")
    p.set_defaults(func=run)


def _lora_file(path: str) -> Path:
    p = Path(path)
    return p / "pytorch_lora_weights.safetensors" if p.is_dir() else p


def run(args: argparse.Namespace) -> int:
    from .._atomic import atomic_path, atomic_write_json
    from ..errors import InputError
    from ..inference.generator import CharacterGenerator, IPAdapterSpec
    from ..inference.types import Character, GenerationRequest
    from ..lora.validation import read_safetensors_metadata
    from ..models import load_base_model

    if bool(args.ip_adapter) != bool(args.ip_encoder):  # one without the other used to be dropped silently
        missing = "--ip-encoder" if args.ip_adapter else "--ip-adapter"
        raise InputError(f"--ip-adapter and --ip-encoder go together; {missing} is missing",
                         field=missing.lstrip("-").replace("-", "_"), value=None)
    out = Path(args.out)
    try:  # before the model load and generation, which a failed save would lose
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out} cannot be created: {exc.strerror or exc}", field="out",
                         value=str(out)) from None
    profile = embedder = None
    if args.profile:
        from ..faces.embedder import FaceEmbedder
        from ..faces.profile import FaceProfile

        profile = FaceProfile.load(args.profile)
        embedder = FaceEmbedder(args.face_backend, model_dir=args.face_model_dir)
    ip = IPAdapterSpec(args.ip_adapter, args.ip_encoder) if args.ip_adapter and args.ip_encoder else None
    base = load_base_model(args.base_model, dtype=args.dtype, device=args.device, path=args.base_path)
    gen = CharacterGenerator(base, face_embedder=embedder, ip_adapter=ip,
                             require_base_fingerprint=not args.allow_unverified)
    trigger = args.trigger
    lora = _lora_file(args.lora) if args.lora else None
    if lora is not None and trigger is None:
        trigger = read_safetensors_metadata(lora)[1].get("persona_ml.trigger")
    gen.register(Character("cli", lora_path=lora, profile=profile, reference_image=args.reference, trigger=trigger))
    result = gen.generate(GenerationRequest("cli", args.prompt, seeds=args.seeds, lora_scale=args.lora_scale,
                                            height=args.height, width=args.width, steps=args.steps,
                                            guidance=args.guidance, keep=args.keep,
                                            max_sequence_length=args.max_sequence_length))
    records = []
    for im in result.images:
        path = out / f"seed{im.seed}.png"
        with atomic_path(path, suffix=".png") as tmp:
            im.image.save(tmp, format="PNG")
        rec = {"path": str(path), "seed": im.seed, "tier": result.tier, "selected": im.index in result.selected,
               **im.identity.to_dict()}
        records.append(rec)
        print(json.dumps(rec))
    atomic_write_json(out / "results.json", {"character": "cli", "tier": result.tier, "lora_sha256": result.lora_sha256,
                                             "selected": list(result.selected), "images": records,
                                             "timings": result.timings})
    return 0
