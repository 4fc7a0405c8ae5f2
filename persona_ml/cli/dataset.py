"""``persona-ml prepare``: screen a folder of photos against a face profile and prepare the
accepted ones for LoRA training.

Exit status: 0 when the prepared set satisfies the LoRA rules, 3 when it does not, 2 for bad
input or usage.
"""

from __future__ import annotations

import argparse
import json

from ._args import ascii_int, finite_float, output_name


def register(sub) -> None:
    p = sub.add_parser("prepare", help="screen photos and write a prepared training dataset",
                       description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("folder", metavar="DIR", help="folder of candidate training photos")
    p.add_argument("--profile", required=True, metavar="PROFILE",
                   help="the character's face profile (what `persona-ml profile --out` wrote)")
    p.add_argument("--out", required=True, metavar="OUT", type=output_name, help="prepared dataset folder (replaced atomically)")
    p.add_argument("--trigger", required=True, metavar="TOKEN", help="trigger word every caption starts with")
    p.add_argument("--backend", default="dlib", choices=("dlib", "insightface"),
                   help="face backend; must be the one the profile was built with (default dlib)")
    p.add_argument("--model-dir", default=None, help="model folder (insightface pack)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--allow-near-duplicates", action="store_true",
                   help="keep near-duplicate photos (still flagged in the report)")
    p.add_argument("--config", default=None, metavar="YAML",
                   help="screening/prepare settings (sections `screening:` and `prepare:`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. prepare.max_upscale=1.5 (repeatable)")
    p.add_argument("--seed", type=ascii_int, default=0, help="seed of the crop jitter (default 0)")
    p.add_argument("--max-upscale", type=finite_float, default=None, help="most a crop may be enlarged (default 1.25)")
    p.add_argument("--caption-dropout", type=finite_float, default=None, help="recorded for the trainer (default 0.05)")
    p.add_argument("--plan", default=None, help="also check the full LoRA rules for this plan")
    p.add_argument("--steps", type=ascii_int, default=None, help="training steps to check (with --plan)")
    p.add_argument("--rank", type=ascii_int, default=None, help="LoRA rank to check (with --plan)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..cli import EXIT_OK, EXIT_RULES
    from ..dataset.prepare import check_out_dir, check_trigger, prepare_dataset
    from ..dataset.screening import screen_dataset
    from ..dataset.settings import load_dataset_config
    from ..errors import InputError
    from ..faces.api import load_profile
    from ..faces.embedder import FaceEmbedder
    from ..rules import LoraRequest

    folder = Path(args.folder)
    try:
        is_dir = folder.is_dir()
    except OSError as exc:  # a name over the filesystem's limit
        raise InputError(f"{folder}: {exc.strerror or exc}", code="path_invalid", field="folder",
                         value=str(folder)) from None
    if not is_dir:
        raise InputError(f"not a folder: {folder}", field="folder", value=str(folder))
    if args.plan is None and (args.steps is not None or args.rank is not None):
        raise InputError("--steps and --rank need --plan", field="plan", value=None)
    check_trigger(args.trigger)  # before any face work
    check_out_dir(Path(args.out))
    overrides = list(args.set)
    if args.allow_near_duplicates:
        overrides.append("screening.allow_near_duplicates=true")
    if args.max_upscale is not None:
        overrides.append(f"prepare.max_upscale={args.max_upscale}")
    if args.caption_dropout is not None:
        overrides.append(f"prepare.caption_dropout={args.caption_dropout}")
    settings = load_dataset_config(args.config, overrides)
    profile = load_profile(args.profile)
    embedder = FaceEmbedder(args.backend, model_dir=args.model_dir, device=args.device)
    request = None
    if args.plan is not None:
        request = LoraRequest(plan=args.plan, num_images=0, training_steps=args.steps, lora_rank=args.rank)
    report = screen_dataset(folder, profile, embedder, config=settings.screening, request=request)
    result = prepare_dataset(report, args.out, trigger=args.trigger, config=settings.prepare, seed=args.seed)
    ok = report.ok and result.ok
    if args.json:
        out = report.to_dict()
        prepared = result.to_dict()
        prepared.pop("items")
        out["prepared"] = prepared
        out["ok"] = ok
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(report.summary())
        print(f"prepared {result.info.num_items} training images from {result.info.num_source_images} photos "
              f"into {result.root}")
        for issue in result.issues:
            print(f"  left out {Path(issue.source).name} ({issue.kind or 'photo'}): [{issue.code}] {issue.message}")
        for v in result.rule_violations:
            print(f"  rules: [{v.code}] {v.message}")
    return EXIT_OK if ok else EXIT_RULES
