#!/usr/bin/env python
"""Train a character LoRA on Flux.

    python scripts/train_lora.py --config tiny-cpu --images prepared/ --output runs/alice
    python scripts/train_lora.py --config persona-flux-dev --images photos/ --trigger ohwx \\
        --profile alice.profile --output runs/alice --set optimizer.lr=8e-5
    accelerate launch --num_processes 2 scripts/train_lora.py --config persona-flux-dev ...

--images is a prepared dataset folder (dataset.json + manifest.jsonl) or a folder of raw photos,
which is screened and prepared first (needs --trigger). --resume continues from the newest
checkpoint in --output. SIGTERM or Ctrl-C writes a checkpoint and exits 130 (cancelled); a second
Ctrl-C stops at once; rerun with --resume. Progress is shown for loading, encoding and caching as
well as for the steps. Exit codes: 0 completed, 2 bad input / rules / config, 1 training failure,
130 cancelled.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="preset name (configs/train/<name>.yaml) or a YAML path")
    parser.add_argument("--images", required=True, help="prepared dataset folder or a folder of photos")
    parser.add_argument("--output", required=True, help="run folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set optimizer.lr=5e-5 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    parser.add_argument("--profile", help="the character's FaceProfile file (identity scores of samples)")
    parser.add_argument("--trigger", help="trigger word (default: the prepared dataset's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from tqdm import tqdm

    from persona_ml.errors import ConfigError, InputError, LoraRuleError, PersonaMLError
    from persona_ml.training import JobStatus, TrainingJob

    bar = None
    phase_bar = None

    def on_event(event) -> None:
        nonlocal bar, phase_bar
        if args.quiet:
            return
        if event.kind == "progress":
            if phase_bar is not None and phase_bar.desc != event.phase:
                phase_bar.close()
                phase_bar = None
            if event.count > 1 or event.current:
                if phase_bar is None:
                    phase_bar = tqdm(total=event.count, desc=event.phase, unit="item", dynamic_ncols=True, leave=False)
                phase_bar.update(event.current - phase_bar.n)
            else:
                tqdm.write(f"{event.phase}: {event.message}")
            return
        if phase_bar is not None:
            phase_bar.close()
            phase_bar = None
        if event.kind == "status" and event.status is JobStatus.TRAINING and bar is None:
            bar = tqdm(total=event.total_steps, initial=event.step, unit="step", dynamic_ncols=True)
        elif event.kind == "step" and bar is not None:
            bar.update(event.step - bar.n)
            bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.lr:.2e}")
        elif event.kind == "samples" and bar is not None:
            note = f"samples @ {event.step}: {len(event.sample_paths)} images"
            if event.identity is not None:
                sim = event.identity.similarity
                note += f", faces {event.identity.detection_rate:.0%}, similarity " + ("-" if sim is None else f"{sim:.3f}")
            bar.write(note)
        elif event.kind == "checkpoint" and bar is not None:
            bar.write(f"checkpoint: {event.checkpoint}")

    try:
        job = TrainingJob(args.config, args.images, args.output, trigger=args.trigger, profile=args.profile,
                          resume=args.resume, on_event=on_event, overrides=args.overrides)
        job.install_signal_handlers()
        try:
            result = job.run()
        finally:
            job.restore_signal_handlers()
    except (ConfigError, InputError, LoraRuleError) as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        for v in getattr(exc, "violations", []):
            print(f"  - [{v.code}] {v.message}", file=sys.stderr)
        return 2
    except PersonaMLError as exc:
        print(f"training failed [{exc.code}]: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the newest checkpoint is kept; rerun with --resume", file=sys.stderr)
        return 130
    finally:
        for b in (phase_bar, bar):
            if b is not None:
                b.close()
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(result.summary())
    return 130 if result.status is JobStatus.CANCELLED else 0


if __name__ == "__main__":
    sys.exit(main())
