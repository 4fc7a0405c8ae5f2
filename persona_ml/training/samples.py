"""Fixed-prompt samples during training, and their identity scores.

Samples use fixed prompts (``{trigger}`` filled in) and fixed seeds, so checkpoints are compared
on the same inputs. With a ``FaceProfile`` and a ``FaceEmbedder`` each sample is scored:
its primary face's similarity to the profile, unless the sample is a near-copy of a training
photo (face embedding cosine at or above the embedder's ``near_duplicate_min_cosine`` to any
training photo, or grey-thumbnail correlation at or above ``near_copy_pixel_similarity``):
a memorised photo scores 0, like a sample without a face. A checkpoint's score is the mean over
its samples; the best checkpoint is the highest-scoring step where at least one face was found.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_path
from ..errors import BackendError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleScore:
    """One sample image's identity measurement.

    Attributes:
        path: the PNG.
        face_found: whether the embedder found a face.
        similarity: cosine to the profile (the profile's model scale), ``None`` without a face.
        near_copy: the sample reproduces a training photo (see the module docstring).
        max_train_cosine: highest face cosine to a training photo, ``None`` if not measured.
        max_train_pixel_similarity: highest thumbnail correlation to a training photo.
    """

    path: str
    face_found: bool
    similarity: float | None
    near_copy: bool
    max_train_cosine: float | None
    max_train_pixel_similarity: float


@dataclass(frozen=True)
class IdentityScore:
    """The identity measurement of one checkpoint's samples.

    Attributes:
        step: optimizer step.
        samples: per-sample scores.
        detection_rate: fraction of samples with a face.
        similarity: mean similarity of the faces that are not near-copies (``None`` if none).
        near_copies: how many samples were near-copies.
        score: mean over samples of the similarity (0 for no face or a near-copy); ``None``
            when no profile was given.
    """

    step: int
    samples: tuple[SampleScore, ...]
    detection_rate: float
    similarity: float | None
    near_copies: int
    score: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "detection_rate": self.detection_rate, "similarity": self.similarity,
                "near_copies": self.near_copies, "score": self.score,
                "samples": [dict(s.__dict__) for s in self.samples]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IdentityScore:
        return cls(step=int(d["step"]), samples=tuple(SampleScore(**s) for s in d["samples"]),
                   detection_rate=float(d["detection_rate"]), similarity=d["similarity"],
                   near_copies=int(d["near_copies"]), score=d["score"])


def fill_prompts(prompts: Sequence[str], trigger: str) -> list[str]:
    return [p.replace("{trigger}", trigger) for p in prompts]


def thumbnail(image) -> np.ndarray:
    """Zero-mean, unit-norm 32 x 32 grey thumbnail of a PIL image (for pixel similarity)."""
    from PIL import Image

    g = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64).ravel()
    g = g - g.mean()
    n = np.linalg.norm(g)
    return g / n if n > 0 else g


def render_samples(pipeline, embeds: Sequence[tuple[Any, Any]], seeds: Sequence[int], *, steps: int,
                   guidance: float, width: int, height: int, out_dir: str | os.PathLike) -> list[Path]:
    """Render each prompt embedding with each seed; write ``p<i>_s<seed>.png`` atomically.

    Args:
        pipeline: a ``FluxPipeline`` (text encoders may be ``None``: embeddings are given).
        embeds: ``(prompt_embeds, pooled)`` per prompt, float32 CPU.
    """
    import torch

    out = Path(out_dir)
    paths = []
    device = pipeline.transformer.device
    # the frozen weights' dtype (LoRA parameters stay fp32): the VAE decodes latents of this dtype
    dtype = pipeline.vae.dtype
    for i, (pe, pooled) in enumerate(embeds):
        for seed in seeds:
            gen = torch.Generator("cpu").manual_seed(int(seed))
            # autocast: fp32 LoRA outputs would otherwise promote bf16 latents before the VAE decode
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                image = pipeline(prompt_embeds=pe.to(device, dtype), pooled_prompt_embeds=pooled.to(device, dtype),
                                 num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
                                 generator=gen, output_type="pil").images[0]
            path = out / f"p{i}_s{seed}.png"
            with atomic_path(path, suffix=".png") as tmp:
                image.save(tmp, format="PNG")
            paths.append(path)
    return paths


@dataclass
class IdentityScorer:
    """Scores sample images against a profile and the training photos.

    Args:
        embedder: a ``FaceEmbedder`` (or ``None``: faces are not measured).
        profile: the character's ``FaceProfile`` (or ``None``: no similarity).
        train_images: paths of the training photos (near-copy checks).
        near_copy_pixel_similarity: thumbnail correlation threshold.
    """

    embedder: Any
    profile: Any
    train_images: Sequence[Path]
    near_copy_pixel_similarity: float = 0.97
    _train_thumbs: list = field(default_factory=list, init=False)
    _train_embs: np.ndarray | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        from PIL import Image

        for p in self.train_images:
            with Image.open(p) as im:
                self._train_thumbs.append(thumbnail(im))
        if self.embedder is not None:
            embs = []
            for res in self.embedder.analyze(list(self.train_images)):
                if isinstance(res, BackendError):  # a backend fault, not a training photo without a face
                    raise res
                if isinstance(res, list) and res:
                    embs.append(_largest(res).embedding)
            self._train_embs = np.stack(embs).astype(np.float64) if embs else None

    def score(self, step: int, paths: Sequence[Path]) -> IdentityScore:
        from PIL import Image

        faces: list[Any] = [None] * len(paths)
        if self.embedder is not None:
            for i, res in enumerate(self.embedder.analyze(list(paths))):
                if isinstance(res, BackendError):  # identity unmeasured is not "no face in the sample"
                    raise res
                if isinstance(res, list) and res:
                    faces[i] = _largest(res)
        near_dup = getattr(getattr(self.embedder, "thresholds", None), "near_duplicate_min_cosine", None)
        scores = []
        for path, face in zip(paths, faces):
            with Image.open(path) as im:
                th = thumbnail(im)
            pix = max((float(th @ t) for t in self._train_thumbs), default=0.0)
            cos = None
            if face is not None and self._train_embs is not None:
                e = np.asarray(face.embedding, dtype=np.float64)
                cos = float(np.max(self._train_embs @ e))
            near = pix >= self.near_copy_pixel_similarity or (cos is not None and near_dup is not None
                                                               and cos >= near_dup)
            sim = float(self.profile.similarity(face)) if (face is not None and self.profile is not None) else None
            scores.append(SampleScore(str(path), face is not None, sim, near, cos, pix))
        n = max(1, len(scores))
        good = [s.similarity for s in scores if s.similarity is not None and not s.near_copy]
        total = None
        if self.profile is not None:
            total = sum((s.similarity or 0.0) if not s.near_copy else 0.0 for s in scores) / n
        return IdentityScore(step=step, samples=tuple(scores), detection_rate=sum(s.face_found for s in scores) / n,
                             similarity=float(np.mean(good)) if good else None,
                             near_copies=sum(s.near_copy for s in scores), score=total)


def _largest(faces: list) -> Any:
    return max(faces, key=lambda f: f.face_size)


def best_step(scores: Sequence[IdentityScore]) -> int | None:
    """The step with the highest score among those where a face was found; ``None`` if none."""
    ranked = [s for s in scores if s.score is not None and s.detection_rate > 0 and s.similarity is not None]
    if not ranked:
        return None
    return max(ranked, key=lambda s: (s.score, s.step)).step
