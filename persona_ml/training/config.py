"""Training presets: ``configs/train/*.yaml`` -> a frozen ``TrainConfig``.

Loading is strict (an unknown key raises naming its dotted path, ``optimizer.lr_sheduler``),
``--set key=value`` overrides go through the same checks, and the resolved config is written
beside the outputs as ``config.resolved.yaml`` so a run can be reproduced from its folder.

How the presets relate to the platform's LoRA rules (``configs/lora_rules.yaml``, steps
1000-1500, rank 16-32, base model flux-dev): every run builds the ``LoraRequest`` the service
would send (plan, accepted photos, steps, rank, base model) and checks it before any model is
loaded. ``rules.mode: enforce`` (the default, and the only mode a real base model accepts)
refuses a violating run with ``LoraRuleError``. ``rules.mode: dev`` exists for the code-built
``tiny-flux`` model only (a config error with any other base model): the violations are still
computed, logged as warnings and recorded in ``TrainResult.rule_violations``, so a 40-step CPU
test run is visibly a developer run, never a silent exception to the rules.

``rules.mode: research`` is the researcher's one-off run on a real base (a 200-step test on a
local FLUX.1 folder, a custom Flux): the rules are checked, every violation is logged as a
warning, recorded in ``TrainResult.rule_violations``, in the LoRA's header
(``persona_ml.rule_violations``) and on its model card, and training goes on. No preset uses it;
it must be set explicitly, and a job given the service's ``LoraRequest`` refuses it (the service
path always enforces the rules).

Example:
    >>> from persona_ml.training.config import load_train_config
    >>> cfg = load_train_config("tiny-cpu", overrides=["steps=20"])   # doctest: +SKIP
    >>> cfg.steps, cfg.lora.rank                                       # doctest: +SKIP
    (20, 4)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .._json import short_repr
from ..config import config_file, load_config, to_dict
from ..errors import ConfigError

DEV_BASE_MODELS = ("tiny-flux",)
RESOLVED_NAME = "config.resolved.yaml"


def _is_number(value: object) -> bool:
    """A finite int or float (not a bool): NaN would pass every ``x > 0`` check, a string would crash it."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (_is_number(value) and value > 0):  # written so that NaN fails
            raise ConfigError(f"{type(obj).__name__}.{name} must be a finite number > 0, got {short_repr(value)}",
                              field=name, value=value)


def _in_range(obj: object, name: str, field_path: str, lo: float, hi: float, *, hi_open: bool = True,
              lo_open: bool = False) -> None:
    """``lo <= value < hi`` (or ``<=``/``>`` per the flags), NaN and non-numbers refused."""
    value = getattr(obj, name)
    ok = _is_number(value) and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"{field_path} must be in {interval}, got {short_repr(value)}", field=field_path, value=value)


@dataclass(frozen=True)
class RulesConfig:
    """How the platform's LoRA rules apply to this run (see the module docstring).

    Attributes:
        mode: ``"enforce"`` refuses a violating request before loading any model; ``"dev"``
            (tiny-flux only) records the violations and trains anyway; ``"research"`` (any base,
            never with a service ``LoraRequest``) does the same, logged and written into the LoRA.
        plan: the plan the request is made under when the caller passes no ``LoraRequest``.
    """

    mode: Literal["enforce", "dev", "research"] = "enforce"
    plan: str = "pro"


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapter shape.

    Attributes:
        rank: LoRA rank r.
        alpha: scaling numerator (the update is ``B @ A * alpha / rank``).
        dropout: dropout on the LoRA branch.
        targets: module-name suffixes to adapt; ``None`` uses ``export.DEFAULT_LORA_TARGETS``
            (the attention projections of the double and the single blocks).
    """

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _positive(self, "rank", "alpha")
        _in_range(self, "dropout", "lora.dropout", 0.0, 1.0)


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer and learning-rate schedule.

    Attributes:
        name: ``"adamw8bit"`` uses bitsandbytes' 8-bit AdamW when installed and otherwise falls
            back to ``torch.optim.AdamW`` (logged, recorded in the result); ``"adamw"`` always
            uses torch's.
        scheduler: ``constant`` | ``constant_with_warmup`` | ``linear`` | ``cosine``.
    """

    name: Literal["adamw", "adamw8bit"] = "adamw8bit"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        _positive(self, "lr", "eps")
        for name in ("warmup_steps", "weight_decay", "max_grad_norm"):
            if not (_is_number(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"optimizer.{name} must be a finite number >= 0, got {short_repr(getattr(self, name))}",
                                  field=f"optimizer.{name}", value=getattr(self, name))
        betas = self.betas
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2
                and all(_is_number(b) and 0.0 <= b < 1.0 for b in betas)):
            # torch.optim.AdamW raises on a beta outside [0, 1) only when the optimizer is built, after the model load
            raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {short_repr(betas)}",
                              field="optimizer.betas", value=list(betas) if isinstance(betas, (tuple, list)) else betas)


