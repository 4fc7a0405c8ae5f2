"""Named base models (``configs/base_models.yaml``): located explicitly, loaded offline, fingerprinted.

A spec names where a model's files may live (explicit path, environment variable, search paths),
which files must be there, and its license. Loading never reaches a network
(``local_files_only=True``); a miss raises ``ModelNotFoundError`` listing every place looked at.

The fingerprint is the base-model identity recorded in every LoRA and checked by the generator.
It depends on every weight and is stable across re-saves with other library versions:

* ``diffusers_dir``: sha256 over ``model_index.json`` and each component's config (library
  version keys dropped), tokenizer vocabularies, and the sha256 of every tensor's bytes with its
  name, dtype and shape (``fingerprint_flux_dir``); tensor hashes are cached by path, inode, size,
  mtime and ctime, so a warm worker does not re-read 24 GB on each start.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from persona_ml.config import config_file, from_dict, read_yaml
from persona_ml.errors import ConfigError, InputError, ModelMismatchError, ModelNotFoundError, PersonaMLError

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
    "weight_digests",
    "check_flux_dev_dir",
    "check_flux_dir",
    "architecture_of",
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
    checks: Literal["flux-dev", "flux"] | None = None
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
        checks: structural check applied to the folder's configs before any weight is read:
            ``"flux-dev"`` (FLUX.1-dev exactly) or ``"flux"`` (any Flux-architecture folder:
            schnell, fine-tunes, a small custom Flux), or ``None``.
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
        pipeline: the ``diffusers.FluxPipeline``; with ``parts="encoders"`` its ``transformer`` is
            ``None``, with ``parts="transformer"`` everything but the transformer and scheduler is,
            with ``parts="vae"`` everything but the VAE and scheduler, with ``parts="none"``
            everything but the scheduler.
        fingerprint: ``"sha256:<hex>"`` base-model identity (see module docstring).
        architecture: modelspec architecture id (``flux-1-dev``, ``flux-1-schnell``, ``flux-1``
            for another FLUX.1-sized model, ``flux`` for a Flux of other widths, ``tiny-flux``).
        quantization: the transformer's quantization scheme (``"none"`` when not quantized).
    """

    name: str
    spec: BaseModelSpec
    pipeline: FluxPipeline
    fingerprint: str
    architecture: str = "flux"
    quantization: str = "none"


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

# Bumped when what the fingerprint covers changes (v1 read no weight: a same-shape fine-tune matched).
_FINGERPRINT_SCHEME = b"persona_ml.base_fingerprint.v2\0"
_HASH_CACHE_NAME = "weight_hashes.json"
_HASH_CACHE_VERSION = 1
_CHUNK = 16 << 20
_OTHER_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".gguf")


def _read_json(path: Path) -> Any:
    """A model folder's JSON file through the bounded loader (``persona_ml._parse``).

    Raises:
        ModelNotFoundError: ``model_not_found`` when it is missing; ``model_corrupt`` when it cannot be read
            or is not acceptable JSON.
    """
    from persona_ml._parse import ParseProblem, loads_json

    try:
        return loads_json(path.read_bytes(), what=str(path))
    except ParseProblem as exc:
        raise ModelNotFoundError(exc.message, code="model_corrupt", path=str(path), reason=exc.reason) from None
    except FileNotFoundError:
        raise ModelNotFoundError(f"{path} not found", searched=[str(path)], missing=[path.name]) from None
    except OSError as exc:
        raise ModelNotFoundError(f"{path} cannot be read: {exc.strerror or exc}", code="model_corrupt",
                                 path=str(path)) from None


