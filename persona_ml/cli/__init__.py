"""``persona-ml`` command line: a thin dispatcher over its subcommand modules (``persona_ml.cli.faces``, ...).

Exit status: 0 success, 2 bad input or usage, 3 request violates the LoRA rules, 4 a face profile
was saved but has outlier references (``profile``), 1 internal error, 130 interrupted. Every failure
prints one JSON line ``{"error": {"code", "message", "details"}}`` on stderr: a ``PersonaMLError``'s
own code (exit 2 for the caller's input, 1 for faults of ours or of a backend, such as
``storage_full``), or ``internal_error`` for anything else (a bug: ``-vv`` logs the traceback).
A traceback is never the answer.
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
EXIT_OUTLIERS = 4

# Each module exposes ``register(subparsers)``; parsers set ``func(args) -> int``.
COMMAND_MODULES = ("faces", "rules", "dataset", "generate", "evaluate", "video", "voice")


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
    import json

    from ..errors import PersonaMLError

    try:
        return int(args.func(args))
    except PersonaMLError as exc:
        print(json.dumps({"error": exc.to_dict()}), file=sys.stderr)
        return EXIT_INTERNAL if exc.http_status >= 500 else EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `persona-ml ... | head`: the reader left; not an error of ours
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # the CLI's contract: a coded line, never a traceback (-vv logs it)
        logging.getLogger(__name__).debug("internal error", exc_info=True)
        err = _internal_error(exc, args.command)
        print(json.dumps({"error": err.to_dict()}), file=sys.stderr)
        return EXIT_INTERNAL


def _internal_error(exc: BaseException, command: str):
    from ..errors import PersonaMLError

    return PersonaMLError(f"persona-ml {command} failed inside persona_ml or a library it uses: "
                          f"{type(exc).__name__}: {exc} (a bug, not your input; rerun with -vv for the traceback)",
                          code="internal_error", exception=type(exc).__name__)


if __name__ == "__main__":
    sys.exit(main())
