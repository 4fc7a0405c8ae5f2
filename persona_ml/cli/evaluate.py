"""``persona-ml eval``: identity report of a LoRA (prompt suite, contact sheet, plots, report.json)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._args import ascii_int, finite_float, output_folder, parse_ascii_int, positive_int


def register(sub) -> None:
    p = sub.add_parser("eval", help="identity report of a LoRA over a fixed prompt suite",
                       description="Generate the prompt suite (portrait, half body, low light, golden hour, group) "
                                   "with the LoRA, score identity against the profile, write report.json, "
                                   "contact_sheet.png and plots to --out; print the summary as JSON.")
    p.add_argument("--base-model", default="tiny-flux")
    p.add_argument("--base-path", default=None)
    p.add_argument("--lora", required=True, help="LoRA file or export folder")
    p.add_argument("--profile", default=None, help="character FaceProfile (without it nothing is scored)")
    p.add_argument("--face-backend", default="dlib", choices=("dlib", "insightface"))
    p.add_argument("--face-model-dir", default=None)
    p.add_argument("--trigger", default=None)
    p.add_argument("--seeds", type=ascii_int, nargs="+", default=[0, 1])
    p.add_argument("--height", type=positive_int, default=1024)
    p.add_argument("--width", type=positive_int, default=1024)
    p.add_argument("--steps", type=positive_int, default=28)
    p.add_argument("--guidance", type=finite_float, default=3.5)
    p.add_argument("--max-sequence-length", type=positive_int, default=512)
    p.add_argument("--checkpoint", action="append", default=[], metavar="STEP=PATH",
                   help="a checkpoint LoRA to score (repeatable)")
    p.add_argument("--losses", default=None, help="JSON file with a list of per-step losses")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--allow-unverified", action="store_true")
    p.add_argument("--out", required=True, type=output_folder, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..eval.report import evaluate_lora
    from ..models import load_base_model

    checkpoints = []
    for item in args.checkpoint:
        step, sep, path = item.partition("=")
        number = parse_ascii_int(step)  # "²".isdigit() is True and int("²") raises
        if not sep or number is None or number < 0 or not path:
            raise InputError(f"--checkpoint takes STEP=PATH (STEP in ASCII digits), got {item!r}", field="checkpoint",
                             value=item)
        checkpoints.append((number, path))
    losses = _read_losses(args.losses) if args.losses else []
    profile = embedder = None
    if args.profile:
        from ..faces.embedder import FaceEmbedder
        from ..faces.profile import FaceProfile

        profile = FaceProfile.load(args.profile)
        embedder = FaceEmbedder(args.face_backend, model_dir=args.face_model_dir)
    lora = Path(args.lora)
    if lora.is_dir():
        lora = lora / "pytorch_lora_weights.safetensors"
    base = load_base_model(args.base_model, dtype=args.dtype, device=args.device, path=args.base_path)
    report = evaluate_lora(lora, base=base, out_dir=args.out, profile=profile, embedder=embedder,
                           trigger=args.trigger, seeds=args.seeds, height=args.height, width=args.width,
                           steps=args.steps, guidance=args.guidance, max_sequence_length=args.max_sequence_length,
                           checkpoints=checkpoints, losses=losses, require_base_fingerprint=not args.allow_unverified)
    print(json.dumps({"summary": report.summary(), "files": report.files}))
    return 0


def _read_losses(path: str) -> list[float]:
    """The ``--losses`` JSON list; a missing, unreadable or malformed file is a coded error, not a traceback."""
    import math

    from .._files import FileProblem, read_regular_file
    from .._parse import ParseProblem, loads_json
    from ..errors import InputError

    try:
        data = loads_json(read_regular_file(path, max_bytes=64 << 20), what=f"--losses {path}")
    except (FileProblem, ParseProblem) as exc:
        raise InputError(f"--losses {path} is not a readable JSON file: {exc}", field="losses", value=path) from None
    if not isinstance(data, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in data):
        raise InputError(f"--losses {path} must hold a JSON list of finite numbers", field="losses", value=path)
    return [float(v) for v in data]
