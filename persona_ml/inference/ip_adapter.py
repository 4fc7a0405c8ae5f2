"""Flux IP-Adapter files: checked before diffusers sees them, then loaded once per pipeline.

``FluxPipeline.load_ip_adapter`` reads a ``.safetensors`` file with ``safe_open`` but hands any
other file to ``torch.load`` (a pickle can run code), and its image encoder comes from
``CLIPVisionModelWithProjection.from_pretrained``, which falls back on ``pytorch_model.bin``
pickles. So before anything is loaded, ``check_ip_adapter_files`` reads only the safetensors
header of the weights and the encoder's ``config.json`` and refuses, with code
``ip_adapter_invalid``:

- a weights file that is a pickle or a torch zip archive, or anything that is not a well-formed
  safetensors file (header length, JSON, tensor entries within the file);
- an image encoder folder without ``config.json`` or without safetensors weights (pickles only);
- weights whose keys or shapes do not fit this transformer (image projection to
  ``joint_attention_dim``, one ``to_k_ip``/``to_v_ip`` pair of ``(hidden, joint)`` per double block)
  or the encoder's ``projection_dim``.

A failure inside diffusers after these checks is a ``BackendError``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, BackendError, ModelNotFoundError

log = logging.getLogger(__name__)

__all__ = ["IPAdapterSpec", "check_ip_adapter_files", "load_ip_adapter"]

_MAX_HEADER_BYTES = 100 << 20
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_ZIP_MAGIC = b"PK\x03\x04"
_IMAGE_PROJ_PREFIXES = ("image_proj.", "ip_adapter_proj_model.")
_IP_PREFIXES = ("ip_adapter.", "double_blocks.")


@dataclass(frozen=True)
class IPAdapterSpec:
    """Where a Flux IP-Adapter lives on disk (never downloaded).

    Attributes:
        weights: the IP-Adapter ``.safetensors`` file (XLabs layout: ``image_proj.*`` and
            ``ip_adapter.<block>.to_k_ip/to_v_ip``, or ``double_blocks.*`` keys). Pickles
            (``.bin``/``.pt``) are refused.
        image_encoder: folder of a ``CLIPVisionModelWithProjection`` (``config.json`` +
            safetensors weights); for FLUX.1 IP-Adapters this is CLIP ViT-L/14.
        scale: default IP-Adapter strength.
    """

    weights: str | os.PathLike
    image_encoder: str | os.PathLike
    scale: float = 1.0


def _invalid(message: str, path: Path, reason: str, **details: Any) -> ArtifactError:
    return ArtifactError(message, code="ip_adapter_invalid", field="ip_adapter", value=str(path), reason=reason,
                          **details)


def _safetensors_header(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_PICKLE_MAGIC) or head.startswith(_ZIP_MAGIC):
        kind = "a torch zip archive" if head.startswith(_ZIP_MAGIC) else "a pickle"
        raise _invalid(f"{path.name} is {kind}, which can run code when loaded; only safetensors IP-Adapter "
                       "weights are accepted (convert it with safetensors.torch.save_file)", path, "pickle")
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if n < 2 or n > min(_MAX_HEADER_BYTES, size - 8):
        raise _invalid(f"{path.name} is not a safetensors file (header length {n}, file {size} bytes)", path,
                       "not_safetensors")
    with open(path, "rb") as fh:
        fh.seek(8)
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise _invalid(f"{path.name}: the safetensors header is not JSON", path, "bad_header") from None
    if not isinstance(header, dict):
        raise _invalid(f"{path.name}: the safetensors header is not an object", path, "bad_header")
    header.pop("__metadata__", None)
    data_len = size - 8 - n
    for key, entry in header.items():
        ok = (isinstance(entry, dict) and isinstance(entry.get("shape"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(isinstance(o, int) and not isinstance(o, bool) for o in entry["data_offsets"])
              and 0 <= entry["data_offsets"][0] <= entry["data_offsets"][1] <= data_len)
        if not ok:
            raise _invalid(f"{path.name}: tensor {key[:100]!r} has a malformed header entry", path, "bad_header",
                           tensor=key[:200])
    return header


def check_ip_adapter_files(spec: IPAdapterSpec, transformer: Any) -> tuple[Path, Path]:
    """Check an IP-Adapter's weights and image encoder against ``transformer`` without loading them.

    Args:
        spec: the ``IPAdapterSpec``.
        transformer: the pipeline's ``FluxTransformer2DModel`` (its config sizes the adapter).

    Returns:
        ``(weights file, encoder folder)``, resolved.

    Raises:
        ModelNotFoundError: a path does not exist.
        ArtifactError: ``ip_adapter_invalid`` (see the module docstring).
    """
    weights, encoder = Path(spec.weights), Path(spec.image_encoder)
    for p, what in ((weights, "IP-Adapter weights"), (encoder, "IP-Adapter image encoder")):
        if not p.exists():
            raise ModelNotFoundError(f"{what} not found at {p}", field="ip_adapter", value=str(p), searched=[str(p)])
    if not weights.is_file():
        raise _invalid(f"IP-Adapter weights {weights} are not a regular file", weights, "not_a_file")
    try:
        header = _safetensors_header(weights)
    except OSError as exc:
        raise _invalid(f"IP-Adapter weights {weights} cannot be read: {exc.strerror or exc}", weights,
                       "unreadable") from None
    if weights.suffix != ".safetensors":  # diffusers picks its loader by the name: anything else goes to torch.load
        raise _invalid(f"{weights.name}: the IP-Adapter weights must be named *.safetensors (diffusers loads any other "
                       "name with torch.load)", weights, "not_safetensors")

    if not encoder.is_dir() or not (encoder / "config.json").is_file():
        raise _invalid(f"IP-Adapter image encoder {encoder} is not a model folder with config.json", encoder,
                       "encoder_config_missing")
    if not list(encoder.glob("*.safetensors")):
        pickles = sorted(p.name for p in encoder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise _invalid(f"IP-Adapter image encoder {encoder} has no safetensors weights"
                       + (f" (only pickles: {', '.join(pickles[:3])}, refused)" if pickles else ""), encoder,
                       "pickle" if pickles else "encoder_weights_missing")
    try:
        enc_cfg = json.loads((encoder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        raise _invalid(f"{encoder / 'config.json'} is not readable JSON", encoder, "encoder_config_invalid") from None
    if not isinstance(enc_cfg, dict):
        raise _invalid(f"{encoder / 'config.json'} is not a JSON object", encoder, "encoder_config_invalid")

    shapes = {}
    for key, entry in header.items():
        if key.startswith(_IMAGE_PROJ_PREFIXES):
            shapes["image_proj." + key.split(".", 1)[1]] = entry["shape"]
        elif key.startswith(_IP_PREFIXES):
            name = (key.split(".", 1)[1].replace("ip_adapter_double_stream_k_proj", "to_k_ip")
                    .replace("ip_adapter_double_stream_v_proj", "to_v_ip").replace("processor.", ""))
            shapes["ip_adapter." + name] = entry["shape"]
    cfg = transformer.config
    joint = int(cfg.joint_attention_dim)
    hidden = int(cfg.num_attention_heads) * int(cfg.attention_head_dim)
    proj_dim = enc_cfg.get("projection_dim")
    expected: dict[str, list[int] | None] = {"image_proj.proj.weight": None, "image_proj.proj.bias": None,
                                             "image_proj.norm.weight": [joint], "image_proj.norm.bias": [joint]}
    for i in range(int(cfg.num_layers)):
        for kv in ("to_k_ip", "to_v_ip"):
            expected[f"ip_adapter.{i}.{kv}.weight"] = [hidden, joint]
            expected[f"ip_adapter.{i}.{kv}.bias"] = [hidden]
    missing = sorted(k for k in expected if k not in shapes)
    if missing:
        raise _invalid(f"{weights.name} lacks {len(missing)} IP-Adapter tensor(s) this transformer needs "
                       f"({cfg.num_layers} double blocks): {', '.join(missing[:4])}", weights, "keys_missing",
                       missing=missing[:20])
    proj = shapes["image_proj.proj.weight"]
    tokens = 16 if proj and proj[0] == 65536 else 4  # diffusers' own rule
    bad = [(k, shapes[k], want) for k, want in expected.items() if want is not None and shapes[k] != want]
    if len(proj) != 2 or proj[0] != tokens * joint or (isinstance(proj_dim, int) and proj[1] != proj_dim):
        bad.append(("image_proj.proj.weight", proj, [tokens * joint, proj_dim]))
    if shapes["image_proj.proj.bias"] != [proj[0] if proj else -1]:
        bad.append(("image_proj.proj.bias", shapes["image_proj.proj.bias"], [proj[0] if proj else None]))
    if bad:
        k, got, want = bad[0]
        raise _invalid(f"{weights.name}: {k} has shape {got}, this transformer and image encoder need {want}",
                       weights, "shape_mismatch", tensor=k, shape=got, expected=want)
    return weights, encoder


def load_ip_adapter(pipe: Any, spec: IPAdapterSpec, dtype: Any, device: Any) -> None:
    """Check the files, then load the IP-Adapter and its encoder into ``pipe`` with diffusers (local files only).

    Raises:
        ModelNotFoundError / ArtifactError (``ip_adapter_invalid``): see ``check_ip_adapter_files``.
        BackendError: diffusers or transformers failed on files that passed the checks.
    """
    weights, encoder = check_ip_adapter_files(spec, pipe.transformer)
    try:
        pipe.load_ip_adapter(str(weights.parent), weight_name=weights.name,
                             image_encoder_pretrained_model_name_or_path=str(encoder),
                             image_encoder_dtype=dtype, local_files_only=True)
        pipe.image_encoder.to(device)
    except Exception as exc:
        raise BackendError(f"loading the IP-Adapter {weights.name} failed in diffusers: {type(exc).__name__}: {exc}",
                           stage="ip_adapter_load", library="diffusers", path=str(weights)) from exc


def spec_key(spec: IPAdapterSpec) -> tuple:
    """Identity of an IP-Adapter on disk: resolved paths plus the weights file's inode, size and times."""
    weights = Path(spec.weights).resolve()
    try:
        st = weights.stat()
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = ()
    return (str(weights), stamp, str(Path(spec.image_encoder).resolve()))
