"""Export a trained Flux LoRA: diffusers/PEFT file, kohya/ComfyUI file, header metadata, model card.

Layout of an export folder::

    pytorch_lora_weights.safetensors   transformer.<module>.lora_A/B.weight; FluxPipeline.load_lora_weights(dir)
    <name>_kohya.safetensors           lora_unet_<bfl module>.lora_down/up.weight + .alpha (kohya, ComfyUI)
    README.md                          model card

Both safetensors headers carry the provenance (``LoraMetadata``: rank, alpha, steps, trigger, base
model name and fingerprint, dataset hash, persona_ml version, format). The diffusers file also
carries ``lora_adapter_metadata`` (the ``LoraConfig`` diffusers 0.42 rebuilds on load), so an
``alpha != rank`` scale survives loading; the weights are stored as trained.

Example:
    >>> exported = export_lora(transformer, "runs/anna/lora", metadata=LoraMetadata(
    ...     rank=16, alpha=16, steps=1000, trigger="ohwx", base_model="flux-dev",
    ...     base_model_fingerprint=base.fingerprint, dataset_hash=ds.info.dataset_hash))  # doctest: +SKIP
    >>> pipe.load_lora_weights(exported.out_dir)                                           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
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
    ModuleLora,
    extract_peft_lora,
    kohya_to_module_loras,
    lora_from_state_dict,
    lora_target_modules,
    to_diffusers_state_dict,
    to_kohya_state_dict,
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
        extra: more string fields (training hash, resolution...), stored as ``persona_ml.extra.<k>``.
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

    def to_safetensors(self) -> dict[str, str]:
        """Header form: ``{"persona_ml.rank": "16", ...}`` (safetensors metadata is str -> str)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra":
                out.update({f"{METADATA_PREFIX}extra.{k}": v for k, v in sorted(value.items())})
            elif f.name == "targets":
                out[METADATA_PREFIX + f.name] = ",".join(value)
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
                extra={k[len(p + "extra."):]: v for k, v in header.items() if k.startswith(p + "extra.")},
            )
        except (ValueError, InputError) as exc:
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
    """

    out_dir: Path
    diffusers_path: Path
    kohya_path: Path
    readme_path: Path
    metadata: LoraMetadata
    modules: tuple[str, ...]
    kohya_keys: int


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

    Args:
        lora: a PEFT-wrapped ``FluxTransformer2DModel`` (``add_adapter``/``get_peft_model``), or a
            LoRA state dict with ``[transformer.]<module>.lora_A.weight``/``lora_B.weight`` keys
            (scale ``metadata.alpha / rank``), or ``{module: ModuleLora}``.
        out_dir: export folder; created, or replaced if it holds only a previous export.
        metadata: provenance; ``format`` and ``targets`` are filled in per file.
        name: file stem of the kohya file; the trigger word by default.
        adapter_name: which PEFT adapter, when the model has several.
        dtype: cast the weights (e.g. ``torch.bfloat16``); as trained by default.

    Returns:
        ``ExportedLora`` with the paths written.

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
    if dtype is not None:
        loras = {m: ModuleLora(lo.A.to(dtype), lo.B.to(dtype), lo.scale) for m, lo in loras.items()}

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
    kohya_sd = to_kohya_state_dict(loras)  # fails on an unmappable module before anything is written
    diff_sd, lora_config = to_diffusers_state_dict(loras)
    meta = dataclasses.replace(metadata, targets=modules, format=FORMAT_DIFFUSERS)
    diff_header = {"format": "pt", **meta.to_safetensors(),
                   LORA_ADAPTER_METADATA_KEY: json.dumps({f"transformer.{k}": v for k, v in lora_config.items()},
                                                         indent=2, sort_keys=True)}
    kohya_meta = dataclasses.replace(meta, format=FORMAT_KOHYA)
    kohya_header = {
        "format": "pt",
        **kohya_meta.to_safetensors(),
        # the keys kohya sd-scripts writes, which ComfyUI/A1111 tools display
        "ss_network_module": "networks.lora_flux",
        "ss_network_dim": str(metadata.rank),
        "ss_network_alpha": str(metadata.alpha),
        "ss_base_model_version": "flux1",
        "ss_output_name": _safe_name(name or metadata.trigger),
        "ss_steps": str(metadata.steps),
    }
    kohya_file = f"{_safe_name(name or metadata.trigger)}_kohya.safetensors"
    with atomic_dir(out_dir) as tmp:
        (tmp / kohya_file).write_bytes(_safetensors_bytes(kohya_sd, kohya_header))
        (tmp / DIFFUSERS_WEIGHT_NAME).write_bytes(_safetensors_bytes(diff_sd, diff_header))
        (tmp / "README.md").write_text(_model_card(meta, kohya_file, len(modules)), encoding="utf-8")
    log.info("exported LoRA (%d modules, rank %d, alpha %s) to %s", len(modules), metadata.rank, metadata.alpha, out_dir)
    return ExportedLora(out_dir=out_dir, diffusers_path=out_dir / DIFFUSERS_WEIGHT_NAME,
                        kohya_path=out_dir / kohya_file, readme_path=out_dir / "README.md",
                        metadata=meta, modules=modules, kohya_keys=len(kohya_sd))


_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
              "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def _safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """Serialize like ``safetensors.torch.save`` but with a byte-stable header.

    safetensors keeps ``__metadata__`` in a hash map whose order changes from run to run; the
    trainer promises a bitwise-identical LoRA for a resumed run, so the header is written here
    with sorted keys (the file is a standard safetensors file).
    """
    import struct

    import torch

    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
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


def _model_card(meta: LoraMetadata, kohya_file: str, n_modules: int) -> str:
    license_line = {
        "flux-dev": "Derived from FLUX.1 [dev]: use is subject to the FLUX.1 [dev] Non-Commercial License.",
        "tiny-flux": "Trained on tiny-flux (random weights): for tests and demos only.",
    }.get(meta.base_model, f"Subject to the license of the base model {meta.base_model}.")
    return f"""# LoRA `{meta.trigger}`

Character LoRA for **{meta.base_model}** trained with persona_ml {meta.persona_ml_version}.
{license_line}

| | |
|---|---|
| trigger word | `{meta.trigger}` |
| base model | `{meta.base_model}` |
| base model fingerprint | `{meta.base_model_fingerprint}` |
| rank / alpha | {meta.rank} / {meta.alpha:g} |
| steps | {meta.steps} |
| adapted modules | {n_modules} |
| dataset hash | `{meta.dataset_hash or "unknown"}` |

## Files

- `{DIFFUSERS_WEIGHT_NAME}`: diffusers/PEFT keys; the LoRA scale is in the header (`lora_adapter_metadata`).
- `{kohya_file}`: kohya / ComfyUI keys (BFL layout, fused qkv) with `.alpha`.

## Use

```python
from diffusers import FluxPipeline
pipe = FluxPipeline.from_pretrained("/path/to/FLUX.1-dev", local_files_only=True)
pipe.load_lora_weights("<this folder>")
image = pipe("a portrait photo of {meta.trigger}", guidance_scale=3.5).images[0]
```

In ComfyUI, put `{kohya_file}` in `models/loras` and use a LoRA loader node.
"""
