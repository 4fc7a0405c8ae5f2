"""``persona-ml check``: check a LoRA training request against the platform's rules.

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
                   help="a folder of training images (its images are counted) or a number")
    p.add_argument("--steps", type=ascii_int, default=None, help="training steps (default from the rules)")
    p.add_argument("--rank", type=ascii_int, default=None, help="LoRA rank (default from the rules)")
    p.add_argument("--base-model", default=None, help="base model or alias, e.g. flux-dev, fal-ai/flux-lora")
    p.add_argument("--credits", type=ascii_int, default=None, help="the account's credit balance (optional)")
    p.add_argument("--rules", default=None, metavar="YAML", help="rules file (default configs/lora_rules.yaml)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def count_images(spec: str) -> tuple[int, str]:
    """``"12"`` -> 12; a folder -> how many image files it holds. Returns ``(count, source)``.

    Raises:
        InputError: neither a non-negative integer nor an existing folder.
    """
    from pathlib import Path

    from ..errors import InputError
    from ..images import list_images

    number = parse_ascii_int(spec)  # ASCII only: "²".isdigit() is True and int("²") raises
    if number is not None and number >= 0 and spec.strip()[:1] != "+":
        return number, "number"
    path = Path(spec)
    try:
        is_dir = bool(spec) and path.is_dir()
    except (OSError, ValueError):  # a name over the filesystem's limit, a NUL
        is_dir = False
    if is_dir:
        return len(list_images(path)), str(path)
    raise InputError(f"--images must be a folder or a non-negative number, got {spec!r}",
                     field="images", value=spec)


def run(args: argparse.Namespace) -> int:
    from ..cli import EXIT_OK, EXIT_RULES
    from ..rules import LoraRequest, check_lora_request, load_rules

    rules = load_rules(args.rules) if args.rules else load_rules()
    n, source = count_images(args.images)
    request = LoraRequest(plan=args.plan, num_images=n, training_steps=args.steps, lora_rank=args.rank,
                          base_model=args.base_model, credits=args.credits)
    result = check_lora_request(request, rules)
    if args.json:
        out = result.to_dict()
        out["images_source"] = source
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(result.summary(), file=sys.stdout)
    return EXIT_OK if result.ok else EXIT_RULES
