"""Job statuses, progress events and the training result."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .samples import IdentityScore


class JobStatus(str, Enum):
    """Lifecycle ``queued -> preparing -> training -> completed | failed | cancelled``.

    The Characters API's ``lora_training_status`` starts at ``none`` (no job exists yet); once
    a job exists it reports ``api_status``: ``queued`` -> ``queued``, ``preparing`` and
    ``training`` -> ``training`` (preparing is the first minutes of the same paid run: dataset,
    model load, caches), and the three end states by their own names.
    """

    QUEUED = "queued"
    PREPARING = "preparing"
    TRAINING = "training"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)

    @property
    def api_status(self) -> str:
        return _API_STATUS[self]


_API_STATUS = {JobStatus.QUEUED: "queued", JobStatus.PREPARING: "training", JobStatus.TRAINING: "training",
               JobStatus.COMPLETED: "completed", JobStatus.FAILED: "failed", JobStatus.CANCELLED: "cancelled"}


def api_status(status: JobStatus | None) -> str:
    """``lora_training_status`` for a job's status; ``None`` (no job) is ``"none"``."""
    return "none" if status is None else status.api_status


@dataclass(frozen=True)
class ProgressEvent:
    """What a progress callback receives.

    Attributes:
        kind: ``status`` (status changed), ``progress`` (loading, encoding and caching before the
            loop, export after it: ``phase``, ``current`` of ``count``), ``step`` (an optimizer step
            finished), ``checkpoint`` (one was written), ``samples`` (samples rendered and scored).
        phase: ``load_encoders``, ``encode_latents``, ``encode_text``, ``load_transformer``,
            ``load_all`` (cache off) or ``export`` (``progress`` events).
        current, count: items done of the phase's total (``progress`` events).
        status: the job's status at that moment.
        step, total_steps: progress.
        loss: this step's loss (``step`` events).
        lr: learning rate used for this step.
        elapsed_s: seconds since training started; eta_s: estimated seconds left.
        sample_paths: PNGs of a ``samples`` event.
        identity: the samples' identity score (``samples`` events).
        checkpoint: the folder of a ``checkpoint`` event.
        message: a human sentence.
    """

    kind: str
    status: JobStatus
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    lr: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    sample_paths: tuple[str, ...] = ()
    identity: IdentityScore | None = None
    checkpoint: str | None = None
    message: str = ""
    phase: str = ""
    current: int = 0
    count: int = 0


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint or sample snapshot and its identity measurement (if samples were taken)."""

    step: int
    path: str
    identity: IdentityScore | None = None


@dataclass
class TrainResult:
    """Outcome of a training job.

    Attributes:
        status: final status.
        output_dir: the run folder.
        lora_path: the exported ``pytorch_lora_weights.safetensors`` (``None`` unless completed).
        kohya_path: the kohya/ComfyUI file.
        best_step: step with the best identity score (``None`` when not measured or no face found).
        best_lora_path: that step's exported LoRA (the final one when it is the last step).
        checkpoints: checkpoints written, oldest first (pruned folders included, marked by path).
        identity: per-sample-step identity scores.
        losses: loss per optimizer step (the full history, across resumes).
        timings: seconds per phase (``prepare``; with the cache on ``fingerprint`` (the base model's,
            without its weights) and ``cache_lookup``; ``load_encoders`` and ``encode`` when some
            entry was missing, ``load_decoder`` when none was and samples are on;
            ``load_transformer``, ``load`` (every load), ``train``, ``samples``, ``export``) and
            ``s_per_step``.
        memory: peak memory per phase (``persona_ml.training.memory``): ``encode`` (VAE + text
            encoders only, filling the cache) and ``train`` (the transformer, LoRA, optimizer and,
            with samples, the VAE decoder), each ``{"peak_bytes", "measure", "weights_bytes"}``,
            plus ``peak_bytes``: the larger of the two, the job's peak.
        loaders: exported file name -> the tools that load it exactly (as on the model card).
        cache: cache hit/miss counts.
        encoders: ``"skipped"`` (cache on and every latent and text cached: neither text encoder
            nor the VAE encoder was loaded), ``"loaded"`` (cache on, loaded to encode the misses
            only, released before the transformer loads) or ``"resident"`` (cache off: loaded with
            the transformer and kept).
        optimizer: the optimizer actually used (``AdamW8bit`` or ``AdamW``).
        rule_violations: violations recorded in ``rules.mode: dev`` (always empty in enforce mode).
        resumed_from: the checkpoint step this run continued from.
        error: ``PersonaMLError.to_dict()`` of a failure.
        config_path: ``config.resolved.yaml``.
    """

    status: JobStatus
    output_dir: Path
    lora_path: Path | None = None
    kohya_path: Path | None = None
    best_step: int | None = None
    best_lora_path: Path | None = None
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    identity: list[IdentityScore] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)
    encoders: str = ""
    memory: dict[str, Any] = field(default_factory=dict)
    loaders: dict[str, list[str]] = field(default_factory=dict)
    optimizer: str = ""
    rule_violations: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None
    error: dict[str, Any] | None = None
    config_path: Path | None = None
    exported: Any = None

    def summary(self) -> str:
        """A few lines for a terminal."""
        lines = [f"status: {self.status.value}", f"output: {self.output_dir}"]
        if self.losses:
            lines.append(f"steps: {len(self.losses)}  loss first/last: {self.losses[0]:.4f} / {self.losses[-1]:.4f}")
        if self.timings.get("s_per_step"):
            lines.append(f"speed: {self.timings['s_per_step']:.3f} s/step")
        phases = {k: v for k, v in self.memory.items() if isinstance(v, dict)}
        if phases:
            lines.append("memory: " + ", ".join(
                f"{k} peak {_gib(v['peak_bytes'])} (weights {_gib(v['weights_bytes'])})" for k, v in phases.items()))
        if self.encoders:
            c = self.cache
            lines.append(f"encoders: {self.encoders}" + (
                f" (cache: latents {c.get('latent_hits', 0)} hits / {c.get('latent_misses', 0)} misses, texts "
                f"{c.get('text_hits', 0)} / {c.get('text_misses', 0)})" if c else ""))
        if self.lora_path:
            lines.append(f"lora: {self.lora_path}")
        if self.kohya_path:
            lines.append(f"kohya: {self.kohya_path}")
        for s in self.identity:
            sim = "None" if s.similarity is None else f"{s.similarity:.3f}"
            lines.append(f"samples step {s.step}: faces {s.detection_rate:.0%}, similarity {sim}, "
                         f"near-copies {s.near_copies}")
        lines.append(f"best step: {self.best_step if self.best_step is not None else 'not measured'}")
        if self.rule_violations:
            lines.append("dev run; rules not met: " + ", ".join(v["code"] for v in self.rule_violations))
        if self.error:
            lines.append(f"error [{self.error['code']}]: {self.error['message']}")
        return "\n".join(lines)


def _gib(n: int | None) -> str:
    return "not measured" if n is None else f"{n / 2**30:.2f} GiB"
