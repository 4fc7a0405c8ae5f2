"""Export a trained Flux LoRA: diffusers/PEFT file, kohya/ComfyUI file, header metadata, model card.

Layout of an export folder::

    pytorch_lora_weights.safetensors   transformer.<module>.lora_A/B.weight; FluxPipeline.load_lora_weights(dir)
    <name>_kohya.safetensors           lora_unet_<bfl module>.lora_down/up.weight + .alpha (kohya, ComfyUI)
    README.md                          model card

Both safetensors headers carry the provenance (``LoraMetadata``: rank, alpha, steps, trigger, base
model name and fingerprint, dataset hash, persona_ml version, format) and the ``modelspec.*`` keys UI
tools read (architecture, implementation, title, trigger phrase, resolution, date). Each file is
exact in every loader named in its model card, whether or not that loader reads the header:

* the diffusers file has each module's ``alpha / rank`` folded into ``lora_B`` and a
  ``lora_adapter_metadata`` with ``lora_alpha == r`` (diffusers applies scale 1, and so does
  ComfyUI, which ignores the header and applies a pair without ``.alpha`` at scale 1);
* the kohya file carries one ``.alpha`` for every module (``ss_network_alpha``), the factor each
  module needs folded into ``lora_up``, true ``ss_network_dim`` / ``ss_network_args``
  (``network_reg_dims`` with the fused modules' real ranks) and the ``ss_*`` keys kohya-family
  tools read (``ss_base_model_version``, ``ss_tag_frequency``, ``ss_num_train_images``,
  ``ss_resolution``, ``ss_training_started_at``, ``sshs_model_hash``).

Example:
    >>> exported = export_lora(transformer, "runs/anna/lora", metadata=LoraMetadata(
    ...     rank=16, alpha=16, steps=1000, trigger="ohwx", base_model="flux-dev",
    ...     base_model_fingerprint=base.fingerprint, dataset_hash=ds.info.dataset_hash))  # doctest: +SKIP
    >>> pipe.load_lora_weights(exported.out_dir)                                           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_ml._atomic import atomic_dir
from persona_ml.errors import ArtifactError, InputError
from persona_ml.lora.formats import (
    DEFAULT_LORA_TARGETS,
    KohyaLayout,
    ModuleLora,
    extract_peft_lora,
    kohya_layout,
    kohya_to_module_loras,
    lora_from_state_dict,
    lora_target_modules,
    to_diffusers_state_dict,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "DIFFUSERS_WEIGHT_NAME",
    "ExportedLora",
    "LoraMetadata",
    "ModuleLora",
    "export_lora",
    "lora_target_modules",
    "read_lora_metadata",
    "read_lora_file",
    "kohya_to_module_loras",
]

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
FORMAT_DIFFUSERS = "diffusers-peft"
FORMAT_KOHYA = "kohya-flux"
METADATA_PREFIX = "persona_ml."
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base
# modelspec architecture ids (kohya sd-scripts library/sai_model_spec.py: ARCH_FLUX_1_DEV ...)
_ARCHITECTURES = {"flux-dev": "flux-1-dev", "flux-schnell": "flux-1-schnell"}
# modelspec implementation ids (same file: IMPL_FLUX for BFL-layout weights, IMPL_DIFFUSERS)
IMPL_BFL = "https://github.com/black-forest-labs/flux"
IMPL_DIFFUSERS = "diffusers"
_EXPORT_FILES = re.compile(r"^(pytorch_lora_weights\.safetensors|.+_kohya\.safetensors|README\.md)$")


def _version() -> str:
    from persona_ml import __version__

    return __version__


@dataclass(frozen=True)
class LoraMetadata:
    """Provenance stored in every exported LoRA's safetensors header (as ``persona_ml.<field>``).

    Attributes:
        rank: LoRA rank.
        alpha: LoRA alpha (scale = alpha / rank).
        steps: optimizer steps the weights were trained for.
        trigger: the trigger word of the character.
        base_model: canonical base-model name (``flux-dev``, ``tiny-flux``).
        base_model_fingerprint: ``LoadedBaseModel.fingerprint`` of the model trained on.
        dataset_hash: prepared dataset hash (``None`` when unknown).
        persona_ml_version: library version that wrote it.
        format: ``"diffusers-peft"`` or ``"kohya-flux"``; set per file by ``export_lora``.
        targets: the adapted module paths (comma-joined in the header).
        architecture: the base's architecture id as modelspec names it (``flux-1-dev``,
            ``flux-1-schnell``, ``flux-1`` for another FLUX.1-sized model, ``tiny-flux``);
            ``None`` derives it from ``base_model`` (``flux-dev`` -> ``flux-1-dev``, otherwise the
            name itself: a model is never labelled FLUX.1 by default).
        resolutions: training resolutions in px (``modelspec.resolution`` / ``ss_resolution`` use the largest).
        num_train_images: prepared training images (``ss_num_train_images``).
        tag_frequency: ``{dataset folder: {caption tag: count}}`` (kohya's ``ss_tag_frequency``).
        training_started_at: unix time the run started (``ss_training_started_at``, ``modelspec.date``).
        rule_violations: codes of the platform rules the run did not meet (dev / research runs).
        extra: more string fields (training hash, quantization...), stored as ``persona_ml.extra.<k>``.
    """

    rank: int
    alpha: float
    steps: int
    trigger: str
    base_model: str
    base_model_fingerprint: str
    dataset_hash: str | None = None
    persona_ml_version: str = field(default_factory=_version)
    format: str = FORMAT_DIFFUSERS
    targets: tuple[str, ...] = ()
    architecture: str | None = None
    resolutions: tuple[int, ...] = ()
    num_train_images: int | None = None
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)
    training_started_at: float | None = None
    rule_violations: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool):
            object.__setattr__(self, "alpha", float(self.alpha))  # same header bytes for 16 and 16.0
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise InputError(f"rank must be a positive integer, got {self.rank!r}", field="rank", value=self.rank)
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise InputError(f"steps must be a non-negative integer, got {self.steps!r}", field="steps", value=self.steps)
        if not float(self.alpha) > 0:
            raise InputError(f"alpha must be > 0, got {self.alpha!r}", field="alpha", value=self.alpha)
        for name in ("trigger", "base_model", "base_model_fingerprint"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InputError(f"{name} must be a non-empty string", field=name, value=getattr(self, name))
        bad = {k: v for k, v in self.extra.items() if not isinstance(k, str) or not isinstance(v, str)}
        if bad:
            raise InputError("extra metadata must map str to str", field="extra", value=bad)
        object.__setattr__(self, "resolutions", tuple(int(r) for r in self.resolutions))
        object.__setattr__(self, "rule_violations", tuple(self.rule_violations))
        if self.training_started_at is not None:
            object.__setattr__(self, "training_started_at", float(self.training_started_at))

    @property
    def model_architecture(self) -> str:
        """``architecture``, or the one implied by ``base_model`` (never FLUX.1 for an unknown model)."""
        return self.architecture or _ARCHITECTURES.get(self.base_model, self.base_model)

    @property
    def is_flux1(self) -> bool:
        """Made on a FLUX.1-sized model (what ComfyUI, Forge and kohya's Flux loaders take)."""
        arch = self.model_architecture
        return arch == "flux-1" or arch.startswith("flux-1-")

    def to_safetensors(self) -> dict[str, str]:
        """Header form: ``{"persona_ml.rank": "16", ...}`` (safetensors metadata is str -> str)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra":
                out.update({f"{METADATA_PREFIX}extra.{k}": v for k, v in sorted(value.items())})
            elif f.name in ("targets", "resolutions", "rule_violations"):
                if value or f.name == "targets":
                    out[METADATA_PREFIX + f.name] = ",".join(str(v) for v in value)
            elif f.name == "tag_frequency":
                if value:
                    out[METADATA_PREFIX + f.name] = json.dumps(value, sort_keys=True)
            elif f.name == "training_started_at":
                if value is not None:
                    out[METADATA_PREFIX + f.name] = repr(value)
            elif value is not None:
                out[METADATA_PREFIX + f.name] = str(value)
        return out

    @classmethod
    def from_safetensors(cls, header: Mapping[str, str], *, source: str = "") -> LoraMetadata:
        """Parse the header form back.

        Raises:
            ArtifactError: (``code="lora_metadata_missing"``) a required field is absent or malformed.
        """
        p = METADATA_PREFIX
        required = ("rank", "alpha", "steps", "trigger", "base_model", "base_model_fingerprint")
        missing = [k for k in required if p + k not in header]
        if missing:
            raise ArtifactError(f"{source or 'LoRA'}: no persona_ml metadata field(s) {missing} in the header",
                                code="lora_metadata_missing", field=missing[0], value=None, path=source)
        try:
            return cls(
                rank=int(header[p + "rank"]),
                alpha=float(header[p + "alpha"]),
                steps=int(header[p + "steps"]),
                trigger=header[p + "trigger"],
                base_model=header[p + "base_model"],
                base_model_fingerprint=header[p + "base_model_fingerprint"],
                dataset_hash=header.get(p + "dataset_hash"),
                persona_ml_version=header.get(p + "persona_ml_version", "unknown"),
                format=header.get(p + "format", FORMAT_DIFFUSERS),
                targets=tuple(t for t in header.get(p + "targets", "").split(",") if t),
                architecture=header.get(p + "architecture"),
                resolutions=tuple(int(r) for r in header.get(p + "resolutions", "").split(",") if r),
                num_train_images=int(header[p + "num_train_images"]) if p + "num_train_images" in header else None,
                tag_frequency=json.loads(header[p + "tag_frequency"]) if p + "tag_frequency" in header else {},
                training_started_at=(float(header[p + "training_started_at"])
                                     if p + "training_started_at" in header else None),
                rule_violations=tuple(c for c in header.get(p + "rule_violations", "").split(",") if c),
                extra={k[len(p + "extra."):]: v for k, v in header.items() if k.startswith(p + "extra.")},
            )
        except (ValueError, TypeError, InputError) as exc:
            raise ArtifactError(f"{source or 'LoRA'}: malformed persona_ml metadata: {exc}",
                                code="lora_metadata_missing", field="header", value=str(exc), path=source) from exc


@dataclass(frozen=True)
class ExportedLora:
    """What ``export_lora`` wrote.

    Attributes:
        out_dir: the export folder (``load_lora_weights(out_dir)`` loads the diffusers file).
        diffusers_path: ``<out_dir>/pytorch_lora_weights.safetensors``.
        kohya_path: ``<out_dir>/<name>_kohya.safetensors``.
        readme_path: ``<out_dir>/README.md``.
        metadata: the provenance written (``format`` is the diffusers file's).
        modules: adapted module paths.
        kohya_keys: number of tensors in the kohya file.
        loaders: file name -> the tools that load it exactly (what the model card recommends).
        kohya_layout: ranks and alpha of the kohya file (``ss_network_dim`` / ``ss_network_args``).
    """

    out_dir: Path
    diffusers_path: Path
    kohya_path: Path
    readme_path: Path
    metadata: LoraMetadata
    modules: tuple[str, ...]
    kohya_keys: int
    loaders: dict[str, tuple[str, ...]] = field(default_factory=dict)
    kohya_layout: KohyaLayout | None = None


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "lora"


def export_lora(
    lora: Any,
    out_dir: str | os.PathLike,
    *,
    metadata: LoraMetadata,
    name: str | None = None,
    adapter_name: str | None = None,
    dtype: torch.dtype | None = None,
) -> ExportedLora:
    """Write a Flux transformer LoRA in diffusers and kohya formats, with metadata and a model card.

    The folder is written whole and atomically: a crash leaves the previous export (or none).
    Before anything is written, the kohya file is converted back with diffusers' own converter
    and compared with the trained weights: the model card recommends it for diffusers only when
    that round trip is exact.

    Args:
        lora: a PEFT-wrapped ``FluxTransformer2DModel`` (``add_adapter``/``get_peft_model``), or a
            LoRA state dict with ``[transformer.]<module>.lora_A.weight``/``lora_B.weight`` keys
            (scale ``metadata.alpha / rank``), or ``{module: ModuleLora}``.
        out_dir: export folder; created, or replaced if it holds only a previous export.
        metadata: provenance; ``format`` and ``targets`` are filled in per file.
        name: file stem of the kohya file and ``modelspec.title``; the trigger word by default.
        adapter_name: which PEFT adapter, when the model has several.
        dtype: cast the weights (e.g. ``torch.bfloat16``); as trained by default.

    Returns:
        ``ExportedLora`` with the paths written and the loaders each file is exact in.

    Raises:
        ArtifactError: nothing to export (``lora_empty``), a module with no kohya equivalent
            (``lora_module_unmappable``), a DoRA adapter (``lora_format_unsupported``).
        InputError: ``out_dir`` holds files other than a previous export (``export_dir_not_empty``),
            or ``metadata.rank`` is not the LoRA's (largest) rank (``lora_metadata_mismatch``).
    """
    if isinstance(lora, Mapping):
        values = list(lora.values())
        if values and all(isinstance(v, ModuleLora) for v in values):
            loras = dict(lora)
        else:
            loras = lora_from_state_dict(lora, alpha=metadata.alpha)
    else:
        loras = extract_peft_lora(lora, adapter_name)

    ranks = sorted({lo.rank for lo in loras.values()})
    if ranks[-1] != metadata.rank:
        raise InputError(f"metadata.rank is {metadata.rank} but the LoRA's rank is {ranks[-1]} "
                         f"(module ranks {ranks})", code="lora_metadata_mismatch", field="rank",
                         value=metadata.rank, actual=ranks[-1])
    out_dir = Path(out_dir)
    if out_dir.exists():
        foreign = sorted(p.name for p in out_dir.iterdir() if not _EXPORT_FILES.match(p.name))
        if foreign:
            raise InputError(f"{out_dir} holds files that are not a LoRA export ({foreign[:5]}); "
                             "choose an empty or new folder", code="export_dir_not_empty",
                             field="out_dir", value=str(out_dir))

    modules = tuple(sorted(loras))
    # scales are folded in float32 before any cast, so a bf16 export rounds once
    kohya_sd, layout = kohya_layout(loras)  # fails on an unmappable module before anything is written
    diff_sd, lora_config = to_diffusers_state_dict(loras)
    if dtype is not None:
        kohya_sd = {k: v if k.endswith(".alpha") else v.to(dtype) for k, v in kohya_sd.items()}
        diff_sd = {k: v.to(dtype) for k, v in diff_sd.items()}
    kohya_in_diffusers, why_not = _diffusers_reads_kohya(kohya_sd, loras)
    meta = dataclasses.replace(metadata, targets=modules, format=FORMAT_DIFFUSERS)
    title = name or metadata.trigger
    kohya_file = f"{_safe_name(title)}_kohya.safetensors"
    diff_header = {"format": "pt", **meta.to_safetensors(), **_modelspec(meta, title, IMPL_DIFFUSERS),
                   LORA_ADAPTER_METADATA_KEY: json.dumps({f"transformer.{k}": v for k, v in lora_config.items()},
                                                         indent=2, sort_keys=True)}
    kohya_meta = dataclasses.replace(meta, format=FORMAT_KOHYA)
    kohya_header = {"format": "pt", **kohya_meta.to_safetensors(), **_modelspec(kohya_meta, title, IMPL_BFL),
                    **_kohya_header(kohya_meta, layout, _safe_name(title))}
    loaders = {
        DIFFUSERS_WEIGHT_NAME: ("diffusers", *(("ComfyUI",) if meta.is_flux1 else ())),
        kohya_file: ((("kohya sd-scripts", "ComfyUI", "Forge") if meta.is_flux1 else ("kohya sd-scripts",))
                     + (("diffusers",) if kohya_in_diffusers else ())),
    }
    with atomic_dir(out_dir) as tmp:
        (tmp / kohya_file).write_bytes(_safetensors_bytes(kohya_sd, kohya_header, model_hash=True))
        (tmp / DIFFUSERS_WEIGHT_NAME).write_bytes(_safetensors_bytes(diff_sd, diff_header))
        (tmp / "README.md").write_text(_model_card(meta, kohya_file, len(modules), loaders, layout, why_not),
                                       encoding="utf-8")
    log.info("exported LoRA (%d modules, rank %d, alpha %s) to %s", len(modules), metadata.rank, metadata.alpha, out_dir)
    return ExportedLora(out_dir=out_dir, diffusers_path=out_dir / DIFFUSERS_WEIGHT_NAME,
                        kohya_path=out_dir / kohya_file, readme_path=out_dir / "README.md",
                        metadata=meta, modules=modules, kohya_keys=len(kohya_sd), loaders=loaders,
                        kohya_layout=layout)


def _modelspec(meta: LoraMetadata, title: str, implementation: str) -> dict[str, str]:
    """The ``modelspec.*`` keys (SAI model spec 1.0.1, as kohya sd-scripts writes them) that UI
    tools (Forge, ComfyUI-Lora-Manager) read for the base model and the trigger word."""
    out = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": f"{meta.model_architecture}/lora",
        "modelspec.implementation": implementation,
        "modelspec.title": title,
        "modelspec.trigger_phrase": meta.trigger,
        "modelspec.description": f"character LoRA of {meta.trigger} on {meta.base_model}, trained with persona_ml",
    }
    if meta.resolutions:
        r = max(meta.resolutions)
        out["modelspec.resolution"] = f"{r}x{r}"
    if meta.training_started_at is not None:
        out["modelspec.date"] = datetime.datetime.fromtimestamp(meta.training_started_at,
                                                                datetime.timezone.utc).isoformat(timespec="seconds")
    return out


def _kohya_header(meta: LoraMetadata, layout: KohyaLayout, output_name: str) -> dict[str, str]:
    """The ``ss_*`` keys kohya sd-scripts' ``train_network.py`` writes, with true values.

    ``ss_network_dim`` is the base rank and ``ss_network_args`` names the modules of another rank
    (``network_reg_dims``): kohya's resume path (``--network_weights`` + ``create_network``) then
    builds every module at its real rank, and ``ss_network_alpha`` is the one alpha every module
    carries. ``ss_base_model_version`` is ``flux1`` only for a FLUX.1-sized base.
    """
    out = {
        "ss_network_module": "networks.lora_flux",
        "ss_network_dim": str(layout.network_dim),
        "ss_network_alpha": repr(float(layout.network_alpha)),
        "ss_base_model_version": "flux1" if meta.is_flux1 else meta.model_architecture,
        "ss_output_name": output_name,
        "ss_steps": str(meta.steps),
    }
    if layout.reg_dims:
        out["ss_network_args"] = json.dumps({"network_reg_dims": layout.network_reg_dims()})
    if meta.num_train_images is not None:
        out["ss_num_train_images"] = str(meta.num_train_images)
    if meta.resolutions:
        r = max(meta.resolutions)
        out["ss_resolution"] = f"({r}, {r})"
    if meta.training_started_at is not None:
        out["ss_training_started_at"] = repr(meta.training_started_at)
    if meta.tag_frequency:
        out["ss_tag_frequency"] = json.dumps(meta.tag_frequency, sort_keys=True)
    return out


def _diffusers_reads_kohya(kohya_sd: Mapping[str, torch.Tensor], loras: Mapping[str, ModuleLora]) -> tuple[bool, str]:
    """Convert the kohya file with diffusers' converter and compare every module's weight change
    on random probes (no dense delta is formed). Returns ``(exact, reason when not)``."""
    import torch

    try:
        back = kohya_to_module_loras(kohya_sd)
    except ArtifactError as exc:
        return False, exc.message
    gen = torch.Generator().manual_seed(0)
    for module, lora in loras.items():
        got = back.get(module)
        if got is None:
            return False, f"diffusers' converter drops module {module}"
        x = torch.randn(lora.A.shape[1], 2, generator=gen)
        want = lora.scale * (lora.B.float() @ (lora.A.float() @ x))
        have = got.scale * (got.B.float() @ (got.A.float() @ x))
        tol = 1e-2 if lora.A.dtype != torch.float32 or got.A.dtype != torch.float32 else 1e-4
        if have.shape != want.shape or not torch.allclose(have, want, rtol=tol, atol=tol * float(want.abs().max() + 1e-12)):
            return False, f"diffusers' converter changes module {module}"
    return True, ""


_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
              "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def _safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], *,
                       model_hash: bool = False) -> bytes:
    """Serialize like ``safetensors.torch.save`` but with a byte-stable header.

    safetensors keeps ``__metadata__`` in a hash map whose order changes from run to run; the
    trainer promises a bitwise-identical LoRA for a resumed run, so the header is written here
    with sorted keys (the file is a standard safetensors file).

    ``model_hash`` adds ``sshs_model_hash``: the sha256 of everything after the header, which is
    what sd-webui-additional-networks and kohya (``train_util.addnet_hash_safetensors``) compute
    from the file.
    """
    import hashlib
    import struct

    import torch

    header: dict[str, Any] = {"__metadata__": {}}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _ST_DTYPES:
            raise ArtifactError(f"cannot store dtype {dtype} of {name}", code="lora_format_unsupported",
                                field=name, value=dtype)
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    meta = dict(metadata)
    if model_hash:
        h = hashlib.sha256()
        for chunk in chunks:
            h.update(chunk)
        meta["sshs_model_hash"] = h.hexdigest()
    header["__metadata__"] = dict(sorted(meta.items()))
    raw = json.dumps(header, separators=(",", ":"), sort_keys=False).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)


def _lora_file(path: str | os.PathLike) -> Path:
    from persona_ml._files import FileProblem, check_regular_file

    path = Path(path)
    try:
        if path.is_dir():
            path = path / DIFFUSERS_WEIGHT_NAME
        check_regular_file(path)
    except FileProblem as exc:
        if exc.reason == "not_found":
            raise ArtifactError(f"no LoRA file at {path}", code="lora_not_found", field="path",
                                value=str(path)) from None
        code = "path_invalid" if exc.reason in ("not_a_file", "name_too_long") else "lora_format_unknown"
        raise ArtifactError(exc.message, code=code, field="path", value=str(path), **exc.details()) from None
    except OSError as exc:  # is_dir on a name over the filesystem's limit
        raise ArtifactError(f"{path}: {exc.strerror or exc}", code="path_invalid", field="path",
                            value=str(path)) from None
    return path


def _read_header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError
        raise ArtifactError(f"{path} is not a readable safetensors file: {exc}", code="lora_format_unknown",
                            field="path", value=str(path)) from exc


def read_lora_metadata(path: str | os.PathLike) -> LoraMetadata:
    """Read the persona_ml provenance of an exported LoRA without loading its tensors.

    Args:
        path: a ``.safetensors`` file (either format) or an export folder (its diffusers file).

    Returns:
        ``LoraMetadata``.

    Raises:
        ArtifactError: no file (``lora_not_found``), not safetensors (``lora_format_unknown``),
            or no persona_ml metadata (``lora_metadata_missing``).
    """
    file = _lora_file(path)
    return LoraMetadata.from_safetensors(_read_header(file), source=str(file))


def read_lora_file(path: str | os.PathLike) -> dict[str, ModuleLora]:
    """Load an exported LoRA file (either format) into ``{module: ModuleLora}`` with true scales.

    The diffusers file's scales come from its ``lora_adapter_metadata``; a kohya file goes
    through diffusers' own converter (alpha folded in, scale 1).

    Args:
        path: a ``.safetensors`` file or an export folder.

    Returns:
        ``{diffusers module path: ModuleLora}``; ``delta()`` gives each weight change.

    Raises:
        ArtifactError: unreadable or unknown format, a bad rank/alpha pattern.
        LoraValidationError: a malformed header, non-float or rank-0 weights
            (``lora_dtype_invalid``, ``lora_shape_mismatch``), adapter metadata of the wrong
            type or with non-positive r/alpha (``lora_metadata_invalid``).
    """
    from safetensors.torch import load_file

    from persona_ml.errors import LoraValidationError
    from persona_ml.lora.validation import _check_adapter_metadata, _check_alphas, _check_entries, read_safetensors_header

    file = _lora_file(path)
    try:  # the header's dtypes, shapes and adapter metadata, before any tensor is used
        entries, header = read_safetensors_header(file)
        _check_entries(file, entries)
        meta = _check_adapter_metadata(file, header.get(LORA_ADAPTER_METADATA_KEY))
        sd = load_file(str(file))
        _check_alphas(file, sd)
    except LoraValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 (safetensors' own error type on damaged data)
        raise ArtifactError(f"{file} is not a readable safetensors file: {exc}", code="lora_format_unknown",
                            field="path", value=str(file)) from None
    if any(k.endswith(".lora_down.weight") for k in sd):
        return kohya_to_module_loras(sd)
    loras = lora_from_state_dict(sd, alpha=1.0)
    cfg = {k.removeprefix("transformer."): v for k, v in meta.items()} if meta else {}
    r, alpha = cfg.get("r", 8), cfg.get("lora_alpha", 8)
    out = {}
    try:
        for module, lo in loras.items():
            rank = next((v for k, v in cfg.get("rank_pattern", {}).items() if _pattern_matches(k, module)), None)
            a = next((v for k, v in cfg.get("alpha_pattern", {}).items() if _pattern_matches(k, module)), None)
            rank = rank if rank is not None else (r if cfg else lo.rank)
            a = a if a is not None else (alpha if cfg else lo.rank)
            out[module] = ModuleLora(lo.A, lo.B, float(a) / rank)
    except re.error as exc:
        raise ArtifactError(f"{file}: a rank/alpha pattern of its adapter metadata is not a valid regex ({exc})",
                            code="lora_metadata_invalid", field=LORA_ADAPTER_METADATA_KEY, value=str(exc)) from None
    return out


def _pattern_matches(pattern: str, module: str) -> bool:
    """peft's rule for rank/alpha pattern keys (a regex matched at a module-name boundary)."""
    if not isinstance(pattern, str) or len(pattern) > 1000:
        raise re.error(f"pattern {str(pattern)[:40]!r} is not a string of at most 1000 characters")
    return re.match(rf"(.*\.)?({pattern})$", module) is not None


def _model_card(meta: LoraMetadata, kohya_file: str, n_modules: int, loaders: Mapping[str, tuple[str, ...]],
                layout: KohyaLayout, why_not: str) -> str:
    license_line = {
        "flux-dev": "Derived from FLUX.1 [dev]: use is subject to the FLUX.1 [dev] Non-Commercial License.",
        "tiny-flux": "Trained on tiny-flux (random weights): for tests and demos only.",
    }.get(meta.base_model, f"Subject to the license of the base model {meta.base_model}.")
    rules = ""
    if meta.rule_violations:
        rules = ("\n**Trained outside the platform's LoRA rules** (a developer or research run): "
                 + ", ".join(f"`{c}`" for c in meta.rule_violations) + ". Not for the Characters API.\n")
    res = f"{max(meta.resolutions)} px" if meta.resolutions else "unknown"
    kohya_loaders = loaders[kohya_file]
    diff_loaders = loaders[DIFFUSERS_WEIGHT_NAME]
    kohya_note = ""
    if "diffusers" not in kohya_loaders:
        kohya_note = f" diffusers cannot load it exactly ({why_not}): use `{DIFFUSERS_WEIGHT_NAME}` with diffusers."
    resume = (f"`--network_weights {kohya_file} --network_dim {layout.network_dim} --network_alpha "
              f"{layout.network_alpha:g}`")
    if layout.reg_dims:
        resume += f" `--network_args \"network_reg_dims={layout.network_reg_dims()}\"`"
    comfy = ""
    if "ComfyUI" in kohya_loaders or "ComfyUI" in diff_loaders:
        comfy = "\nIn ComfyUI, put either file in `models/loras` and use a LoRA loader node (strength 1.0 = as trained).\n"
    return f"""# LoRA `{meta.trigger}`

Character LoRA for **{meta.base_model}** (`{meta.model_architecture}`) trained with persona_ml {meta.persona_ml_version}.
{license_line}
{rules}
| | |
|---|---|
| trigger word | `{meta.trigger}` |
| base model | `{meta.base_model}` |
| base model fingerprint | `{meta.base_model_fingerprint}` |
| rank / alpha | {meta.rank} / {meta.alpha:g} |
| steps | {meta.steps} |
| resolution | {res} |
| adapted modules | {n_modules} |
| dataset hash | `{meta.dataset_hash or "unknown"}` |

## Files

Each file is listed with the tools that load it exactly (the weight change applied is the trained one).

- `{DIFFUSERS_WEIGHT_NAME}`: diffusers/PEFT keys, the LoRA scale folded into `lora_B`. Exact in: {", ".join(diff_loaders)}.
- `{kohya_file}`: kohya keys (BFL layout, fused qkv), one alpha per module. Exact in: {", ".join(kohya_loaders)}.{kohya_note}

## Use

```python
from diffusers import FluxPipeline
pipe = FluxPipeline.from_pretrained("/path/to/base", local_files_only=True)
pipe.load_lora_weights("<this folder>")
image = pipe("a portrait photo of {meta.trigger}", guidance_scale=3.5).images[0]
```
{comfy}
To continue training in kohya sd-scripts: {resume} (or `--dim_from_weights`).
"""
