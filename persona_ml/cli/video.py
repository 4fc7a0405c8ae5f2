"""``persona-ml talking-head`` and ``persona-ml motion-transfer``: one video job each; JSON result on stdout."""

from __future__ import annotations

import argparse
import json


def _common(p) -> None:
    p.add_argument("--out", required=True, help="job folder (video.mp4, identity report, result.json)")
    p.add_argument("--preview", action="store_true", help="low resolution, few frames: the same path, fast")
    p.add_argument("--prompt", default=None, help="text condition (a default describing the shot is used)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--base-path", default=None, help="explicit model folder")
    p.add_argument("--profile", default=None, help="the character's FaceProfile: scores every output frame")
    p.add_argument("--face-backend", default="dlib", choices=("dlib", "insightface"))
    p.add_argument("--face-model-dir", default=None)
    p.add_argument("--dtype", default="float32", help="float32, bf16 or fp16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--progress", action="store_true", help="one JSON line per event on stderr")


def register(sub) -> None:
    th = sub.add_parser("talking-head", help="portrait + speech -> lip-synced video (LTX-2 audio-to-video)",
                        description="Render a talking-head video of a character from its portrait and speech "
                                    "(its cloned voice or an upload), mux the speech, score identity per frame.")
    th.add_argument("--portrait", required=True, help="character portrait or LoRA image")
    th.add_argument("--speech", required=True, help="speech audio (wav, flac, mp3, m4a...)")
    th.add_argument("--base-model", default="ltx-2.5", help="ltx-2.5 (local folder) or tiny-ltx2")
    th.add_argument("--fps", type=float, default=None)
    th.add_argument("--steps", type=int, default=None, help="use the first N sigmas of the distilled schedule")
    _common(th)
    th.set_defaults(func=run_talking_head)

    mt = sub.add_parser("motion-transfer", help="a driving video's motion on the character (Wan2.2-Animate)",
                        description="Animate the character image with the driving video's pose and face motion; "
                                    "score identity per frame.")
    mt.add_argument("--character", required=True, help="character image")
    mt.add_argument("--driving", required=True, help="driving video")
    mt.add_argument("--pose-model", required=True, help="local ViTPose-wholebody-style ONNX file")
    mt.add_argument("--base-model", default="wan2.2-animate", help="wan2.2-animate (local folder) or tiny-wan-animate")
    mt.add_argument("--steps", type=int, default=None)
    mt.add_argument("--segment-frames", type=int, default=None, help="frames per segment (4k + 1)")
    _common(mt)
    mt.set_defaults(func=run_motion_transfer)


def _identity(args):
    if not args.profile:
        return {}
    from ..faces.embedder import FaceEmbedder
    from ..faces.profile import FaceProfile

    profile = FaceProfile.load(args.profile)
    return {"profile": profile, "face_embedder": FaceEmbedder(args.face_backend, model_dir=args.face_model_dir)}


def _printer(args):
    if not args.progress:
        return None
    import sys

    def on_event(e):
        print(json.dumps({"event": e.kind, "status": e.status.value, "step": e.step, "total_steps": e.total_steps,
                          "elapsed_s": round(e.elapsed_s, 3), "message": e.message}), file=sys.stderr, flush=True)

    return on_event


def _sizes(args) -> dict:
    return {k: getattr(args, k) for k in ("height", "width") if getattr(args, k) is not None}


def _finish(result) -> int:
    from . import EXIT_INTERNAL, EXIT_OK

    print(json.dumps(result.to_dict(), sort_keys=True))
    return EXIT_OK if result.status.value in ("completed", "cancelled") else EXIT_INTERNAL


def run_talking_head(args: argparse.Namespace) -> int:
    from ..images import load_image
    from ..video.jobs import TalkingHeadJob
    from ..video.models import load_video_model
    from ..video.speech import load_speech
    from ..video.talking_head import LTX2DFRTalkingHead, TalkingHeadSettings

    kw = _sizes(args)
    if args.fps is not None:
        kw["fps"] = args.fps
    if args.prompt:
        kw["prompt"] = args.prompt
    if args.steps is not None:
        from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES

        kw["sigmas"] = tuple(DISTILLED_SIGMA_VALUES[: max(1, args.steps)])
    settings = TalkingHeadSettings.preview(seed=args.seed, **kw) if args.preview else TalkingHeadSettings(
        seed=args.seed, **kw)
    portrait, speech = load_image(args.portrait), load_speech(args.speech)  # bad input fails before the model loads
    identity = _identity(args)
    pipe, spec = load_video_model(args.base_model, path=args.base_path, dtype=args.dtype, device=args.device)
    job = TalkingHeadJob(LTX2DFRTalkingHead(pipe, spec.name), portrait, speech, args.out, settings=settings,
                         on_event=_printer(args), **identity)
    return _finish(job.run())


def run_motion_transfer(args: argparse.Namespace) -> int:
    from ..faces.embedder import FaceEmbedder
    from ..images import load_image
    from ..video.io import load_video
    from ..video.jobs import MotionTransferJob
    from ..video.models import load_video_model
    from ..video.motion import MotionSettings, PoseRunner, WanAnimateMotionTransfer

    kw = _sizes(args)
    if args.prompt:
        kw["prompt"] = args.prompt
    if args.steps is not None:
        kw["num_steps"] = args.steps
    if args.segment_frames is not None:
        kw["segment_frame_length"] = args.segment_frames
    settings = MotionSettings.preview(seed=args.seed, **kw) if args.preview else MotionSettings(seed=args.seed, **kw)
    character = load_image(args.character)
    driving = load_video(args.driving, max_frames=settings.max_frames)
    pose = PoseRunner(args.pose_model)
    identity = _identity(args)
    embedder = identity.get("face_embedder") or FaceEmbedder(args.face_backend, model_dir=args.face_model_dir)
    pipe, spec = load_video_model(args.base_model, path=args.base_path, dtype=args.dtype, device=args.device)
    job = MotionTransferJob(WanAnimateMotionTransfer(pipe, pose, embedder, spec.name), character, driving, args.out,
                            settings=settings, on_event=_printer(args), **identity)
    return _finish(job.run())