def _stable_json(path: Path) -> bytes:
    """A config file's content without what a re-save by another library version changes.

    Dropped: version/commit keys (``_diffusers_version``...) and keys whose value is ``null`` (newer
    library versions write new options with a null default). Key order and whitespace do not count.
    """
    data = _read_json(path)
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in _VOLATILE_KEYS and v is not None}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _tokenizer_json_model(path: Path) -> bytes:
    """The part of a ``tokenizer.json`` that defines tokenization: its model (vocab, merges) and added tokens.

    tokenizers 0.20 writes merges as ``[a, b]`` pairs where older versions wrote ``"a b"``; both read the same.
    """
    try:
        data = _read_json(path)
    except ModelNotFoundError:
        return path.read_bytes()
    if not isinstance(data, dict):
        return path.read_bytes()
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("merges"), list):
        model = dict(model, merges=[" ".join(m) if isinstance(m, list) else m for m in model["merges"]])
    added = [(t.get("id"), t.get("content")) for t in data.get("added_tokens") or [] if isinstance(t, dict)]
    return json.dumps({"model": model, "added_tokens": added}, sort_keys=True, separators=(",", ":")).encode()


def _safetensors_index(path: Path) -> dict[str, tuple[str, list[int], int, int]]:
    """``{tensor: (dtype, shape, start, end)}`` of a safetensors file (absolute byte offsets), header only.

    Raises:
        ModelNotFoundError: ``model_corrupt`` for a malformed header or tensors outside the file (truncated).
    """
    from persona_ml._parse import ParseProblem, parse_safetensors_header, safetensors_header_length

    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            n = safetensors_header_length(fh.read(8), size, what=str(path))
            header, _ = parse_safetensors_header(fh.read(n), size, what=str(path))
    except ParseProblem as exc:
        raise ModelNotFoundError(exc.message, code="model_corrupt", path=str(path), reason=exc.reason) from None
    base = 8 + n
    return {name: (entry["dtype"], list(entry["shape"]), base + entry["data_offsets"][0],
                   base + entry["data_offsets"][1]) for name, entry in header.items()}


def _hash_range(fh, start: int, end: int, buf: bytearray) -> str:
    h = hashlib.sha256()
    fh.seek(start)
    view = memoryview(buf)
    left = end - start
    while left > 0:
        got = fh.readinto(view[: min(left, len(buf))])
        if not got:
            raise ModelNotFoundError(f"{fh.name}: the file ended early (truncated?)", code="model_corrupt",
                                     path=str(fh.name))
        h.update(view[:got])
        left -= got
    return h.hexdigest()


def _file_tensor_digests(path: Path) -> dict[str, list]:
    """``{tensor: [dtype, shape, sha256 of its bytes]}`` of one weight file, streamed in 16 MB reads.

    A safetensors file is hashed tensor by tensor, so the result does not depend on the order of the
    tensors in the file, on how a model is split into shards, or on the header's metadata. Other
    weight files (``.bin``...) are hashed whole as one entry named after the file (never unpickled).
    """
    buf = bytearray(_CHUNK)
    with open(path, "rb") as fh:
        if path.suffix != ".safetensors":
            return {f"file:{path.name}": ["bytes", [path.stat().st_size], _hash_range(fh, 0, path.stat().st_size, buf)]}
        index = _safetensors_index(path)
        return {name: [dtype, shape, _hash_range(fh, start, end, buf)]
                for name, (dtype, shape, start, end) in sorted(index.items(), key=lambda kv: kv[1][2])}


def _cache_file(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir) / _HASH_CACHE_NAME
    env = os.environ.get("PERSONA_ML_CACHE_DIR")
    if env:
        return Path(env) / _HASH_CACHE_NAME
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "persona_ml" / _HASH_CACHE_NAME


