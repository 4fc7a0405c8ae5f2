"""Identity report of a character LoRA: a fixed prompt suite, per-prompt identity, a contact sheet,
plots, and a JSON report written atomically.

The suite covers what users ask for and where identity fails: a close portrait, a half-body
shot, hard and low light, and a group scene in which the character's face must not spread to the
other people (``identity_bleeding``).

Example:
    >>> report = evaluate_lora("runs/ada/lora/pytorch_lora_weights.safetensors", base="tiny-flux",
    ...                        profile=profile, embedder=embedder, out_dir="runs/ada/eval")   # doctest: +SKIP
    >>> report.summary()["mean_similarity"]                                                  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_json
from ..errors import InputError

log = logging.getLogger(__name__)

__all__ = ["EvalPrompt", "DEFAULT_PROMPT_SUITE", "PromptResult", "CheckpointResult", "IdentityReport",
           "evaluate_lora"]

REPORT_VERSION = 1


@dataclass(frozen=True)
class EvalPrompt:
    """One prompt of the suite. ``{trigger}`` is replaced by the LoRA's trigger word.

    Attributes:
        name: short id (``portrait``).
        prompt: the text.
        group: the scene shows several people (bleeding is measured, not a single face).
    """

    name: str
    prompt: str
    group: bool = False


DEFAULT_PROMPT_SUITE: tuple[EvalPrompt, ...] = (
    EvalPrompt("portrait", "a close up portrait photo of {trigger}, looking at the camera, studio lighting"),
    EvalPrompt("half_body", "a half body photo of {trigger} standing in the city, wearing a blue shirt"),
    EvalPrompt("low_light", "a photo of {trigger} at night, soft light from a street lamp"),
    EvalPrompt("golden_hour", "a photo of {trigger} outdoors in the park at golden hour, natural light"),
    EvalPrompt("group", "a photo of {trigger} with a group of friends, people sitting in a cafe", group=True),
)


@dataclass(frozen=True)
class PromptResult:
    """Identity over one prompt's images.

    Attributes:
        name, prompt: the prompt (trigger filled in).
        seeds: seeds used.
        similarities: per image, best face cosine to the profile (``None``: no face or not scored).
        detection_rate: fraction of images with at least one face.
        mean_similarity: mean of the non-None similarities (``None`` when none).
        bleeding_rate: fraction of images flagged ``identity_bleeding``.
        flags: per image, its flags.
    """

    name: str
    prompt: str
    seeds: tuple[int, ...]
    similarities: tuple[float | None, ...]
    detection_rate: float
    mean_similarity: float | None
    bleeding_rate: float
    flags: tuple[tuple[str, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "prompt": self.prompt, "seeds": list(self.seeds),
                "similarities": list(self.similarities), "detection_rate": self.detection_rate,
                "mean_similarity": self.mean_similarity, "bleeding_rate": self.bleeding_rate,
                "flags": [list(f) for f in self.flags]}


@dataclass(frozen=True)
class CheckpointResult:
    """Identity of one checkpoint over the portrait prompt(s)."""

    step: int
    path: str
    mean_similarity: float | None
    detection_rate: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class IdentityReport:
    """What ``evaluate_lora`` measured and wrote.

    Attributes:
        lora_path, lora_sha256, base_model, base_fingerprint: what was evaluated on what.
        prompts: per-prompt results.
        checkpoints: per-checkpoint identity (empty when none were given).
        threshold: the embedding model's same-person threshold (``None`` without a profile).
        embedder: the embedding model's provenance dict (``None`` without a profile).
        files: name -> path of every artefact written (``report``, ``contact_sheet``,
            ``similarity_plot``, ``loss_plot``).
        settings: generation settings (size, steps, guidance, scale).
    """

    lora_path: str
    lora_sha256: str
    base_model: str | None
    base_fingerprint: str | None
    prompts: list[PromptResult]
    checkpoints: list[CheckpointResult] = field(default_factory=list)
    threshold: float | None = None
    embedder: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Headline numbers: mean similarity over non-group prompts, detection rate, bleeding rate."""
        single = [p for p in self.prompts if p.name != "group"] or self.prompts
        sims = [s for p in single for s in p.similarities if s is not None]
        n = sum(len(p.seeds) for p in self.prompts)
        return {"mean_similarity": round(sum(sims) / len(sims), 6) if sims else None,
                "detection_rate": round(sum(p.detection_rate * len(p.seeds) for p in self.prompts) / n, 6) if n else 0.0,
                "bleeding_rate": max((p.bleeding_rate for p in self.prompts), default=0.0),
                "best_checkpoint": _best_checkpoint(self.checkpoints)}

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": REPORT_VERSION, "lora_path": self.lora_path, "lora_sha256": self.lora_sha256,
                "base_model": self.base_model, "base_fingerprint": self.base_fingerprint,
                "threshold": self.threshold, "embedder": self.embedder, "settings": self.settings,
                "summary": self.summary(), "prompts": [p.to_dict() for p in self.prompts],
                "checkpoints": [c.to_dict() for c in self.checkpoints], "files": self.files}


