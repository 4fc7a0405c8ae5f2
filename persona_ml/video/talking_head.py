"""Talking heads: the character's portrait plus speech -> a lip-synced video.

diffusers 0.42 has no dedicated talking-head pipeline. LTX-2 generates video and audio jointly,
with cross-attention between the streams; its audio-to-video mode holds the audio stream clean
(sigma 0, no Euler step) so the video follows given speech. ``LTX2DFRPipeline`` exposes exactly
that as ``audio_latents`` + ``freeze_audio=True``. This backend builds those latents from the
speech (``persona_ml.video.mel.log_mel`` -> the pipeline's own audio VAE, mean of the posterior)
for the canvas the pipeline will denoise, puts the portrait as the first-frame condition
(strength 1), and passes a per-step callback that reports progress and raises the pipeline's
interrupt flag on cancel. The muxed soundtrack is the original speech, not the vocoder's
re-synthesis (LTX-2's own audio-to-video pipeline does the same, for fidelity).

A dedicated model (Wan2.2-S2V, InfiniteTalk, MuseTalk...) plugs in as another
``TalkingHeadBackend``; the job, the identity report and the sync check stay the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError
from .speech import Speech

log = logging.getLogger(__name__)

DEFAULT_PROMPT = ("a person talking to the camera, natural head and lip motion, steady close-up portrait, "
                  "soft studio light")
StepCallback = Callable[[int, int], None]
StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class TalkingHeadSettings:
    """What to render.

    Attributes:
        height, width: output size (multiples of 32 for LTX-2).
        fps: frame rate.
        max_frames: cap on frames (the speech's length decides below it).
        prompt: text condition (the portrait and the speech carry the identity and the timing).
        sigmas: the denoising schedule (``None``: LTX-2's 8-step distilled schedule).
        seed: noise seed (same seed, same frames).
        max_sequence_length: text tokens.
    """

    height: int = 512
    width: int = 512
    fps: float = 24.0
    max_frames: int = 241
    prompt: str = DEFAULT_PROMPT
    sigmas: tuple[float, ...] | None = None
    seed: int = 0
    max_sequence_length: int = 256

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 32 or v % 32:
                raise InputError(f"{name} must be a multiple of 32 (>= 32), got {v!r}", field=name, value=v)
        if not isinstance(self.fps, (int, float)) or not 1 <= self.fps <= 60:
            raise InputError(f"fps must be in [1, 60], got {self.fps!r}", field="fps", value=self.fps)
        if isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int) or self.max_frames < 9:
            raise InputError(f"max_frames must be an integer >= 9, got {self.max_frames!r}", field="max_frames",
                             value=self.max_frames)
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError("prompt must be a non-empty string", field="prompt", value=self.prompt)
        if self.sigmas is not None and (not self.sigmas or any(not 0 < float(s) <= 1 for s in self.sigmas)):
            raise InputError(f"sigmas must be a non-empty schedule in (0, 1], got {self.sigmas!r}", field="sigmas",
                             value=list(self.sigmas))

    @classmethod
    def preview(cls, **overrides: Any) -> TalkingHeadSettings:
        """The same path at low resolution and few frames (about 2 s at 12 fps, 256 px)."""
        base = {"height": 256, "width": 256, "fps": 12.0, "max_frames": 25}
        base.update(overrides)
        return cls(**base)


@dataclass
class GeneratedVideo:
    """A backend's output: frames, the frame rate, and whether it was cut short by a cancel."""

    frames: np.ndarray | None
    fps: float
    steps_done: int
    total_steps: int
    cancelled: bool = False
    meta: dict | None = None


@runtime_checkable
class TalkingHeadBackend(Protocol):
    """What a talking-head model provides. ``generate`` must call ``on_step`` after every denoising step and
    stop at the next step boundary once ``should_stop()`` is true (returning ``cancelled=True``)."""

    name: str

    def generate(self, portrait: np.ndarray, speech: Speech, settings: TalkingHeadSettings, *,
                 on_step: StepCallback | None = None, should_stop: StopCheck | None = None) -> GeneratedVideo:
        ...


def frames_for(duration_s: float, fps: float, temporal_ratio: int, max_frames: int) -> int:
    """Pixel frames covering ``duration_s`` on the VAE's ``k * ratio + 1`` grid, capped by ``max_frames``."""
    want = max(temporal_ratio + 1, int(round(duration_s * fps)))
    n = ((want - 1 + temporal_ratio - 1) // temporal_ratio) * temporal_ratio + 1
    cap = ((max_frames - 1) // temporal_ratio) * temporal_ratio + 1
    return max(temporal_ratio + 1, min(n, cap))


def fit_portrait(pixels: np.ndarray, width: int, height: int):
    """Centre-crop the portrait to the output's aspect ratio and resize (PIL, Lanczos) -> PIL image."""
    from PIL import Image

    img = Image.fromarray(np.asarray(pixels, np.uint8)).convert("RGB")
    aspect = width / height
    w, h = img.size
    if w / h > aspect:
        nw = int(round(h * aspect))
        img = img.crop(((w - nw) // 2, 0, (w - nw) // 2 + nw, h))
    else:
        nh = int(round(w / aspect))
        top = max(0, min((h - nh) // 3, h - nh))  # keep the head: crop more from the bottom
        img = img.crop((0, top, w, top + nh))
    return img.resize((width, height), Image.LANCZOS)


class LTX2DFRTalkingHead:
    """Talking-head backend on diffusers' ``LTX2DFRPipeline`` with frozen audio latents (see the module docstring).

    Args:
        pipeline: an ``LTX2DFRPipeline`` (real weights from a local folder, or the tiny one).
        name: the base model's name, recorded in results.
    """

    def __init__(self, pipeline: Any, name: str = "ltx-2.5") -> None:
        self.pipe = pipeline
        self.name = name

    def audio_latents(self, speech: Speech, canvas_frames: int, fps: float):
        """Raw (unnormalised) audio-VAE latents of ``speech`` for a canvas of ``canvas_frames`` frames.

        Returns:
            ``(1, C, L, mel_bins / 4)`` with ``L`` the latent length the pipeline derives for that canvas.
        """
        import torch

        from .mel import MelSettings, log_mel
        from .speech import load_speech

        pipe = self.pipe
        settings = MelSettings.from_audio_vae(pipe.audio_vae)
        speech = load_speech(speech, sample_rate=settings.sample_rate, require_voice=False)
        seconds = canvas_frames / fps
        n = int(round(seconds * settings.sample_rate))
        samples = np.pad(speech.samples[:n], (0, max(0, n - len(speech.samples))))
        latent_len = round(seconds * settings.sample_rate / settings.hop_length
                           / float(pipe.audio_vae_temporal_compression_ratio))
        vae = pipe.audio_vae
        mel = log_mel(samples, settings).to(device=vae.device, dtype=vae.dtype)
        with torch.no_grad():
            lat = vae.encode(mel).latent_dist.mode()
        if lat.shape[2] < latent_len:
            lat = torch.cat([lat, lat[:, :, -1:].expand(-1, -1, latent_len - lat.shape[2], -1)], dim=2)
        return lat[:, :, :latent_len].float()

    def generate(self, portrait: np.ndarray, speech: Speech, settings: TalkingHeadSettings, *,
                 on_step: StepCallback | None = None, should_stop: StopCheck | None = None) -> GeneratedVideo:
        import torch
        from diffusers.pipelines.ltx2.dfr_layout import resolve_canvas
        from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition
        from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES

        pipe = self.pipe
        ratio = int(pipe.vae_temporal_compression_ratio)
        num_frames = frames_for(speech.duration_s, settings.fps, ratio, settings.max_frames)
        canvas, _, _ = resolve_canvas(num_frames, ratio)
        audio = self.audio_latents(speech, canvas, settings.fps)
        sigmas = list(settings.sigmas) if settings.sigmas is not None else list(DISTILLED_SIGMA_VALUES)
        total = len(sigmas)
        state = {"steps": 0, "cancelled": False}

        def callback(p, index, timestep, kwargs):
            state["steps"] = index + 1
            if on_step is not None:
                on_step(index + 1, total)
            if should_stop is not None and should_stop():
                state["cancelled"] = True
                p._interrupt = True  # diffusers' cooperative interrupt: the loop skips the remaining steps
            return {}

        device = getattr(pipe, "_execution_device", None) or torch.device("cpu")
        generator = torch.Generator(device="cpu" if str(device).startswith("cpu") else device).manual_seed(settings.seed)
        image = fit_portrait(portrait, settings.width, settings.height)
        out = pipe(prompt=settings.prompt, conditions=[LTX2VideoCondition(frames=image, index=0, strength=1.0)],
                   height=settings.height, width=settings.width, num_frames=num_frames, frame_rate=float(settings.fps),
                   audio_latents=audio, freeze_audio=True, sigmas=sigmas, generator=generator, output_type="np",
                   callback_on_step_end=callback, max_sequence_length=settings.max_sequence_length)
        if state["cancelled"]:
            return GeneratedVideo(None, settings.fps, state["steps"], total, cancelled=True)
        frames = np.clip(np.round(np.asarray(out.frames[0]) * 255.0), 0, 255).astype(np.uint8)
        return GeneratedVideo(frames, float(settings.fps), state["steps"], total,
                              meta={"num_frames": num_frames, "canvas_frames": canvas,
                                    "audio_latent_shape": list(audio.shape), "sigmas": sigmas})