@dataclass(frozen=True)
class NoiseConfig:
    """Flow-matching timestep sampling, as the Flux trainers users trust do it.

    Attributes:
        timestep_sampling: ``flux_shift`` (sigmoid of a normal, then the resolution-dependent
            shift the Flux scheduler uses: mu from the image token count between
            ``base_shift`` at 256 tokens and ``max_shift`` at 4096, as kohya's ``flux_shift``
            and ai-toolkit's ``flowmatch`` do); ``shift`` (sigmoid then the fixed ``shift``,
            SD3-style); ``sigmoid`` (logit-normal, no shift); ``uniform``.
        sigmoid_scale: std of the normal fed to the sigmoid.
        shift: fixed shift for ``shift`` sampling.
        base_shift, max_shift: mu at 256 and 4096 image tokens for ``flux_shift``.
        guidance: value fed to the transformer's guidance embedding while training (1.0, as
            ai-toolkit/SimpleTuner/kohya do for dev).
    """

    timestep_sampling: Literal["flux_shift", "shift", "sigmoid", "uniform"] = "flux_shift"
    sigmoid_scale: float = 1.0
    shift: float = 3.0
    base_shift: float = 0.5
    max_shift: float = 1.15
    guidance: float = 1.0

    def __post_init__(self) -> None:
        _positive(self, "sigmoid_scale", "shift")
        for name in ("base_shift", "max_shift", "guidance"):
            if not _is_number(getattr(self, name)):
                raise ConfigError(f"noise.{name} must be a finite number, got {short_repr(getattr(self, name))}",
                                  field=f"noise.{name}", value=getattr(self, name))


@dataclass(frozen=True)
class DataConfig:
    """How prepared items become training samples.

    Attributes:
        resolutions: each prepared image is trained at each of these sizes (the side of a square
            of the same area, kept to the item's aspect ratio and a multiple of 16 px) that does
            not upscale it; the bucket resolution is part of the cache key.
        caption_dropout: probability of training a sample with the empty caption; ``None``
            takes the prepared dataset's value.
        face_loss_weight: loss weight inside the face mask (1.0 = unweighted); the weight is
            ``1 + (face_loss_weight - 1) * mask`` on the packed latent grid.
        batch_size: samples per process per micro-step, all of one bucket (width x height), stacked
            into one forward and backward pass. Each epoch's seeded permutation is walked in
            order and every sample joins the open batch of its bucket; a batch is drawn when full,
            and an epoch's unfilled batches are drawn last, in the order they were opened (with
            ``batch_size: 1`` this is exactly the permutation).
        gradient_accumulation: micro-steps per optimizer step.
        max_sequence_length: T5 tokens (512 for dev).
    """

    resolutions: tuple[int, ...] = (512, 768, 1024)
    caption_dropout: float | None = 0.05
    face_loss_weight: float = 1.0
    batch_size: int = 1
    gradient_accumulation: int = 1
    max_sequence_length: int = 512

    def __post_init__(self) -> None:
        if not self.resolutions or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 16 and not r % 16
                                           for r in self.resolutions):
            raise ConfigError(f"data.resolutions must be multiples of 16 >= 16, got {short_repr(self.resolutions)}",
                              field="data.resolutions", value=list(self.resolutions))
        if self.caption_dropout is not None:
            _in_range(self, "caption_dropout", "data.caption_dropout", 0.0, 1.0)
        if not (_is_number(self.face_loss_weight) and self.face_loss_weight >= 1.0):
            raise ConfigError(f"data.face_loss_weight must be >= 1, got {short_repr(self.face_loss_weight)}",
                              field="data.face_loss_weight", value=self.face_loss_weight)
        _positive(self, "batch_size", "gradient_accumulation", "max_sequence_length")
        if not isinstance(self.max_sequence_length, int) or isinstance(self.max_sequence_length, bool):
            raise ConfigError(f"data.max_sequence_length must be an integer >= 1, got "
                              f"{short_repr(self.max_sequence_length)}", field="data.max_sequence_length",
                              value=self.max_sequence_length)


@dataclass(frozen=True)
class CacheConfig:
    """Latent and text-embedding cache.

    Attributes:
        enabled: ``False`` encodes every sample with the VAE and text encoders at every step
            (the benchmark's baseline; the encoders then stay loaded).
        dir: cache folder; ``None`` uses ``$PERSONA_ML_CACHE_DIR`` or ``~/.cache/persona_ml/train``.
    """

    enabled: bool = True
    dir: Path | None = None


@dataclass(frozen=True)
class CheckpointConfig:
    """``every`` optimizer steps a checkpoint is written; the newest ``keep_last`` are kept."""

    every: int = 250
    keep_last: int = 3

    def __post_init__(self) -> None:
        _positive(self, "every", "keep_last")


