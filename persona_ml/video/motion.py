"""Motion transfer: a driving video's motion on the character, with diffusers' ``WanAnimatePipeline``.

Why this path: diffusers 0.42 also has ``WanAnimate2`` modular blocks that take the raw driving
video, but its denoise loop has no step callback and no interrupt flag, and a job here must
report every denoising step and cancel cooperatively. ``WanAnimatePipeline`` (animate mode) has
both; it needs a pose video and 512 x 512 face crops of the driving video, made here:

- face crops: the library's own face detection and 5 landmarks (``FaceEmbedder``; dlib's
  68-point model is non-commercial and is not used), run on a sparse grid of frames with the
  box interpolated in between, a square of 1.6x the face box side around the eyes-mouth centre,
  resized to the transformer's ``motion_encoder_size``;
- pose: ``PoseRunner``, a top-down keypoint model on onnxruntime with ViTPose-wholebody's
  signature (``[N, 3, 256, 192]`` -> heatmaps ``[N, K, 64, 48]``), the weights a local file on
  the worker; the body keypoints (COCO-17 order) are drawn as a skeleton on black, the frame's size.

``replace`` mode (background and mask videos) needs a person segmenter this library does not
ship; ``animate`` is what the Characters API's motion transfer asks for.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, FaceError, InputError, ModelMismatchError, ModelNotFoundError

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "the person from the reference image moves like the person in the driving video"
COCO_SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
                 (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class PoseRunner:
    """Top-down heatmap pose model on onnxruntime (ViTPose-wholebody's input/output signature).

    Args:
        model_path: local ``.onnx`` file.
        providers: onnxruntime execution providers (CPU by default).
        min_score: keypoints below this heatmap peak are not drawn.

    Raises:
        ModelNotFoundError: no file at ``model_path``.
        ModelMismatchError: (``model_signature_mismatch``) the model's input is not ``[N, 3, 256, 192]``-like or its
            output not ``[N, K, H/4, W/4]`` heatmaps with at least the 17 body keypoints.
    """

    def __init__(self, model_path: str | os.PathLike, *, providers: list[str] | None = None, min_score: float = 0.3) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise ModelNotFoundError(f"pose model not found: {path}", searched=[str(path)], missing=[str(path)])
        import onnxruntime as ort

        self.path = path
        self.session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inputs[0].shape) if len(inputs) == 1 else []
        if len(shape) != 4 or shape[1] != 3 or not all(isinstance(v, int) for v in shape[2:]):
            raise ModelMismatchError(f"{path}: pose input must be [N, 3, H, W] with fixed H, W, got {shape}",
                                     code="model_signature_mismatch", field="pose_model", value=str(shape))
        self.in_h, self.in_w = int(shape[2]), int(shape[3])
        out = list(outputs[0].shape)
        if (len(outputs) != 1 or len(out) != 4 or not isinstance(out[1], int) or out[1] < 17
                or out[2:] != [self.in_h // 4, self.in_w // 4]):
            raise ModelMismatchError(f"{path}: pose output must be heatmaps [N, K>=17, {self.in_h // 4}, "
                                     f"{self.in_w // 4}], got {out}", code="model_signature_mismatch",
                                     field="pose_model", value=str(out))
        self.keypoints = int(out[1])
        self.min_score = float(min_score)
        self.input_name = inputs[0].name

    def _prepare(self, frame: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        from PIL import Image

        h, w = frame.shape[:2]
        scale = min(self.in_w / w, self.in_h / h)
        nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        img = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.BILINEAR), np.float32) / 255.0
        canvas = np.zeros((self.in_h, self.in_w, 3), np.float32)
        ox, oy = (self.in_w - nw) // 2, (self.in_h - nh) // 2
        canvas[oy:oy + nh, ox:ox + nw] = img
        canvas = (canvas - _IMAGENET_MEAN) / _IMAGENET_STD
        return canvas.transpose(2, 0, 1), scale, ox, oy

    def keypoints_of(self, frames: np.ndarray, batch: int = 8) -> np.ndarray:
        """``(N, K, 3)`` keypoints ``(x, y, score)`` in frame pixels (the whole frame is the person crop)."""
        out = []
        for start in range(0, len(frames), batch):
            chunk = frames[start:start + batch]
            prepared = [self._prepare(np.asarray(f, np.uint8)) for f in chunk]
            x = np.stack([p[0] for p in prepared]).astype(np.float32)
            heat = self.session.run(None, {self.input_name: x})[0]
            for (_, scale, ox, oy), hm in zip(prepared, heat):
                out.append(_decode_heatmaps(hm, scale, ox, oy))
        return np.stack(out)

    def render(self, frames: np.ndarray, size: tuple[int, int] | None = None) -> list:
        """Pose skeletons drawn on black, one PIL image per frame (``size`` = ``(width, height)``)."""
        from PIL import Image, ImageDraw

        kps = self.keypoints_of(frames)
        h, w = frames.shape[1:3]
        images = []
        for pts in kps:
            img = Image.new("RGB", (w, h), (0, 0, 0))
            draw = ImageDraw.Draw(img)
            lw = max(2, int(round(min(w, h) / 80)))
            for k, (a, b) in enumerate(COCO_SKELETON):
                if pts[a, 2] >= self.min_score and pts[b, 2] >= self.min_score:
                    hue = k / len(COCO_SKELETON)
                    colour = tuple(int(255 * c) for c in _hsv(hue))
                    draw.line([tuple(pts[a, :2]), tuple(pts[b, :2])], fill=colour, width=lw)
            for x, y, s in pts[:17]:
                if s >= self.min_score:
                    draw.ellipse([x - lw, y - lw, x + lw, y + lw], fill=(255, 255, 255))
            images.append(img.resize(size) if size and size != (w, h) else img)
        return images


def _hsv(h: float) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(h, 0.9, 1.0)


def _decode_heatmaps(hm: np.ndarray, scale: float, ox: float, oy: float) -> np.ndarray:
    """Argmax per heatmap with a quarter-pixel shift toward the higher neighbour (the usual refinement)."""
    k, hh, ww = hm.shape
    flat = hm.reshape(k, -1)
    idx = flat.argmax(axis=1)
    ys, xs = (idx // ww).astype(np.float32), (idx % ww).astype(np.float32)
    score = flat.max(axis=1)
    for i in range(k):
        y, x = int(ys[i]), int(xs[i])
        if 0 < x < ww - 1:
            xs[i] += 0.25 * np.sign(hm[i, y, x + 1] - hm[i, y, x - 1])
        if 0 < y < hh - 1:
            ys[i] += 0.25 * np.sign(hm[i, y + 1, x] - hm[i, y - 1, x])
    # heatmap cell -> input pixel (stride 4, cell centres) -> frame pixel
    px = ((xs + 0.5) * 4 - ox) / scale
    py = ((ys + 0.5) * 4 - oy) / scale
    return np.stack([px, py, score], axis=1).astype(np.float32)


def face_boxes(frames: np.ndarray, embedder: Any, *, stride: int = 4) -> list[tuple[float, float, float, float]]:
    """A square face box for every frame: detected on a grid of frames, linearly interpolated between.

    Raises:
        FaceError: (``no_face``) no face in any sampled frame of the driving video.
        BackendError: the face backend failed on a frame (cause chained).
    """
    n = len(frames)
    grid = sorted(set(range(0, n, max(1, stride))) | {n - 1})
    found: dict[int, np.ndarray] = {}
    for i, faces in zip(grid, embedder.analyze([frames[i] for i in grid])):
        if isinstance(faces, BackendError):  # the face backend crashed: not "no face in the driving video"
            raise faces
        if isinstance(faces, Exception) or not faces:
            continue
        f = faces[0]  # largest
        pts = np.asarray(f.landmarks, np.float32)
        centre = np.array([(pts[0, 0] + pts[1, 0] + pts[3, 0] + pts[4, 0]) / 4,
                           (pts[0, 1] + pts[1, 1] + pts[3, 1] + pts[4, 1]) / 4])
        x0, y0, x1, y1 = f.bbox
        side = 1.6 * max(x1 - x0, y1 - y0)
        found[i] = np.array([centre[0], centre[1], side])
    if not found:
        raise FaceError(f"no face in the driving video ({len(grid)} frames sampled); motion transfer needs the "
                        "driving person's face", code="no_face", field="driving", value=len(grid))
    keys = sorted(found)
    table = np.stack([found[k] for k in keys])
    cx = np.interp(np.arange(n), keys, table[:, 0])
    cy = np.interp(np.arange(n), keys, table[:, 1])
    side = np.interp(np.arange(n), keys, table[:, 2])
    return [(float(x - s / 2), float(y - s / 2), float(x + s / 2), float(y + s / 2)) for x, y, s in zip(cx, cy, side)]


def face_crops(frames: np.ndarray, boxes: list, size: int = 512) -> list:
    """Square crops (zero padded past the frame) resized to ``size`` x ``size`` PIL images."""
    from PIL import Image

    out = []
    for frame, (x0, y0, x1, y1) in zip(frames, boxes):
        img = Image.fromarray(np.asarray(frame, np.uint8))
        out.append(img.crop((int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))).resize(
            (size, size), Image.BICUBIC))
    return out


@dataclass(frozen=True)
class MotionSettings:
    """What to render.

    Attributes:
        height, width: output size (multiples of 16).
        num_steps: denoising steps (20 is Wan-Animate's default).
        segment_frame_length: frames per inference segment (``4k + 1``; 77 is the default).
        max_frames: cap on frames taken from the driving video.
        guidance_scale: classifier-free guidance (1.0: off, Wan-Animate's default).
        prompt, seed, max_sequence_length: text condition, noise seed, text tokens.
    """

    height: int = 720
    width: int = 1280
    num_steps: int = 20
    segment_frame_length: int = 77
    max_frames: int = 241
    guidance_scale: float = 1.0
    prompt: str = DEFAULT_PROMPT
    seed: int = 0
    max_sequence_length: int = 512

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 16 or v % 16:
                raise InputError(f"{name} must be a multiple of 16 (>= 16), got {v!r}", field=name, value=v)
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or not 1 <= self.num_steps <= 200:
            raise InputError(f"num_steps must be in [1, 200], got {self.num_steps!r}", field="num_steps",
                             value=self.num_steps)
        s = self.segment_frame_length
        if isinstance(s, bool) or not isinstance(s, int) or s < 5 or (s - 1) % 4:
            raise InputError(f"segment_frame_length must be 4k + 1 (>= 5), got {s!r}", field="segment_frame_length",
                             value=s)
        if isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int) or self.max_frames < 5:
            raise InputError(f"max_frames must be an integer >= 5, got {self.max_frames!r}", field="max_frames",
                             value=self.max_frames)

    @classmethod
    def preview(cls, **overrides: Any) -> MotionSettings:
        """The same path at low resolution and few frames/steps (320 x 576, 33 frames, 8 steps)."""
        base = {"height": 320, "width": 576, "num_steps": 8, "segment_frame_length": 33, "max_frames": 33}
        base.update(overrides)
        return cls(**base)


class WanAnimateMotionTransfer:
    """Motion-transfer backend on ``WanAnimatePipeline`` (animate mode).

    Args:
        pipeline: a ``WanAnimatePipeline``.
        pose: a ``PoseRunner`` on the worker's local pose weights.
        face_embedder: a ``FaceEmbedder`` for the driving video's face boxes.
        name: the base model's name, recorded in results.
    """

    def __init__(self, pipeline: Any, pose: PoseRunner, face_embedder: Any, name: str = "wan2.2-animate") -> None:
        self.pipe, self.pose, self.face_embedder, self.name = pipeline, pose, face_embedder, name

    def generate(self, character: np.ndarray, driving: np.ndarray, fps: float, settings: MotionSettings, *,
                 on_step: Callable[[int, int], None] | None = None, should_stop: Callable[[], bool] | None = None):
        import torch

        from .talking_head import GeneratedVideo, fit_portrait

        pipe = self.pipe
        n = min(len(driving), settings.max_frames)
        n = ((n - 1) // 4) * 4 + 1  # the VAE's 4k + 1 grid
        if n < 5:
            raise InputError(f"the driving video has {len(driving)} frames; motion transfer needs at least 5",
                             field="driving", value=len(driving))
        frames = np.asarray(driving[:n])
        pose_video = self.pose.render(frames, size=(settings.width, settings.height))
        face_size = int(pipe.transformer.config.motion_encoder_size)
        faces = face_crops(frames, face_boxes(frames, self.face_embedder), size=face_size)
        segment = min(settings.segment_frame_length, n)
        segments = max(1, -(-(n - 1) // (segment - 1)))
        total = settings.num_steps * segments
        state = {"steps": 0, "cancelled": False}

        def callback(p, index, timestep, kwargs):
            state["steps"] += 1
            if on_step is not None:
                on_step(state["steps"], total)
            if should_stop is not None and should_stop():
                state["cancelled"] = True
                p._interrupt = True
            return {}

        image = fit_portrait(character, settings.width, settings.height)
        generator = torch.Generator(device="cpu").manual_seed(settings.seed)
        out = pipe(image=image, pose_video=pose_video, face_video=faces, prompt=settings.prompt,
                   height=settings.height, width=settings.width, segment_frame_length=segment,
                   num_inference_steps=settings.num_steps, mode="animate", guidance_scale=settings.guidance_scale,
                   generator=generator, output_type="np", callback_on_step_end=callback,
                   max_sequence_length=settings.max_sequence_length)
        if state["cancelled"]:
            return GeneratedVideo(None, fps, state["steps"], total, cancelled=True)
        video = np.clip(np.round(np.asarray(out.frames[0]) * 255.0), 0, 255).astype(np.uint8)[:n]
        return GeneratedVideo(video, float(fps), state["steps"], total,
                              meta={"num_frames": int(n), "segments": segments, "face_size": face_size})
