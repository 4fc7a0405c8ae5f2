"""``persona-ml check``: check a LoRA training request against the platform's rules.

``--images`` counts distinct accepted photos, the count the trainer will see: a prepared dataset
(or its ``images/`` folder) is read, a raw folder is screened like ``prepare`` would.

Exit status: 0 acceptable, 3 violates the rules, 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import json
import sys

from ._args import ascii_int, parse_ascii_int


def register(sub) -> None:
    p = sub.add_parser("check", help="check a LoRA training request against the rules (no GPU work)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--plan", required=True, help="the account's plan (pro, agency, free, ...)")
    p.add_argument("--images", required=True, metavar="DIR|N",
                   help="a number, a prepared dataset (its own count of distinct photos is read) or a folder of raw "
                        "photos (screened as `prepare` would: the count is the photos it would train on)")
    p.add_argument("--profile", default=None, metavar="PROFILE",
                   help="the character's face profile, for screening a raw folder (without it the set's own faces "
                        "are clustered)")
    p.add_argument("--backend", default="dlib", choices=("dlib", "insightface"), help="face backend for screening")
    p.add_argument("--model-dir", default=None, help="model folder (insightface pack)")
    p.add_argument("--steps", type=ascii_int, default=None, help="training steps (default from the rules)")
    p.add_argument("--rank", type=ascii_int, default=None, help="LoRA rank (default from the rules)")
    p.add_argument("--base-model", default=None, help="base model or alias, e.g. flux-dev, fal-ai/flux-lora")
    p.add_argument("--credits", type=ascii_int, default=None, help="the account's credit balance (optional)")
    p.add_argument("--rules", default=None, metavar="YAML", help="rules file (default configs/lora_rules.yaml)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def count_images(spec: str, args: argparse.Namespace | None = None) -> tuple[int, str, dict | None]:
    """``"12"`` -> 12; a folder -> its training images counted as training will (distinct
    accepted photos, ``persona_ml.dataset.count_training_images``). Returns ``(count, source, detail)``.

    Raises:
        InputError: neither a non-negative integer nor an existing folder.
    """
    from pathlib import Path

    from ..errors import InputError

    number = parse_ascii_int(spec)  # ASCII only: "²".isdigit() is True and int("²") raises
    if number is not None and number >= 0 and spec.strip()[:1] != "+":
        return number, "number", None
    path = Path(spec)
    from .._files import is_dir_quiet

    if not (bool(spec) and is_dir_quiet(path)):  # a name over the filesystem's limit or a NUL is not a folder
        raise InputError(f"--images must be a folder or a non-negative number, got {spec!r}",
                         field="images", value=spec)
    from ..dataset.count import count_training_images, prepared_root

    embedder = profile = None
    if prepared_root(path) is None:
        from ..faces.embedder import FaceEmbedder

        if args is not None and args.profile:
            from ..faces.api import load_profile

            profile = load_profile(args.profile)
        embedder = FaceEmbedder(getattr(args, "backend", "dlib"), model_dir=getattr(args, "model_dir", None))
    counted = count_training_images(path, profile=profile, embedder=embedder)
    return counted.count, counted.source, counted.to_dict()


def run(args: argparse.Namespace) -> int:
    from ..cli import EXIT_OK, EXIT_RULES
    from ..rules import LoraRequest, check_lora_request, load_rules

    rules = load_rules(args.rules) if args.rules else load_rules()
    n, source, detail = count_images(args.images, args)
    request = LoraRequest(plan=args.plan, num_images=n, training_steps=args.steps, lora_rank=args.rank,
                          base_model=args.base_model, credits=args.credits)
    result = check_lora_request(request, rules)
    if args.json:
        out = result.to_dict()
        out["images_source"] = source
        out["images_count"] = detail
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        if detail is not None:
            left = ", ".join(f"{k} {v}" for k, v in detail["left_out"].items())
            how = ("read from the prepared dataset" if source == "prepared"
                   else f"screened: {detail['count']} of {detail['files']} photos would be trained on"
                        + (f" (left out: {left})" if left else ""))
            print(f"training images in {detail['path']}: {n} ({how})")
        print(result.summary(), file=sys.stdout)
    return EXIT_OK if result.ok else EXIT_RULES
