"""``persona-ml`` command line: a thin dispatcher over its subcommand modules (``persona_ml.cli.faces``, ...).

Exit status: 0 success, 2 bad input or usage, 3 request violates the LoRA rules, 1 internal error
(including a ``BackendError``: a library or backend failed on valid input).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_RULES = 3

# Each module exposes ``register(subparsers)``; parsers set ``func(args) -> int``.
COMMAND_MODULES = ("faces", "rules", "dataset", "generate", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persona-ml", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"persona_ml.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"persona_ml.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if args.verbose < 2:  # transformers' notices about optional processors are noise in a CLI
        import os

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    from ..errors import BackendError, PersonaMLError

    try:
        return int(args.func(args))
    except PersonaMLError as exc:
        import json

        print(json.dumps({"error": exc.to_dict()}), file=sys.stderr)
        return EXIT_INTERNAL if isinstance(exc, BackendError) else EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `persona-ml ... | head`: the reader left; not an error of ours
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