def _file_key(path: Path) -> list[int]:
    """What changes whenever a file's bytes can have: device, inode, size, mtime and ctime."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _read_cache(cache: Path) -> dict[str, Any]:
    from persona_ml._parse import loads_json

    try:
        data = loads_json(cache.read_bytes(), what=str(cache))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("weight-hash cache %s is unreadable (%s); hashing again", cache, exc)
        return {}
    if not isinstance(data, dict) or data.get("version") != _HASH_CACHE_VERSION or not isinstance(
            data.get("files"), dict):
        return {}
    return data["files"]


def _write_cache(cache: Path, fresh: dict[str, Any]) -> None:
    from persona_ml._atomic import atomic_write_json

    try:
        files = _read_cache(cache)  # another worker may have added entries meanwhile: keep them
        files.update(fresh)
        files = {p: e for p, e in files.items() if os.path.exists(p)}
        atomic_write_json(cache, {"version": _HASH_CACHE_VERSION, "files": files}, indent=None)
    except (OSError, PersonaMLError) as exc:  # a read-only or full disk must not stop a worker: it re-hashes next start
        log.warning("could not write the weight-hash cache %s: %s", cache, exc)


def weight_digests(files: list[Path], *, cache_dir: str | os.PathLike | None = None,
                   workers: int | None = None) -> dict[Path, dict[str, list]]:
    """Per-tensor sha256 of weight files, from a cache keyed by path, device, inode, size, mtime and ctime.

    Only files whose key changed (or that were never seen) are read; they are hashed in parallel
    threads (sha256 releases the GIL on large reads).

    Args:
        files: weight files (``.safetensors`` hashed per tensor, others whole).
        cache_dir: folder of ``weight_hashes.json``; default ``$PERSONA_ML_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/persona_ml`` (``~/.cache/persona_ml``).
        workers: hashing threads (default ``min(4, cpu count)``).

    Returns:
        ``{file: {tensor: [dtype, shape, sha256]}}``.

    Raises:
        ModelNotFoundError: ``model_corrupt`` for a malformed or truncated safetensors file.
    """
    from concurrent.futures import ThreadPoolExecutor

    cache = _cache_file(cache_dir)
    cached = _read_cache(cache)
    out: dict[Path, dict[str, list]] = {}
    todo: list[tuple[Path, list[int]]] = []
    for f in files:
        real = str(f.resolve())
        key = _file_key(f)
        entry = cached.get(real)
        if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("tensors"), dict):
            out[f] = entry["tensors"]
        else:
            todo.append((f, key))
    if todo:
        n = workers or min(4, os.cpu_count() or 1)
        log.info("hashing %d weight file(s) (%.1f GB) for the base fingerprint", len(todo),
                 sum(k[2] for _, k in todo) / 1e9)
        with ThreadPoolExecutor(max_workers=max(1, min(n, len(todo)))) as pool:
            digests = list(pool.map(lambda item: _file_tensor_digests(item[0]), todo))
        fresh = {}
        for (f, key), d in zip(todo, digests):
            out[f] = d
            if _file_key(f) == key:  # not rewritten while it was being read
                fresh[str(f.resolve())] = {"key": key, "tensors": d}
        if fresh:
            _write_cache(cache, fresh)
    return out


def fingerprint_flux_dir(folder: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> str:
    """Fingerprint of a diffusers model folder that depends on every weight.

    Covers ``model_index.json`` and each component's configs (see ``_stable_json``), its tokenizer
    vocabularies, and the sha256 of every tensor's bytes with its name, dtype and shape (all
    ``*.safetensors`` files of each component; other weight files whole). It is the same after a
    re-save with another library version (config version keys, tensor order, shard layout and
    header metadata do not count) and changes when any weight value changes; casting the weights to
    another dtype changes it too (other bytes).

    The tensor hashes are cached (``weight_digests``) by path, device, inode, size, mtime and ctime,
    so a warm worker reads only the headers on start; a first start reads every weight once
    (FLUX.1-dev: about 32 GB for all components).

    Args:
        folder: a diffusers-format folder with ``model_index.json``.
        cache_dir: where the tensor-hash cache lives (see ``weight_digests``).

    Returns:
        ``"sha256:<hex>"``.

    Raises:
        ModelNotFoundError: ``model_index.json`` is missing; ``model_corrupt`` for a damaged weight file.
    """
    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelNotFoundError(f"{folder} has no model_index.json", searched=[str(folder)], missing=["model_index.json"])
    h = hashlib.sha256(_FINGERPRINT_SCHEME)
    h.update(b"model_index.json\0" + _stable_json(index))
    index_data = _read_json(index)
    if not isinstance(index_data, dict):
        raise ModelNotFoundError(f"{index} is not a JSON object", code="model_corrupt", path=str(index))
    components = sorted(k for k, v in index_data.items() if not k.startswith("_") and isinstance(v, list))
    per_comp: dict[str, list[Path]] = {}
    for comp in components:
        sub = folder / comp
        if not sub.is_dir():
            continue
        for cfg in sorted(sub.glob("*config.json")):
            if cfg.name.startswith("tokenizer") or cfg.name.startswith("special_tokens"):
                continue  # tokenizer configs churn with library versions; vocab files are hashed below
            h.update(f"{comp}/{cfg.name}\0".encode() + _stable_json(cfg))
        vocab = sorted(list(sub.glob("vocab.json")) + list(sub.glob("merges.txt")) + list(sub.glob("*.model")))
        if not vocab:  # only a tokenizer.json: its model section (vocab, merges) defines the tokenizer
            vocab = sorted(sub.glob("tokenizer.json"))
        for tok in vocab:
            body = _tokenizer_json_model(tok) if tok.name == "tokenizer.json" else tok.read_bytes()
            h.update(f"{comp}/{tok.name}\0".encode() + hashlib.sha256(body).digest())
        weights = sorted(sub.glob("*.safetensors"))
        if not weights:
            weights = sorted(p for p in sub.iterdir() if p.suffix in _OTHER_WEIGHTS and p.is_file())
        per_comp[comp] = weights
    digests = weight_digests([w for ws in per_comp.values() for w in ws], cache_dir=cache_dir)
    for comp, weights in per_comp.items():
        tensors: dict[str, list] = {}
        for w in weights:
            tensors.update(digests[w])
        for name in sorted(tensors):
            dtype, shape, digest = tensors[name]
            h.update(f"{comp}/{name}\0{dtype}\0{list(shape)}\0{digest}\0".encode())
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------- checks


def check_flux_dir(folder: str | os.PathLike) -> dict[str, Any]:
    """Check that a folder is a Flux-architecture diffusers folder (any widths, dev or schnell).

    The structural switches every Flux shares are required (``FluxPipeline`` with a
    ``FluxTransformer2DModel``, packed 2x2 latents: ``in_channels == 4 * vae.latent_channels``,
    ``patch_size`` 1, rotary axes summing to the head width); sizes and the guidance embedding
    are free, so FLUX.1-schnell, fine-tunes and a small custom Flux pass.

    Returns:
        The transformer config (``architecture_of`` reads it).

    Raises:
        ModelNotFoundError: a config is missing. ModelMismatchError: (``base_model_mismatch``)
            not a Flux layout; details name ``field``, ``value`` and ``expected``.
    """
    folder = Path(folder)

    def read(rel: str) -> dict[str, Any]:
        path = folder / rel
        if not path.is_file():
            raise ModelNotFoundError(f"{folder} has no {rel}", searched=[str(folder)], missing=[rel])
        data = _read_json(path)
        if not isinstance(data, dict):
            raise ModelNotFoundError(f"{path} is not a JSON object", code="model_corrupt", path=str(path))
        return data

    index = read("model_index.json")
    t = read("transformer/config.json")
    vae = read("vae/config.json")
    latent = vae.get("latent_channels")
    facts = [
        ("model_index._class_name", index.get("_class_name"), "FluxPipeline"),
        ("transformer._class_name", t.get("_class_name"), "FluxTransformer2DModel"),
        ("transformer.patch_size", t.get("patch_size", 1), 1),
        ("transformer.in_channels", t.get("in_channels", 64), 4 * latent if isinstance(latent, int) else "4 x latent"),
    ]
    for key, got, want in facts:
        if got != want:
            raise ModelMismatchError(f"{folder}: {key} is {got!r}, a Flux folder has {want!r}", code="base_model_mismatch",
                                     field=key, value=got, expected=want, path=str(folder))
    head = t.get("attention_head_dim", 128)
    axes = t.get("axes_dims_rope", [16, 56, 56])
    if not isinstance(axes, list) or sum(a for a in axes if isinstance(a, int)) != head:
        raise ModelMismatchError(f"{folder}: transformer.axes_dims_rope {axes} does not sum to attention_head_dim {head}",
                                 code="base_model_mismatch", field="transformer.axes_dims_rope", value=axes,
                                 expected=head, path=str(folder))
    return t


def architecture_of(transformer_config: Any) -> str:
    """modelspec architecture id of a Flux transformer config (dict or diffusers ``FrozenDict``).

    FLUX.1's widths (hidden 3072 = 24 x 128, T5 4096, CLIP 768, 19 + 38 blocks) give ``flux-1-dev``
    with a guidance embedding and ``flux-1-schnell`` without; any other Flux is ``flux``, so a
    small or custom model is never labelled FLUX.1.
    """
    get = transformer_config.get
    flux1 = (get("num_attention_heads", 24) * get("attention_head_dim", 128) == 3072
             and get("joint_attention_dim", 4096) == 4096 and get("pooled_projection_dim", 768) == 768
             and get("num_layers", 19) == 19 and get("num_single_layers", 38) == 38)
    if not flux1:
        return "flux"
    return "flux-1-dev" if get("guidance_embeds", False) else "flux-1-schnell"


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
        data = _read_json(folder / rel)
        if not isinstance(data, dict):
            raise ModelNotFoundError(f"{folder / rel} is not a JSON object", code="model_corrupt",
                                     path=str(folder / rel))
        return data

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


PARTS = ("all", "encoders", "transformer", "vae", "none")
_WITH_TRANSFORMER = ("all", "transformer")


def load_base_model(
    name_or_spec: str | BaseModelSpec,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    path: str | os.PathLike | None = None,
    parts: str = "all",
    quantization: str = "none",
) -> LoadedBaseModel:
    """Load a base model's ``FluxPipeline`` from local files (or build tiny-flux in code).

    ``parts`` lets a trainer hold only what a phase needs: ``"encoders"`` loads the VAE, both
    text encoders, their tokenizers and the scheduler (no transformer); ``"transformer"`` loads
    the transformer and the scheduler only; ``"vae"`` the VAE and the scheduler; ``"none"`` no
    weights at all (the scheduler only): the folder is checked and fingerprinted, which on a warm
    worker reads only headers and configs (the tensor hashes are cached, see
    ``fingerprint_flux_dir``). The fingerprint is the same for every part.

    Args:
        name_or_spec: a model name/alias, or a spec from ``resolve_base_model``.
        dtype: ``torch.dtype`` or ``"fp32"|"bf16"|"fp16"`` (and the long spellings).
        device: where the pipeline is moved.
        path: explicit model folder (only with a name).
        parts: ``"all"``, ``"encoders"``, ``"transformer"``, ``"vae"`` or ``"none"``.
        quantization: the transformer's scheme (``persona_ml.models.quantization.SCHEMES``), loaded
            through diffusers' ``quantization_config``; quantized weights stay where they load
            (CPU for tiny-flux on CPU, the GPU otherwise).

    Returns:
        ``LoadedBaseModel(name, spec, pipeline, fingerprint, architecture, quantization)``.

    Raises:
        ConfigError: unknown name, part or scheme. ModelNotFoundError: no folder (lists where it looked).
        ModelMismatchError: the folder is not FLUX.1-dev shaped (``flux-dev``) or not a Flux
        (the generic ``flux`` entry). BackendUnavailableError: diffusers, or the quantization
        backend, is not installed.

    Example:
        >>> base = load_base_model("tiny-flux", dtype="fp32", device="cpu")   # doctest: +SKIP
        >>> enc = load_base_model("flux-dev", dtype="bf16", device="cuda", parts="encoders")   # doctest: +SKIP
        >>> load_base_model("flux-dev", parts="none").fingerprint == enc.fingerprint          # doctest: +SKIP
        True
    """
    from persona_ml.models.quantization import check_scheme, quantization_config

    if parts not in PARTS:
        raise ConfigError(f"parts must be one of {list(PARTS)}, got {parts!r}", field="parts", value=parts)
    spec = name_or_spec if isinstance(name_or_spec, BaseModelSpec) else resolve_base_model(name_or_spec, path)
    if isinstance(name_or_spec, BaseModelSpec) and path is not None:
        raise InputError("pass path= with a model name, not with a resolved spec", field="path", value=str(path))
    torch_dtype = _torch_dtype(dtype)
    import torch

    with_transformer = parts in _WITH_TRANSFORMER
    check_scheme(quantization if with_transformer else "none", torch.device(device).type)
    try:
        import diffusers  # noqa: F401
    except ImportError as exc:  # pragma: no cover - diffusers is a core dependency
        from persona_ml.errors import BackendUnavailableError

        raise BackendUnavailableError("diffusers is required to load a base model: pip install diffusers",
                                      package="diffusers") from exc
    qconfig = quantization_config(quantization, torch_dtype) if with_transformer else None

    if spec.kind == "tiny_flux":
        from persona_ml.models.tiny_flux import (
            TinyFluxConfig,
            build_tiny_flux_pipeline,
            quantize_tiny_transformer,
            tiny_flux_fingerprint,
        )

        config = TinyFluxConfig.from_dict(dict(spec.tiny_config))
        pipe = build_tiny_flux_pipeline(seed=spec.seed, config=config)
        fingerprint = tiny_flux_fingerprint(pipe, spec.seed, config)  # in float32 whatever dtype is asked
        pipe = _select_parts(pipe, parts)
        if torch_dtype != _torch_dtype("float32"):
            pipe.to(dtype=torch_dtype)
        pipe.to(device)
        if qconfig is not None:
            pipe.transformer = quantize_tiny_transformer(pipe.transformer, qconfig, torch_dtype, device)
        return LoadedBaseModel(spec.name, spec, pipe, fingerprint, "tiny-flux", quantization if with_transformer
                               else "none")

    if spec.kind == "tiny_video" or spec.pipeline is not None:
        raise ConfigError(f"{spec.name} is a video model ({spec.pipeline or spec.kind}); load it with "
                          "persona_ml.video's load_video_model, not as a Flux base model",
                          field="base_model", value=spec.name)
    if spec.path is None:  # a hand-made spec
        spec = resolve_base_model(spec.name, None)
    t_config = check_flux_dir(spec.path)
    if spec.checks == "flux-dev":
        check_flux_dev_dir(spec.path)
    fingerprint = fingerprint_flux_dir(spec.path)
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    log.info("loading %s (%s) from %s (%s%s)", spec.name, parts, spec.path, torch_dtype,
             "" if qconfig is None else f", transformer {quantization}")
    if parts in ("transformer", "vae", "none"):
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(spec.path), subfolder="scheduler",
                                                                    local_files_only=True)
        vae = None
        if parts == "vae":
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(str(spec.path), subfolder="vae", **dtype_kwargs(torch_dtype),
                                                local_files_only=True)
        pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                            tokenizer_2=None, transformer=None)
    else:
        pipe = FluxPipeline.from_pretrained(str(spec.path), **dtype_kwargs(torch_dtype), local_files_only=True,
                                            **({"transformer": None} if parts == "encoders" or qconfig else {}))
    pipe.to(device)
    if with_transformer:
        kwargs: dict[str, Any] = {"subfolder": "transformer", **dtype_kwargs(torch_dtype), "local_files_only": True}
        if qconfig is not None:
            kwargs["quantization_config"] = qconfig
            if torch.device(device).type == "cuda":
                kwargs["device_map"] = {"": torch.device(device).index or 0}
        transformer = FluxTransformer2DModel.from_pretrained(str(spec.path), **kwargs)
        if qconfig is None or torch.device(device).type != "cuda":
            transformer.to(device)
        pipe.transformer = transformer
    return LoadedBaseModel(spec.name, spec, pipe, fingerprint, architecture_of(t_config),
                           quantization if with_transformer else "none")


def dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """``{"dtype": dtype}`` for a diffusers that takes it (0.42 deprecates ``torch_dtype`` with a
    FutureWarning on every load), ``{"torch_dtype": dtype}`` for one that does not know ``dtype``."""
    try:
        from diffusers.utils import deprecation_utils
    except ImportError:  # pragma: no cover - diffusers is a core dependency
        return {"torch_dtype": dtype}
    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


_PART_MODULES = {"all": ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer"),
                 "encoders": ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"),
                 "transformer": ("transformer",), "vae": ("vae",), "none": ()}


def _select_parts(pipe: FluxPipeline, parts: str) -> FluxPipeline:
    """Drop every module ``parts`` does not ask for (the scheduler always stays)."""
    for name in _PART_MODULES["all"]:
        if name not in _PART_MODULES[parts]:
            setattr(pipe, name, None)
    return pipe
