"""Check a LoRA file against the loaded base model before it is used, and bring it to one form.

Every LoRA a worker is asked to use goes through ``validate_lora`` first. It refuses, with a
coded ``LoraValidationError``:

- ``lora_file_invalid``: missing, empty, not a safetensors file, or unreadable tensors;
- ``lora_format_unknown``: keys in no format diffusers can convert (diffusers/PEFT, kohya or
  ComfyUI), or a file diffusers' converter rejects;
- ``lora_base_unknown``: no base-model fingerprint in the metadata (unless allowed);
- ``lora_base_mismatch``: trained on another base model (fingerprint from the metadata);
- ``lora_rank_too_large``: a rank above the generator's fixed maximum;
- ``lora_unused_keys``: keys that map to no module of this transformer, text-encoder LoRAs and
  other extras: each would be silently ignored by a plain ``load_lora_weights``;
- ``lora_shape_mismatch``: a module exists but the LoRA's shapes do not fit it.

A failure inside safetensors, diffusers or peft that is not their documented way of refusing an
input (``SafetensorError`` for the bytes; ``ValueError``/``KeyError`` from diffusers' key
converters) is a ``BackendError`` (code ``backend_error``, cause chained), never a format code:
a fault of a library must not tell the user their file is bad.

Conversion of kohya (``lora_unet_...lora_down``) and ComfyUI (``diffusion_model....``) keys is
diffusers' own (``FluxPipeline.lora_state_dict``). The result is a *canonical* PEFT state dict:
``<module>.lora_A.weight`` / ``lora_B.weight`` with each module's scaling (alpha / rank, as
diffusers would compute it) folded into ``lora_B`` and every module zero-padded to the file's
largest rank, so that loading it with ``lora_alpha == r`` gives the same outputs as loading the
file with diffusers, and any two canonical LoRAs can be hot-swapped into one adapter slot.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackendError, LoraValidationError

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

__all__ = ["ValidatedLora", "linear_modules", "read_safetensors_metadata", "validate_lora", "lora_file_fingerprint"]

# Metadata keys that may carry the base-model fingerprint / name (ours first, then common ones).
_FINGERPRINT_KEYS = ("persona_ml.base_model_fingerprint", "base_model_fingerprint", "persona_ml.base_model_hash",
                     "base_model_hash", "ss_base_model_hash")
_BASE_NAME_KEYS = ("persona_ml.base_model", "base_model", "base_model_name", "ss_base_model_version")
_MAX_HEADER_BYTES = 100 << 20


@dataclass(frozen=True)
class ValidatedLora:
    """A LoRA that passed every check, in canonical form (see the module docstring).

    Attributes:
        path: the file.
        sha256: its content hash.
        format: ``"diffusers"``, ``"kohya"`` or ``"comfyui"`` (the keys as found on disk).
        rank: the largest module rank (every canonical module is padded to it).
        target_modules: transformer module paths the LoRA changes, sorted.
        base_model: base-model name from the metadata (``None`` when absent).
        base_fingerprint: base-model fingerprint from the metadata (``None`` when absent).
        metadata: the safetensors header metadata (strings).
        state_dict: canonical tensors ``<module>.lora_A.weight`` ``(rank, in)`` and
            ``<module>.lora_B.weight`` ``(out, rank)``, scaling folded into B, on CPU.
        nbytes: bytes held by ``state_dict``.
    """

    path: Path
    sha256: str
    format: str
    rank: int
    target_modules: tuple[str, ...]
    base_model: str | None
    base_fingerprint: str | None
    metadata: Mapping[str, str] = field(repr=False)
    state_dict: Mapping[str, torch.Tensor] = field(repr=False)
    nbytes: int = 0

    def peft_metadata(self) -> dict[str, Any]:
        """The LoraConfig kwargs that load ``state_dict`` with scaling 1 on every module."""
        return {"r": self.rank, "lora_alpha": self.rank, "target_modules": list(self.target_modules),
                "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False, "lora_bias": False,
                "use_rslora": False, "lora_dropout": 0.0}


def linear_modules(transformer: Any) -> dict[str, tuple[int, int]]:
    """``{module path: (in_features, out_features)}`` of the transformer's ``nn.Linear`` layers.

    Modules wrapped by PEFT are reported under their original path (``.base_layer`` dropped);
    IP-Adapter layers (``encoder_hid_proj``, ``*.processor.to_k_ip``) are left out: they are not base weights.
    """
    import torch.nn as nn

    out: dict[str, tuple[int, int]] = {}
    for name, module in transformer.named_modules():
        if not isinstance(module, nn.Linear) or name.startswith("encoder_hid_proj") or ".processor." in name:
            continue
        parts = name.split(".")
        if "lora_A" in parts or "lora_B" in parts or "lora_embedding_A" in parts:
            continue
        if parts[-1] == "base_layer":
            name = ".".join(parts[:-1])
        out[name] = (module.in_features, module.out_features)
    return out


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, str]]:
    """``({tensor name: {"dtype", "shape", "data_offsets"}}, metadata)`` of a safetensors file,
    reading only its header, parsed within the bounds of ``persona_ml._parse`` (a header nested
    10,000 deep or holding a 5000-digit number is refused, not a ``RecursionError``).

    Raises:
        LoraValidationError: ``lora_file_invalid`` when the file is missing, empty, not
            safetensors or its header is malformed; ``path_invalid`` for a folder, FIFO or
            device named as the file, or a name over the filesystem's limit.
    """
    from .._files import FileProblem, check_regular_file
    from .._parse import ParseProblem, parse_safetensors_header, safetensors_header_length

    path = Path(path)
    try:
        size = check_regular_file(path).st_size
        with open(path, "rb") as fh:
            n = safetensors_header_length(fh.read(8), size, path.name)
            raw = fh.read(n)
    except FileProblem as exc:
        if exc.reason in ("not_a_file", "name_too_long"):
            raise LoraValidationError(exc.message, code="path_invalid", field="path", value=str(path),
                                      **exc.details()) from None
        message = f"LoRA file not found: {path}" if exc.reason == "not_found" else f"LoRA file {exc.message}"
        raise LoraValidationError(message, code="lora_file_invalid", field="path", value=str(path),
                                  **exc.details()) from None
    except ParseProblem as exc:
        raise LoraValidationError(exc.message, code="lora_file_invalid", field="path", value=str(path),
                                  reason="not_safetensors") from None
    except OSError as exc:
        raise LoraValidationError(f"{path.name} cannot be read: {exc.strerror or exc}", code="lora_file_invalid",
                                  field="path", value=str(path), reason="unreadable") from None
    try:
        return parse_safetensors_header(raw, size, path.name)
    except ParseProblem as exc:
        raise LoraValidationError(exc.message, code="lora_file_invalid", field="path", value=str(path),
                                  reason="bad_header") from None


def read_safetensors_metadata(path: str | os.PathLike) -> tuple[list[str], dict[str, str]]:
    """Keys and header metadata of a safetensors file, reading only its header.

    Raises:
        LoraValidationError: see ``read_safetensors_header``.
    """
    entries, meta = read_safetensors_header(path)
    return sorted(entries), meta


_WEIGHT_SUFFIXES_A = (".lora_A.weight", ".lora_down.weight", ".lora.down.weight")
_WEIGHT_SUFFIXES_B = (".lora_B.weight", ".lora_up.weight", ".lora.up.weight")


def _check_entries(path: Path, entries: Mapping[str, Mapping[str, Any]]) -> None:
    """Dtype and shape rules read from the header, before any tensor is loaded: LoRA weights are
    floating point and 2-D with a rank of at least 1; an ``.alpha`` is one number."""
    from .._parse import SAFETENSORS_FLOAT_DTYPES

    for key, entry in entries.items():
        dtype, shape = entry["dtype"], entry["shape"]
        if key.endswith(".alpha"):
            count = 1
            for d in shape:
                count *= d
            if count != 1:
                raise LoraValidationError(f"{path.name}: {key} must hold one number, has shape {shape}",
                                          code="lora_shape_mismatch", field=key, value=shape)
            continue
        if dtype not in SAFETENSORS_FLOAT_DTYPES:
            raise LoraValidationError(f"{path.name}: LoRA tensor {key} is {dtype}; LoRA weights must be floating point "
                                      "(integer or bool weights would be cast silently)", code="lora_dtype_invalid",
                                      field=key, value=dtype)
        if key.endswith(_WEIGHT_SUFFIXES_A + _WEIGHT_SUFFIXES_B):
            rank_dim = 0 if key.endswith(_WEIGHT_SUFFIXES_A) else 1
            if len(shape) != 2 or shape[rank_dim] < 1 or 0 in shape:
                raise LoraValidationError(f"{path.name}: LoRA tensor {key} has shape {shape}; a LoRA factor is 2-D "
                                          "with a rank of at least 1", code="lora_shape_mismatch", field=key,
                                          value=shape)


def _positive_number(value: Any, *, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if integer and not (isinstance(value, int) or float(value).is_integer()):
        return False
    return math.isfinite(value) and value > 0


def _check_adapter_metadata(path: Path, raw: str | None) -> dict[str, Any] | None:
    """``lora_adapter_metadata`` parsed and checked: a JSON object whose ``r``/``lora_alpha``
    (and rank/alpha patterns) are positive numbers."""
    from .._parse import ParseProblem, loads_json

    if not raw:
        return None
    try:
        meta = loads_json(raw, what=f"{path.name} lora_adapter_metadata")
    except ParseProblem as exc:
        raise LoraValidationError(exc.message, code="lora_metadata_invalid", field="lora_adapter_metadata",
                                  value=exc.reason) from None
    if not isinstance(meta, dict):
        raise LoraValidationError(f"{path.name}: lora_adapter_metadata must be a JSON object, got "
                                  f"{type(meta).__name__}", code="lora_metadata_invalid",
                                  field="lora_adapter_metadata", value=type(meta).__name__)
    for key, value in meta.items():
        name = key.rsplit(".", 1)[-1]
        if name in ("r", "lora_alpha") and not _positive_number(value, integer=name == "r"):
            raise LoraValidationError(f"{path.name}: adapter metadata {key} must be a positive "
                                      f"{'integer' if name == 'r' else 'number'}, got {value!r}",
                                      code="lora_metadata_invalid", field=key, value=value)
        if name in ("rank_pattern", "alpha_pattern"):
            if not isinstance(value, dict) or not all(
                    _positive_number(v, integer=name == "rank_pattern") for v in value.values()):
                raise LoraValidationError(f"{path.name}: adapter metadata {key} must map module patterns to positive "
                                          "numbers", code="lora_metadata_invalid", field=key, value=str(value)[:200])
    return meta


def _check_alphas(path: Path, tensors: Mapping[str, Any]) -> None:
    import torch

    for key, t in tensors.items():
        if key.endswith(".alpha"):
            if t.numel() != 1:
                raise LoraValidationError(f"{path.name}: {key} holds {t.numel()} values, not one",
                                          code="lora_shape_mismatch", field=key, value=list(t.shape))
            value = float(t.reshape(-1)[0].to(torch.float64))
            if not (math.isfinite(value) and value > 0):
                raise LoraValidationError(f"{path.name}: {key} is {value}; a LoRA alpha must be a positive number",
                                          code="lora_metadata_invalid", field=key, value=value)


def lora_file_fingerprint(metadata: Mapping[str, str]) -> tuple[str | None, str | None]:
    """``(base model name, base fingerprint)`` recorded in a LoRA's header metadata, if any.

    Reads our own exporter's metadata (``persona_ml.lora.export.read_lora_metadata``'s
    fields) and falls back on common key names.
    """
    from .._parse import ParseProblem, loads_json

    name = next((metadata[k] for k in _BASE_NAME_KEYS if metadata.get(k)), None)
    fp = next((metadata[k] for k in _FINGERPRINT_KEYS if metadata.get(k)), None)
    for blob_key in ("persona_ml", "persona_ml.metadata", "persona_ml_metadata"):
        blob = metadata.get(blob_key)
        if not blob:
            continue
        try:
            data = loads_json(blob, what=blob_key)
        except ParseProblem:  # deeply nested, NaN, not JSON: no fingerprint from it
            continue
        if isinstance(data, dict):
            name = name or _text(data.get("base_model")) or _text(data.get("base_model_name"))
            fp = fp or _text(data.get("base_model_fingerprint")) or _text(data.get("base_model_hash"))
    return name, fp


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _detect_format(keys: list[str]) -> str:
    if any(k.startswith("lora_unet_") or k.startswith("lora_te") for k in keys) and any(
            k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys):
        return "kohya"
    if any(k.startswith("diffusion_model.") for k in keys):
        return "comfyui"
    if any(k.startswith(("transformer.", "text_encoder.")) and (".lora_A." in k or ".lora_B." in k
                                                                 or ".lora.down." in k or ".lora.up." in k)
           for k in keys):
        return "diffusers"
    raise LoraValidationError(
        "the LoRA's keys match no known format (diffusers/PEFT 'transformer.<module>.lora_A.weight', kohya "
        "'lora_unet_<module>.lora_down.weight', ComfyUI 'diffusion_model.<module>.lora_A.weight')",
        code="lora_format_unknown", field="keys", value=keys[:5])


def validate_lora(
    path: str | os.PathLike,
    modules: Mapping[str, tuple[int, int]],
    *,
    base_fingerprint: str | None,
    max_rank: int,
    require_base_fingerprint: bool = True,
    dtype: torch.dtype | None = None,
) -> ValidatedLora:
    """Validate a LoRA file for this base model and return it in canonical form.

    Args:
        path: the ``.safetensors`` file (diffusers, kohya or ComfyUI keys).
        modules: ``linear_modules(transformer)`` of the base transformer.
        base_fingerprint: the loaded base model's fingerprint; ``None`` skips the comparison.
        max_rank: the largest rank the generator accepts (its hotswap slot size).
        require_base_fingerprint: refuse files whose metadata names no base fingerprint
            (third-party LoRAs); ``False`` accepts them after a warning.
        dtype: dtype of the canonical tensors (the transformer's); float32 by default.

    Returns:
        ValidatedLora.

    Raises:
        LoraValidationError: with one of the codes listed in the module docstring.
        BackendError: safetensors, diffusers or peft failed on a file they did not refuse.
    """
    import torch

    path = Path(path)
    entries, metadata = read_safetensors_header(path)
    keys = sorted(entries)
    if not keys:
        raise LoraValidationError(f"{path.name} holds no tensors", code="lora_file_invalid", field="path",
                                  value=str(path), reason="empty")
    _check_entries(path, entries)
    fmt = _detect_format(keys)
    base_name, fp = lora_file_fingerprint(metadata)
    if fp is None:
        if require_base_fingerprint and base_fingerprint is not None:
            raise LoraValidationError(
                f"{path.name} records no base-model fingerprint, so it cannot be checked against this base model; "
                "re-export it with persona_ml or allow unverified LoRAs explicitly",
                code="lora_base_unknown", field="metadata", value=sorted(metadata)[:10])
        log.warning("%s records no base-model fingerprint; using it unverified", path.name)
    elif base_fingerprint is not None and fp != base_fingerprint:
        raise LoraValidationError(
            f"{path.name} was trained on base model {base_name or '?'} ({fp}) but this generator runs "
            f"{base_fingerprint}", code="lora_base_mismatch", field="base_model_fingerprint", value=fp,
            expected=base_fingerprint, base_model=base_name)

    from diffusers import FluxPipeline
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    # One read of the file: its hash and its tensors come from the same bytes (a file re-exported
    # meanwhile cannot pair one version's sha256 with another's weights, and a large LoRA is not read twice).
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LoraValidationError(f"{path.name} cannot be read: {exc.strerror or exc}", code="lora_file_invalid",
                                  field="path", value=str(path), reason="unreadable") from None
    sha256 = hashlib.sha256(data).hexdigest()  # as _atomic.sha256_file
    try:
        tensors = load_safetensors(data)
    except SafetensorError as exc:  # the file's bytes: the caller's fault
        raise LoraValidationError(f"{path.name} is not a readable safetensors file: {str(exc)[:300]}",
                                  code="lora_file_invalid", field="path", value=str(path),
                                  reason="bad_tensors") from None
    except Exception as exc:  # MemoryError, a safetensors bug: not the file's fault
        raise BackendError(f"safetensors failed on {path.name}: {type(exc).__name__}: {str(exc)[:300]}",
                           stage="lora_read", library="safetensors", path=str(path)) from exc
    del data
    if fmt == "diffusers":
        source: Any = tensors
        original_modules: set[str] = set()
    else:
        # ComfyUI also writes lora_A/lora_B under diffusion_model.: the kohya converter takes them renamed.
        source = {k.replace(".lora_A.weight", ".lora_down.weight").replace(".lora_B.weight", ".lora_up.weight"): v
                  for k, v in tensors.items()}
        original_modules = {_kohya_module(k) for k in source}
        _check_kohya_pairs(path, source)  # what diffusers' converter would trip over with a bare RuntimeError
    _check_alphas(path, tensors)
    try:
        state_dict, alphas, _ = FluxPipeline.lora_state_dict(
            source, return_alphas=True, return_lora_metadata=True, local_files_only=True)
    except (ValueError, KeyError) as exc:  # diffusers' converters reject keys they cannot map this way
        raise LoraValidationError(f"{path.name} could not be converted as a {fmt} LoRA: "
                                  f"{type(exc).__name__}: {str(exc)[:400]}", code="lora_format_unknown",
                                  field="keys", value=str(path), format=fmt) from None
    except Exception as exc:  # anything else inside diffusers is a fault of the library, not of the file
        raise BackendError(f"diffusers' LoRA converter failed on {path.name} ({fmt}): {type(exc).__name__}: "
                           f"{str(exc)[:300]}", stage="lora_convert", library="diffusers", path=str(path),
                           format=fmt) from exc
    # diffusers reads its adapter config from the header when given a path; we pass the tensors, so parse it here
    diff_meta = _check_adapter_metadata(path, metadata.get("lora_adapter_metadata")) if fmt == "diffusers" else None
    if original_modules:
        _check_kohya_coverage(path, original_modules, state_dict)
    return _canonicalise(path, fmt, state_dict, alphas or {}, diff_meta, metadata, modules, base_name, fp,
                         max_rank, dtype or torch.float32, sha256)


def _kohya_module(key: str) -> str:
    for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha", ".dora_scale"):
        if key.endswith(suffix):
            key = key[: -len(suffix)]
            break
    if key.startswith("diffusion_model."):
        key = "lora_unet_" + key[len("diffusion_model."):]
    return key.replace(".", "_")


def _check_kohya_pairs(path: Path, source: Mapping[str, Any]) -> None:
    """Each kohya module: a 2-D ``lora_down`` ``(r, in)`` and ``lora_up`` ``(out, r)`` and a scalar ``alpha``.

    diffusers' converter concatenates and splits these tensors; a malformed file would surface as a
    torch ``RuntimeError`` from inside it, which could not be told apart from a library fault.
    """
    parts: dict[str, dict[str, Any]] = {}
    for k, v in source.items():
        for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
            if k.endswith(suffix):
                parts.setdefault(k[: -len(suffix)], {})[suffix] = v
                break
    for module, p in sorted(parts.items()):
        down, up, alpha = p.get(".lora_down.weight"), p.get(".lora_up.weight"), p.get(".alpha")
        if down is None or up is None:
            raise LoraValidationError(f"{path.name}: {module} lacks its lora_down or lora_up weight",
                                      code="lora_unused_keys", field="keys", value=[module])
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise LoraValidationError(
                f"{path.name}: {module} has lora_down {tuple(down.shape)} and lora_up {tuple(up.shape)}; a Linear "
                "LoRA needs (rank, in) and (out, rank)", code="lora_shape_mismatch", field=module,
                value=[list(down.shape), list(up.shape)])
        if alpha is not None and alpha.numel() != 1:
            raise LoraValidationError(f"{path.name}: {module}.alpha holds {alpha.numel()} values, not one",
                                      code="lora_shape_mismatch", field=f"{module}.alpha", value=list(alpha.shape))


def _check_kohya_coverage(path: Path, original: set[str], converted: Mapping[str, Any]) -> None:
    """diffusers' kohya converter drops some keys with only a log line; refuse such files."""
    from .formats import kohya_name

    covered = set()
    for k in converted:
        if k.startswith("transformer.") and k.endswith(".lora_A.weight"):
            try:
                covered.add(kohya_name(k[len("transformer."):-len(".lora_A.weight")])[0])
            except Exception:  # noqa: BLE001 (a module with no kohya name cannot come from a kohya key)
                continue
    lost = sorted(original - covered)
    if lost:
        raise LoraValidationError(
            f"{path.name}: {len(lost)} kohya module(s) were not converted and would be silently ignored: "
            f"{', '.join(lost[:6])}{' ...' if len(lost) > 6 else ''}",
            code="lora_unused_keys", field="keys", value=lost[:20], count=len(lost))


def _canonicalise(path, fmt, state_dict, alphas, diff_meta, metadata, modules, base_name, fp, max_rank, dtype,
                  sha256):
    import torch
    from diffusers.utils.peft_utils import _create_lora_config
    from peft.utils.other import get_pattern_key

    unused = sorted(k for k in state_dict if not k.startswith("transformer."))
    sd: dict[str, Any] = {}
    for k, v in state_dict.items():
        if not k.startswith("transformer."):
            continue
        k = k[len("transformer."):]
        k = k.replace(".lora.down.weight", ".lora_A.weight").replace(".lora.up.weight", ".lora_B.weight")
        sd[k] = v
    by_module: dict[str, dict[str, Any]] = {}
    for k, v in sd.items():
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if k.endswith(suffix):
                by_module.setdefault(k[: -len(suffix)], {})[part] = v
                break
        else:
            unused.append("transformer." + k)
    missing_modules = sorted(m for m in by_module if m not in modules)
    unused += [f"transformer.{m}.lora_*" for m in missing_modules]
    incomplete = sorted(m for m, parts in by_module.items() if len(parts) != 2)
    unused += [f"transformer.{m} (lora_A and lora_B must both be present)" for m in incomplete]
    if unused:
        raise LoraValidationError(
            f"{path.name}: {len(unused)} key(s) map to no module of this transformer and would be silently "
            f"ignored: {', '.join(unused[:6])}{' ...' if len(unused) > 6 else ''}",
            code="lora_unused_keys", field="keys", value=unused[:20], count=len(unused))
    if not by_module:
        raise LoraValidationError(f"{path.name} holds no transformer LoRA weights", code="lora_format_unknown",
                                  field="keys", value=[])
    ranks: dict[str, int] = {}
    for m, parts in by_module.items():
        a, b = parts["lora_A"], parts["lora_B"]
        in_f, out_f = modules[m]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != in_f or b.shape[0] != out_f or a.shape[0] != b.shape[1]:
            raise LoraValidationError(
                f"{path.name}: LoRA shapes for {m} are A {tuple(a.shape)} / B {tuple(b.shape)} but the module is "
                f"Linear({in_f} -> {out_f})", code="lora_shape_mismatch", field=m,
                value=[list(a.shape), list(b.shape)], expected=[in_f, out_f])
        ranks[m] = int(a.shape[0])
    rank = max(ranks.values())
    if rank > max_rank:
        worst = max(ranks, key=ranks.get)
        raise LoraValidationError(f"{path.name} has rank {rank} (module {worst}); this generator accepts at most "
                                  f"{max_rank}", code="lora_rank_too_large", field="rank", value=rank, limit=max_rank)
    # Per-module scaling exactly as diffusers' load would compute it.
    peft_sd = {f"{m}.{p}.weight": t for m, parts in by_module.items() for p, t in parts.items()}
    meta = None
    if diff_meta:
        meta = {k[len("transformer."):]: v for k, v in diff_meta.items() if k.startswith("transformer.")} or None
    net_alphas = {k[len("transformer."):]: v for k, v in alphas.items() if k.startswith("transformer.")} or None
    rank_dict = {f"^{m}.lora_B.weight": r for m, r in ranks.items()}
    try:
        config = _create_lora_config(peft_sd, net_alphas, meta, rank_dict)
    except (ValueError, TypeError, KeyError) as exc:  # LoraConfig(**the file's metadata) refused it
        raise LoraValidationError(f"{path.name}: its LoRA config metadata is invalid ({exc})",
                                  code="lora_metadata_invalid", field="metadata", value=str(exc)[:200]) from None
    except Exception as exc:  # a fault inside diffusers/peft, not of the file
        raise BackendError(f"building the LoRA config of {path.name} failed: {type(exc).__name__}: {exc}",
                           stage="lora_config", library="peft", path=str(path)) from exc
    patterns = [config.r, *config.rank_pattern.values()]
    alphas_all = [config.lora_alpha, *config.alpha_pattern.values()]
    if not all(_positive_number(r, integer=True) for r in patterns) or not all(
            _positive_number(a, integer=False) for a in alphas_all):
        raise LoraValidationError(f"{path.name}: the LoRA's r/alpha must be positive numbers (r {config.r}, alpha "
                                  f"{config.lora_alpha})", code="lora_metadata_invalid", field="metadata",
                                  value=[str(config.r), str(config.lora_alpha)])
    if getattr(config, "use_dora", False):
        raise LoraValidationError(f"{path.name} is a DoRA adapter; only plain LoRA is supported",
                                  code="lora_format_unknown", field="use_dora", value=True)
    canon: dict[str, torch.Tensor] = {}
    for m, parts in sorted(by_module.items()):
        key = f"{m}.lora_A.weight"
        r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), key), config.r)
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), key), config.lora_alpha)
        scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
        a = parts["lora_A"].to(torch.float32)
        b = parts["lora_B"].to(torch.float32) * scaling
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise LoraValidationError(f"{path.name}: LoRA weights of {m} contain NaN or inf",
                                      code="lora_file_invalid", field=m, value="non-finite", reason="non_finite")
        if a.shape[0] < rank:
            a = torch.cat([a, a.new_zeros(rank - a.shape[0], a.shape[1])])
            b = torch.cat([b, b.new_zeros(b.shape[0], rank - b.shape[1])], dim=1)
        canon[key] = a.to(dtype).contiguous()
        canon[f"{m}.lora_B.weight"] = b.to(dtype).contiguous()
    nbytes = sum(t.numel() * t.element_size() for t in canon.values())
    return ValidatedLora(path=path, sha256=sha256, format=fmt, rank=rank,
                         target_modules=tuple(sorted(by_module)), base_model=base_name, base_fingerprint=fp,
                         metadata=dict(metadata), state_dict=canon, nbytes=nbytes)