def _best_checkpoint(checkpoints: Sequence[CheckpointResult]) -> int | None:
    scored = [c for c in checkpoints if c.mean_similarity is not None]
    return max(scored, key=lambda c: (c.mean_similarity, -c.step)).step if scored else None


def _mean(values):
    vals = [v for v in values if v is not None]
    return round(sum(vals) / len(vals), 6) if vals else None


def evaluate_lora(
    lora_path: str | os.PathLike,
    *,
    base: Any = "tiny-flux",
    out_dir: str | os.PathLike,
    profile: Any = None,
    embedder: Any = None,
    trigger: str | None = None,
    prompts: Sequence[EvalPrompt] = DEFAULT_PROMPT_SUITE,
    seeds: Sequence[int] = (0, 1),
    height: int = 1024,
    width: int = 1024,
    steps: int = 28,
    guidance: float = 3.5,
    lora_scale: float = 1.0,
    max_sequence_length: int = 512,
    checkpoints: Sequence[tuple[int, str | os.PathLike]] = (),
    losses: Sequence[float] = (),
    require_base_fingerprint: bool = True,
) -> IdentityReport:
    """Generate the prompt suite with a LoRA, score identity, write the report, sheet and plots.

    Args:
        lora_path: the LoRA file (any format ``CharacterGenerator`` accepts).
        base: a base-model name, a ``LoadedBaseModel`` or a ready ``CharacterGenerator`` (its pipeline
            and settings are used by a generator of the evaluation's own; the one given is not
            changed: its characters, cache and face embedder stay as they were).
        out_dir: where ``report.json``, ``contact_sheet.png`` and the plots go.
        profile, embedder: the character's ``FaceProfile`` and a ``FaceEmbedder`` of its model;
            without them images are generated and counted but not scored.
        trigger: trigger word; defaults to the LoRA's ``persona_ml.trigger`` metadata.
        prompts, seeds: the suite and the seeds used for every prompt.
        height, width, steps, guidance, lora_scale, max_sequence_length: generation settings.
        checkpoints: ``(step, lora file)`` pairs scored on the first prompt (similarity plot).
        losses: per-step training losses (loss plot).
        require_base_fingerprint: see ``CharacterGenerator``.

    Returns:
        IdentityReport (also written to ``out_dir/report.json``).

    Raises:
        InputError: bad arguments. LoraValidationError: the LoRA is refused.
    """
    from ..inference.generator import CharacterGenerator
    from ..inference.types import Character
    from ..lora.validation import read_safetensors_metadata

    if not prompts:
        raise InputError("the prompt suite is empty", field="prompts", value=0)
    if (profile is None) != (embedder is None):
        raise InputError("profile and embedder go together (identity needs both)", field="embedder",
                         value=type(embedder).__name__)
    lora_path = Path(lora_path)
    checkpoints = list(checkpoints)
    for item in checkpoints:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], int)
                and not isinstance(item[0], bool) and item[0] >= 0):
            raise InputError(f"checkpoints take (step >= 0, LoRA file) pairs, got {item!r}", field="checkpoints",
                             value=repr(item)[:200])
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"out_dir {out} cannot be created: {exc.strerror or exc}", field="out_dir",
                         value=str(out)) from None
    if isinstance(base, CharacterGenerator):
        # A generator of our own beside the caller's, on the same pipeline (the slot's state lives with the
        # pipeline, so both stay right): the caller's characters, cache and face embedder are never touched.
        gen = CharacterGenerator(base.pipe, base_fingerprint=base.base_fingerprint, base_name=base.base_name,
                                 max_rank=base.max_rank, swap=base.swap, slot_targets=base.slot_targets,
                                 face_embedder=embedder if embedder is not None else base.face_embedder,
                                 require_base_fingerprint=base.require_base_fingerprint)
    else:
        if isinstance(base, str):
            from ..models import load_base_model

            base = load_base_model(base)
        gen = CharacterGenerator(base, face_embedder=embedder, require_base_fingerprint=require_base_fingerprint)
    if trigger is None:
        _, meta = read_safetensors_metadata(lora_path)
        trigger = meta.get("persona_ml.trigger", "")
    cid = "eval-" + lora_path.stem[:100].replace(" ", "_")
    cid = "".join(c if c.isalnum() or c in "_.-" else "_" for c in cid)
    # Every LoRA (final and checkpoints) is validated before the suite runs: a bad checkpoint used to be
    # found only after all the generation work, which was then lost with no report written.
    ck_ids = [f"{cid}-ck{int(step)}" for step, _ in checkpoints]
    try:
        gen.register(Character(cid, lora_path=lora_path, profile=profile, trigger=trigger), preload=True)
        for ck_id, (_, path) in zip(ck_ids, checkpoints):
            gen.register(Character(ck_id, lora_path=path, profile=profile, trigger=trigger), preload=True)
        return _run_suite(gen, cid, ck_ids, lora_path, out, profile, trigger, prompts, seeds, height, width, steps,
                          guidance, lora_scale, max_sequence_length, checkpoints, losses)
    finally:
        for c in (cid, *ck_ids):
            gen.unregister(c)


