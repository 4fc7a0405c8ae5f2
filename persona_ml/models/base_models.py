"""Named base models (``configs/base_models.yaml``): located explicitly, loaded offline, fingerprinted.

A spec names where a model's files may live (explicit path, environment variable, search paths),
which files must be there, and its license. Loading never reaches a network
(``local_files_only=True``); a miss raises ``ModelNotFoundError`` listing every place looked at.

The fingerprint is the base-model identity recorded in every LoRA and checked by the generator.
It is cheap (no weight is read) and stable across re-saves with other library versions:

* ``diffusers_dir``: sha256 over ``model_index.json`` and each component's config (library
  version keys dropped), plus every ``*.safetensors`` file's name, size and the sha256 of its header.
* ``tiny_flux``: sha256 over the tiny config, the seed and the transformer's float32 weights.

Example:
    >>> spec = resolve_base_model("fal-ai/flux-lora")                  # doctest: +SKIP
    >>> spec.name, spec.path                                           # doctest: +SKIP
    ('flux-dev', PosixPath('/models/FLUX.1-dev'))
    >>> base = load_base_model(spec, dtype="bf16", device="cuda")      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from persona_ml.config import config_file, from_dict, read_yaml
from persona_ml.errors import ConfigError, InputError, ModelMismatchError, ModelNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from diffusers import FluxPipeline

log = logging.getLogger(__name__)

__all__ = [
    "BaseModelSpec",
    "LoadedBaseModel",
    "list_base_models",
    "resolve_base_model",
    "load_base_model",
    "fingerprint_flux_dir",
    "check_flux_dev_dir",
]

# Config keys that change with the saving library's version but not with the model.
_VOLATILE_KEYS = ("_diffusers_version", "_name_or_path", "transformers_version", "_commit_hash", "_use_default_values")
_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
           "fp16": "float16", "float16": "float16"}


@dataclass(frozen=True)
class _Entry:
    """One ``models.<name>`` entry of ``configs/base_models.yaml`` (strict keys)."""

    kind: Literal["diffusers_dir", "tiny_flux", "tiny_video"]
    description: str = ""
    license: str = ""
    license_url: str | None = None
    aliases: tuple[str, ...] = ()
    env_var: str | None = None
    search_paths: tuple[str, ...] = ()
    expected_files: tuple[str, ...] = ()
    checks: Literal["flux-dev"] | None = None
    seed: int = 0
    tiny_config: dict[str, Any] = field(default_factory=dict)
    pipeline: str | None = None  # video models: the diffusers pipeline class (persona_ml.video.models)


@dataclass(frozen=True)
class _File:
    models: dict[str, _Entry]


@dataclass(frozen=True)
class BaseModelSpec:
    """A named base model and where its files are.

    Attributes:
        name: canonical name (``flux-dev``, ``tiny-flux``); aliases resolve to it.
        kind: ``"diffusers_dir"`` (a local diffusers folder) or ``"tiny_flux"`` (built in code).
        description, license, license_url: for model cards and audits.
        aliases: other names accepted for it (``fal-ai/flux-lora``).
        env_var: environment variable that may hold the folder.
        search_paths: folders tried after the explicit path and ``env_var``.
        expected_files: paths relative to the folder that must exist.
        checks: structural check applied to the folder's configs (``"flux-dev"``) or ``None``.
        seed: weight seed (``tiny_flux``).
        tiny_config: ``TinyFluxConfig`` overrides (``tiny_flux``).
        path: the resolved folder (``diffusers_dir``), ``None`` for ``tiny_flux``.
        searched: every place looked at, in order, as ``"<source>: <path>"``.
    """

    name: str
    kind: str
    description: str = ""
    license: str = ""
    license_url: str | None = None
    aliases: tuple[str, ...] = ()
    env_var: str | None = None
    search_paths: tuple[str, ...] = ()
    expected_files: tuple[str, ...] = ()
    checks: str | None = None
    seed: int = 0
    tiny_config: dict[str, Any] = field(default_factory=dict)
    pipeline: str | None = None
    path: Path | None = None
    searched: tuple[str, ...] = ()


@dataclass
class LoadedBaseModel:
    """A base model in memory.

    Attributes:
        name: canonical model name (what LoRA metadata records as ``base_model``).
        spec: the resolved spec.
        pipeline: the ``diffusers.FluxPipeline``.
        fingerprint: ``"sha256:<hex>"`` base-model identity (see module docstring).
    """

    name: str
    spec: BaseModelSpec
    pipeline: FluxPipeline
    fingerprint: str


def _registry(path: str | os.PathLike | None = None) -> dict[str, _Entry]:
    source = Path(path) if path is not None else config_file("base_models.yaml")
    return from_dict(_File, read_yaml(source)).models


def list_base_models(config_path: str | os.PathLike | None = None) -> dict[str, str]:
    """Every accepted name (canonical and alias) mapped to its canonical name.

    Args:
        config_path: a base-models YAML; ``configs/base_models.yaml`` by default.

    Returns:
        ``{"flux-dev": "flux-dev", "fal-ai/flux-lora": "flux-dev", "tiny-flux": "tiny-flux", ...}``.
    """
    names: dict[str, str] = {}
    for canonical, entry in _registry(config_path).items():
        names[canonical] = canonical
        for alias in entry.aliases:
            names[alias] = canonical
    return names


def resolve_base_model(
    name: str,
    path: str | os.PathLike | None = None,
    *,
    config_path: str | os.PathLike | None = None,
) -> BaseModelSpec:
    """Resolve a model name (or alias) to a spec with its folder located on disk.

    Lookup order for a ``diffusers_dir`` model: ``path`` if given (and nothing else), else the
    spec's environment variable, else its search paths. The first folder holding every expected
    file wins.

    Args:
        name: ``flux-dev``, ``fal-ai/flux-lora``, ``tiny-flux``...
        path: explicit model folder (overrides the environment variable and search paths).
        config_path: a base-models YAML; ``configs/base_models.yaml`` by default.

    Returns:
        A ``BaseModelSpec`` with ``path`` set (``None`` for ``tiny_flux``) and ``searched``.

    Raises:
        ConfigError: unknown model name (``code="base_model_unknown"``) or a path given for a
            model built in code.
        ModelNotFoundError: no folder found, or a folder lacks expected files;
            ``details["searched"]`` lists every place looked at and ``details["missing"]`` what
            was missing where.
    """
    registry = _registry(config_path)
    names = {alias: canonical for canonical, e in registry.items() for alias in (canonical, *e.aliases)}
    if name not in names:
        raise ConfigError(
            f"unknown base model {name!r}; known: {', '.join(sorted(names))}",
            code="base_model_unknown",
            field="base_model",
            value=name,
        )
    canonical = names[name]
    entry = registry[canonical]
    spec = BaseModelSpec(name=canonical, **{f.name: getattr(entry, f.name) for f in dataclasses.fields(_Entry)})
    if entry.kind in ("tiny_flux", "tiny_video"):
        if path is not None:
            raise ConfigError(
                f"{canonical} is built in code and takes no model folder",
                field="base_model_path",
                value=str(path),
            )
        return spec

    candidates: list[tuple[str, Path]] = []
    if path is not None:
        candidates.append(("path", Path(path).expanduser()))
    else:
        env_value = os.environ.get(entry.env_var) if entry.env_var else None
        if entry.env_var and env_value:
            candidates.append((f"${entry.env_var}", Path(env_value).expanduser()))
        candidates += [("search_paths", Path(p).expanduser()) for p in entry.search_paths]

    searched: list[str] = []
    incomplete: dict[str, list[str]] = {}
    if path is None and entry.env_var and not os.environ.get(entry.env_var):
        searched.append(f"${entry.env_var}: (not set)")
    for source, folder in candidates:
        searched.append(f"{source}: {folder}")
        if not folder.is_dir():
            continue
        missing = [f for f in entry.expected_files if not (folder / f).exists()]
        if missing:
            incomplete[str(folder)] = missing
            log.warning("%s: %s lacks %s; trying the next place", canonical, folder, ", ".join(missing))
            continue
        log.info("%s: using %s (%s)", canonical, folder, source)
        return dataclasses.replace(spec, path=folder, searched=tuple(searched))

    hint = (
        f"pass a path (base_model_path) or set {entry.env_var} to a local diffusers-format {canonical} folder"
        if entry.env_var
        else "pass a path (base_model_path)"
    )
    if incomplete:
        detail = "; ".join(f"{k} lacks {', '.join(v)}" for k, v in incomplete.items())
        message = f"{canonical}: no complete model folder found ({detail}). Looked in: {'; '.join(searched)}. {hint}"
    else:
        message = f"{canonical}: model folder not found. Looked in: {'; '.join(searched)}. {hint}"
    raise ModelNotFoundError(message, model=canonical, searched=searched, missing=incomplete)


# --------------------------------------------------------------------------- fingerprint


def _stable_json(path: Path) -> bytes:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in _VOLATILE_KEYS}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _safetensors_header_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ModelNotFoundError(f"{path} is not a safetensors file", code="model_corrupt", path=str(path))
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ModelNotFoundError(f"{path}: implausible safetensors header size {n}", code="model_corrupt",
                                     path=str(path))
        return hashlib.sha256(fh.read(n)).hexdigest()


def fingerprint_flux_dir(folder: str | os.PathLike) -> str:
    """Cheap, stable fingerprint of a diffusers model folder; no weight is read.

    Args:
        folder: a diffusers-format folder with ``model_index.json``.

    Returns:
        ``"sha256:<hex>"``.

    Raises:
        ModelNotFoundError: ``model_index.json`` is missing.
    """
    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelNotFoundError(f"{folder} has no model_index.json", searched=[str(folder)], missing=["model_index.json"])
    h = hashlib.sha256()
    h.update(b"model_index.json\0" + _stable_json(index))
    components = sorted(k for k, v in json.loads(index.read_text()).items() if not k.startswith("_") and isinstance(v, list))
    for comp in components:
        sub = folder / comp
        if not sub.is_dir():
            continue
        for cfg in sorted(sub.glob("*config.json")):
            if cfg.name.startswith("tokenizer") or cfg.name.startswith("special_tokens"):
                continue  # tokenizer configs churn with library versions; vocab files are hashed below
            h.update(f"{comp}/{cfg.name}\0".encode() + _stable_json(cfg))
        for tok in sorted(list(sub.glob("tokenizer.json")) + list(sub.glob("vocab.json")) + list(sub.glob("merges.txt"))
                          + list(sub.glob("*.model"))):
            h.update(f"{comp}/{tok.name}\0".encode() + hashlib.sha256(tok.read_bytes()).digest())
        for weights in sorted(sub.glob("*.safetensors")):
            h.update(f"{comp}/{weights.name}\0{weights.stat().st_size}\0{_safetensors_header_sha256(weights)}".encode())
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------- checks


def check_flux_dev_dir(folder: str | os.PathLike) -> None:
    """Check a folder's configs against FLUX.1-dev's structure before any weight is loaded.

    Args:
        folder: a diffusers-format folder.

    Raises:
        ModelMismatchError: (``code="base_model_mismatch"``) the folder is not a FLUX.1-dev
            layout, e.g. schnell (no guidance embedding), details name ``field`` and ``value``.
    """
    folder = Path(folder)

    def read(rel: str) -> dict[str, Any]:
        return json.loads((folder / rel).read_text(encoding="utf-8"))

    index = read("model_index.json")
    t = read("transformer/config.json")
    vae = read("vae/config.json")
    facts = [
        ("model_index._class_name", index.get("_class_name"), "FluxPipeline"),
        ("transformer._class_name", t.get("_class_name"), "FluxTransformer2DModel"),
        ("transformer.guidance_embeds", t.get("guidance_embeds", False), True),
        ("transformer.in_channels", t.get("in_channels", 64), 64),
        ("transformer.patch_size", t.get("patch_size", 1), 1),
        ("vae.latent_channels", vae.get("latent_channels"), 16),
    ]
    for key, got, want in facts:
        if got != want:
            why = " (a FLUX.1-schnell folder? dev has a guidance embedding)" if key == "transformer.guidance_embeds" else ""
            raise ModelMismatchError(
                f"{folder}: {key} is {got!r}, FLUX.1-dev has {want!r}{why}",
                code="base_model_mismatch",
                field=key,
                value=got,
                expected=want,
                path=str(folder),
            )
    head = t.get("attention_head_dim", 128)
    axes = t.get("axes_dims_rope", [16, 56, 56])
    if sum(axes) != head:
        raise ModelMismatchError(
            f"{folder}: transformer.axes_dims_rope {axes} does not sum to attention_head_dim {head}",
            code="base_model_mismatch",
            field="transformer.axes_dims_rope",
            value=axes,
            expected=head,
            path=str(folder),
        )


# --------------------------------------------------------------------------- loading


def _torch_dtype(dtype: str | torch.dtype):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}", field="dtype", value=dtype)
    return getattr(torch, _DTYPES[dtype])


def load_base_model(
    name_or_spec: str | BaseModelSpec,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    path: str | os.PathLike | None = None,
) -> LoadedBaseModel:
    """Load a base model's ``FluxPipeline`` from local files (or build tiny-flux in code).

    Args:
        name_or_spec: a model name/alias, or a spec from ``resolve_base_model``.
        dtype: ``torch.dtype`` or ``"fp32"|"bf16"|"fp16"`` (and the long spellings).
        device: where the pipeline is moved.
        path: explicit model folder (only with a name).

    Returns:
        ``LoadedBaseModel(name, spec, pipeline, fingerprint)``.

    Raises:
        ConfigError: unknown name. ModelNotFoundError: no folder (lists where it looked).
        ModelMismatchError: the folder is not FLUX.1-dev shaped. BackendUnavailableError: diffusers
        is not installed.

    Example:
        >>> base = load_base_model("tiny-flux", dtype="fp32", device="cpu")   # doctest: +SKIP
    """
    spec = name_or_spec if isinstance(name_or_spec, BaseModelSpec) else resolve_base_model(name_or_spec, path)
    if isinstance(name_or_spec, BaseModelSpec) and path is not None:
        raise InputError("pass path= with a model name, not with a resolved spec", field="path", value=str(path))
    torch_dtype = _torch_dtype(dtype)
    try:
        import diffusers  # noqa: F401
    except ImportError as exc:  # pragma: no cover - diffusers is a core dependency
        from persona_ml.errors import BackendUnavailableError

        raise BackendUnavailableError("diffusers is required to load a base model: pip install diffusers",
                                      package="diffusers") from exc

    if spec.kind == "tiny_flux":
        from persona_ml.models.tiny_flux import TinyFluxConfig, build_tiny_flux_pipeline, tiny_flux_fingerprint

        config = TinyFluxConfig.from_dict(dict(spec.tiny_config))
        pipe = build_tiny_flux_pipeline(seed=spec.seed, config=config)
        fingerprint = tiny_flux_fingerprint(pipe, spec.seed, config)  # in float32 whatever dtype is asked
        if torch_dtype != _torch_dtype("float32"):
            pipe.to(dtype=torch_dtype)
        pipe.to(device)
        return LoadedBaseModel(spec.name, spec, pipe, fingerprint)

    if spec.path is None:  # a hand-made spec
        spec = resolve_base_model(spec.name, None)
    if spec.checks == "flux-dev":
        check_flux_dev_dir(spec.path)
    fingerprint = fingerprint_flux_dir(spec.path)
    from diffusers import FluxPipeline

    log.info("loading %s from %s (%s)", spec.name, spec.path, torch_dtype)
    pipe = FluxPipeline.from_pretrained(str(spec.path), torch_dtype=torch_dtype, local_files_only=True)
    pipe.to(device)
    return LoadedBaseModel(spec.name, spec, pipe, fingerprint)
