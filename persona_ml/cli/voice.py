"""``persona-ml voice``: speaker embeddings, voice profiles, clone rules and speech generation.

Every subcommand prints JSON lines. Exit status: 0 success, 2 bad input (the other inputs are
still processed and reported), 3 the clone request violates the rules, 1 internal error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    from ._args import non_negative_int, positive_int

    voice = sub.add_parser("voice", help="voice embeddings, profiles, clone rules and speech generation",
                           description=__doc__.splitlines()[0])
    vsub = voice.add_subparsers(dest="voice_command", metavar="VOICE_COMMAND")

    p = vsub.add_parser("embed", help="speaker embedding of each audio file",
                        description="One JSON line per file: speech seconds, warnings, the within-clip speaker "
                                    "check and the model, or the intake error.")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (a folder adds its audio files)")
    p.add_argument("--with-embedding", action="store_true", help="include the embedding vector")
    p.set_defaults(func=run_embed)

    p = vsub.add_parser("profile", help="build and save a voice profile from a folder of samples",
                        description="Embed every audio file in DIR, build the profile, save PROFILE.safetensors + "
                                    "PROFILE.json; one JSON line per sample, then the profile.")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--out", required=True, metavar="PROFILE")
    p.set_defaults(func=run_profile)

    p = vsub.add_parser("check", help="check a voice-clone request (samples + settings) against the clone rules",
                        description="Measure the samples and check every clone rule; one JSON object with every "
                                    "violation. Exit 3 when a rule is broken.")
    p.add_argument("files", nargs="+", metavar="FILE", help="sample files (a folder adds its audio files)")
    p.add_argument("--name", required=True, help="the voice's name")
    p.add_argument("--description", default=None)
    _settings_args(p)
    p.add_argument("--rules", default=None, metavar="YAML", help="rules file (default configs/voice_rules.yaml)")
    p.set_defaults(func=run_check)

    p = vsub.add_parser("generate", help="speak a text in a profile's voice, scored against the profile",
                        description="Generate with Dia from a local model folder (or --tiny-random, a random test "
                                    "model), write the audio and a JSON sidecar, print one JSON line.")
    p.add_argument("--profile", required=True, metavar="PROFILE")
    p.add_argument("--text", required=True)
    p.add_argument("--prompt", required=True, metavar="AUDIO", help="a reference clip of the voice")
    p.add_argument("--prompt-text", required=True, help="the transcript of --prompt")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", metavar="DIR", help="local Dia folder (DAC codec in DIR/dac)")
    model.add_argument("--tiny-random", action="store_true", help="a tiny random Dia (tests; its speech is noise)")
    p.add_argument("--codec", default=None, metavar="DIR", help="DAC folder (default MODEL/dac)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--out", required=True, metavar="AUDIO", help="output file (.wav, .flac, .mp3, .ogg, .m4a, .webm)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--max-new-tokens", type=positive_int, default=None)
    _settings_args(p)
    p.set_defaults(func=run_generate)

    def usage(_args: argparse.Namespace) -> int:
        import sys

        voice.print_help(sys.stderr)
        return 2

    voice.set_defaults(func=usage)


def _settings_args(p: argparse.ArgumentParser) -> None:
    from ._args import finite_float

    p.add_argument("--stability", type=finite_float, default=None)
    p.add_argument("--similarity-boost", type=finite_float, default=None)
    p.add_argument("--style", type=finite_float, default=None)
    p.add_argument("--speaker-boost", dest="use_speaker_boost", action=argparse.BooleanOptionalAction, default=None,
                   help="best-of-N by similarity to the profile (use_speaker_boost)")


def _settings(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("stability", "similarity_boost", "style", "use_speaker_boost")
            if getattr(args, k) is not None}


def _expand(items: list[str]) -> list[str]:
    from ..voice.api import list_audio

    out: list[str] = []
    for item in items:
        out += [str(p) for p in list_audio(item)] if Path(item).is_dir() else [item]
    return out


def _emit(record: dict) -> None:
    print(json.dumps(record, sort_keys=True), flush=True)


def run_embed(args: argparse.Namespace) -> int:
    from ..cli import EXIT_BAD_INPUT, EXIT_OK
    from ..errors import AudioError
    from ..voice import load_voice_embedder

    embedder = load_voice_embedder()
    paths = _expand(args.files)
    bad = 0
    for path in paths:
        try:
            emb = embedder.embed(path)
        except AudioError as exc:
            bad += 1
            _emit({"path": path, "error": exc.to_dict()})
            continue
        _emit({"path": path, **emb.to_dict(with_vector=args.with_embedding)})
    return EXIT_BAD_INPUT if bad or not paths else EXIT_OK


def _check_out(out: Path) -> None:
    from ..errors import InputError

    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"--out {out}: {parent} is a file, not a folder", field="out", value=str(out))
            break
    if out.is_dir():
        raise InputError(f"--out {out} is a folder", field="out", value=str(out))


def run_profile(args: argparse.Namespace) -> int:
    from ..cli import EXIT_BAD_INPUT, EXIT_OK
    from ..errors import AudioError, VoiceError
    from ..voice import load_voice_embedder
    from ..voice.api import list_audio
    from ..voice.profile import VoiceProfile

    paths = [str(p) for p in list_audio(args.folder)]
    if not paths:
        raise VoiceError(f"{args.folder} holds no audio files", code="profile_empty", field="folder", value=args.folder)
    _check_out(Path(args.out))
    embedder = load_voice_embedder()
    good, bad = [], 0
    for path in paths:
        try:
            good.append((path, embedder.embed(path)))
        except AudioError as exc:
            bad += 1
            _emit({"path": path, "error": exc.to_dict()})
    if not good:
        _emit({"profile": None, "error": {"code": "profile_empty", "message": "no usable sample in the folder"}})
        return EXIT_BAD_INPUT
    profile = VoiceProfile.build([e for _, e in good])
    base = profile.save(args.out)
    summary = profile.to_summary()
    for (path, emb), sample in zip(good, summary["samples"]):
        _emit({"path": path, "similarity": round(profile.similarity(emb), 4), "score": sample["score"],
               "outlier": sample["outlier"], "multiple_speakers": sample["multiple_speakers"],
               "speech_s": sample["speech_s"], "warnings": sample["warnings"]})
    _emit({"profile": str(base), "files": [f"{base}.safetensors", f"{base}.json"], "fingerprint": profile.fingerprint,
           "n_samples": len(profile), "total_speech_s": summary["total_speech_s"], "outliers": summary["outliers"],
           "multi_speaker_samples": summary["multi_speaker_samples"], "duplicates": summary["duplicates"],
           "model": summary["provenance"]})
    return EXIT_BAD_INPUT if bad else EXIT_OK


def run_check(args: argparse.Namespace) -> int:
    from ..cli import EXIT_OK, EXIT_RULES
    from ..voice.api import check_clone_samples
    from ..voice.rules import load_voice_rules

    rules = load_voice_rules(args.rules) if args.rules else load_voice_rules()
    paths = _expand(args.files)
    result, profile, _ = check_clone_samples(paths, name=args.name, description=args.description,
                                             settings=_settings(args), rules=rules)
    out = result.to_dict()
    out["samples"] = [str(p) for p in paths]
    out["profile_outliers"] = [] if profile is None else list(profile.outliers)
    _emit(out)
    return EXIT_OK if result.ok else EXIT_RULES


def run_generate(args: argparse.Namespace) -> int:
    from ..cli import EXIT_OK
    from ..voice import load_voice_embedder
    from ..voice.generator import VoiceGenerator, VoicePrompt
    from ..voice.profile import VoiceProfile

    profile = VoiceProfile.load(args.profile)
    out = Path(args.out)
    _check_out(out)
    prompt = VoicePrompt.from_audio(args.prompt, args.prompt_text)
    embedder = load_voice_embedder()
    if args.tiny_random:
        from ..voice.testing import tiny_voice_generator

        generator = tiny_voice_generator(embedder)
    else:
        generator = VoiceGenerator.from_pretrained(args.model, embedder=embedder, codec_path=args.codec,
                                                   device=args.device, dtype=args.dtype)
    speech = generator.generate(args.text, profile=profile, prompt=prompt, settings=_settings(args), seed=args.seed,
                                max_new_tokens=args.max_new_tokens)
    path = speech.save(out)
    _emit({"out": str(path), "sidecar": f"{path}.json", **speech.to_dict()})
    return EXIT_OK