def _run_suite(gen, cid, ck_ids, lora_path, out, profile, trigger, prompts, seeds, height, width, steps, guidance,
               lora_scale, max_sequence_length, checkpoints, losses) -> IdentityReport:
    from ..inference.types import GenerationRequest
    from .contact_sheet import contact_sheet
    from .plots import plot_loss_curve, plot_similarity_per_checkpoint

    def run(prompt_text, cid_):
        req = GenerationRequest(cid_, prompt_text, seeds=tuple(seeds), lora_scale=lora_scale, height=height,
                                width=width, steps=steps, guidance=guidance, max_sequence_length=max_sequence_length)
        return gen.generate(req)

    results: list[PromptResult] = []
    rows = []
    sha = ""
    for p in prompts:
        res = run(p.prompt, cid)
        sha = res.lora_sha256 or sha
        sims = tuple(im.identity.similarity for im in res.images)
        flags = tuple(im.identity.flags for im in res.images)
        detected = [im.identity.num_faces > 0 for im in res.images]
        results.append(PromptResult(
            name=p.name, prompt=p.prompt.replace("{trigger}", trigger or ""), seeds=tuple(seeds), similarities=sims,
            detection_rate=round(sum(detected) / len(detected), 6), mean_similarity=_mean(sims),
            bleeding_rate=round(sum("identity_bleeding" in f for f in flags) / len(flags), 6), flags=flags))
        rows.append((p.name, [(im.image, _caption(im)) for im in res.images]))
    files = {"contact_sheet": str(contact_sheet(rows, out / "contact_sheet.png"))}

    ck_results: list[CheckpointResult] = []
    for ck_id, (step, path) in zip(ck_ids, checkpoints):
        res = run(prompts[0].prompt, ck_id)
        sims = [im.identity.similarity for im in res.images]
        ck_results.append(CheckpointResult(step=int(step), path=str(path), mean_similarity=_mean(sims),
                                           detection_rate=round(sum(im.identity.num_faces > 0 for im in res.images)
                                                                / len(res.images), 6)))
    threshold = float(profile.thresholds.same_person_min_cosine) if profile is not None else None
    if ck_results:
        files["similarity_plot"] = str(plot_similarity_per_checkpoint(
            [c.step for c in ck_results], [c.mean_similarity for c in ck_results], out / "similarity_per_checkpoint.png",
            threshold=threshold, detection_rates=[c.detection_rate for c in ck_results]))
    if losses:
        files["loss_plot"] = str(plot_loss_curve(losses, out / "loss_curve.png"))
    files["report"] = str(out / "report.json")
    report = IdentityReport(
        lora_path=str(lora_path), lora_sha256=sha, base_model=gen.base_name, base_fingerprint=gen.base_fingerprint,
        prompts=results, checkpoints=ck_results, threshold=threshold,
        embedder=profile.provenance.to_dict() if profile is not None else None, files=files,
        settings={"height": height, "width": width, "steps": steps, "guidance": guidance, "lora_scale": lora_scale,
                  "seeds": list(seeds), "trigger": trigger})
    atomic_write_json(out / "report.json", report.to_dict())
    return report


def _caption(im) -> str:
    c = im.identity
    if c.similarity is None:
        return f"s{im.seed} " + (",".join(f for f in c.flags if f != "not_scored") or "-")
    return f"s{im.seed} {c.similarity:.2f}" + (" " + ",".join(c.flags) if c.flags else "")