@dataclass(frozen=True)
class SampleConfig:
    """Fixed-prompt samples every ``every`` steps (0 = only at the end, -1 = never).

    ``{trigger}`` in a prompt is replaced by the dataset's trigger word. Each prompt is rendered
    once per seed. ``near_copy_pixel_similarity`` is the correlation of 32 x 32 grey thumbnails at
    or above which a sample counts as a copy of a training photo.
    """

    every: int = 250
    prompts: tuple[str, ...] = ("a portrait photo of {trigger}, studio light",
                                "a photo of {trigger} walking in a park, full body")
    seeds: tuple[int, ...] = (1000,)
    steps: int = 28
    guidance: float = 3.5
    width: int = 1024
    height: int = 1024
    near_copy_pixel_similarity: float = 0.97

    def __post_init__(self) -> None:
        if not (isinstance(self.every, int) and not isinstance(self.every, bool) and self.every >= -1):
            raise ConfigError(f"samples.every must be >= -1, got {short_repr(self.every)}", field="samples.every",
                              value=self.every)
        for name in ("width", "height"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 16 and not value % 16):
                # 0 passes `% 16` and a negative size passes too; both only failed inside the pipeline
                raise ConfigError(f"samples.{name} must be a positive multiple of 16, got {short_repr(value)}",
                                  field=f"samples.{name}", value=value)
        _positive(self, "steps")
        if not (_is_number(self.guidance) and self.guidance >= 0):
            raise ConfigError(f"samples.guidance must be a finite number >= 0, got {short_repr(self.guidance)}",
                              field="samples.guidance", value=self.guidance)
        _in_range(self, "near_copy_pixel_similarity", "samples.near_copy_pixel_similarity", -1.0, 1.0, hi_open=False)


@dataclass(frozen=True)
class TrainConfig:
    """One training preset (``configs/train/<name>.yaml``).

    Attributes:
        base_model: ``flux-dev`` (alias ``fal-ai/flux-lora``), ``flux`` (any local Flux-architecture
            diffusers folder given by ``base_model_path``) or ``tiny-flux``.
        base_model_path: folder of a diffusers-format model; ``None`` uses the model spec's lookup.
        precision: weights dtype of the frozen model and accelerate's mixed precision; the LoRA
            parameters stay fp32.
        quantization: the frozen transformer's weights (``persona_ml.models.quantization``):
            ``none``, ``int8-weight-only`` (torchao) or ``nf4`` (bitsandbytes, CUDA only); the
            LoRA is trained in fp32 on top and exports exactly as on an unquantized base.
        gradient_checkpointing: recompute transformer activations in the backward pass.
        steps: optimizer steps.
        seed: seeds LoRA init, data order, caption dropout, timesteps and noise.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """

    base_model: str = "flux-dev"
    base_model_path: Path | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    quantization: Literal["none", "int8-weight-only", "nf4"] = "none"
    gradient_checkpointing: bool = True
    steps: int = 1000
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    rules: RulesConfig = field(default_factory=RulesConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    samples: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        _positive(self, "steps")
        if self.rules.mode == "dev" and self.base_model not in DEV_BASE_MODELS:
            raise ConfigError(f"rules.mode 'dev' is only allowed with a code-built test model "
                              f"({', '.join(DEV_BASE_MODELS)}); base_model {self.base_model!r} is trained under "
                              "the platform's rules (rules.mode: enforce; a one-off research run may set "
                              "rules.mode: research)", field="rules.mode", value=self.rules.mode)

    def to_dict(self) -> dict:
        """Plain nested dict (lists for tuples, strings for paths)."""
        return to_dict(self)

    def training_hash(self) -> str:
        """sha256 over the fields that change what is trained (not cache dir, samples, checkpoint
        cadence or device); a checkpoint only resumes a run with the same hash."""
        d = self.to_dict()
        for key in ("cache", "samples", "checkpoint", "device", "base_model_path"):
            d.pop(key, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def preset_path(name_or_path: str | os.PathLike) -> Path:
    """``"tiny-cpu"`` -> ``configs/train/tiny-cpu.yaml``; an existing path is returned as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        return p
    return config_file(f"train/{name_or_path}.yaml")


def load_train_config(source: str | os.PathLike | dict, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a training preset strictly and apply ``key=value`` overrides.

    Args:
        source: a preset name (``"persona-flux-dev"``, ``"tiny-cpu"``), a YAML path or a mapping.
        overrides: ``"optimizer.lr=5e-5"`` style strings.

    Returns:
        The frozen ``TrainConfig``.

    Raises:
        ConfigError: missing file, unknown key (dotted path), wrong type, out-of-range value,
            or ``rules.mode: dev`` with a real base model.
    """
    if isinstance(source, dict):
        return load_config(TrainConfig, source, overrides)
    return load_config(TrainConfig, preset_path(source), overrides)


def write_resolved(config: TrainConfig, out_dir: str | os.PathLike) -> Path:
    """Write ``config.resolved.yaml`` (every field, defaults included) into ``out_dir`` atomically."""
    import yaml

    from .._atomic import atomic_write_text

    text = "# resolved training config written by persona_ml; load with load_train_config(path)\n"
    text += yaml.safe_dump(config.to_dict(), sort_keys=False)
    return atomic_write_text(Path(out_dir) / RESOLVED_NAME, text)


def replace(config: TrainConfig, **changes) -> TrainConfig:
    """``dataclasses.replace`` that re-runs validation (frozen configs are otherwise immutable)."""
    return dataclasses.replace(config, **changes)
