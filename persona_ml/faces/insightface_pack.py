"""insightface model packs: finding a LOCAL pack, picking its two models, reading its license.

Nothing here downloads. Accepted ``model_dir`` layouts:

- a pack folder holding the ONNX files (``~/.insightface/models/buffalo_l``);
- insightface's ``root`` (a folder with ``models/<name>/``) or a folder of packs: the one pack
  found is used, or the one named by ``pack_name``;
- an insightface 2.x model package (``manifest.json`` with ``manifest_version: 2``): its
  ``detection`` and ``recognition`` tasks, their declared sha256 and preprocessing.

Only the detector and the recognizer are picked; the other models of a pack (landmarks,
gender/age, ...) are ignored. Models are identified by their ONNX signatures, as insightface
routes them, not by file name: a detector has one ``[1, 3, ?, ?]`` image input and >= 5 outputs
(SCRFD with keypoints: 9 or 15); a recognizer has one ``[N, 3, S, S]`` input (``S`` 112 or a
multiple of 112/128, not the 192 landmark or 96 attribute inputs) and one ``[N, D]`` output.

License: the public packs are for non-commercial research. insightface 2.x reads a signed
``MODEL.LICENSE`` beside the models; absent means non-commercial.

The backend that runs the models is :mod:`persona_ml.faces.insightface_backend`, which
re-exports every public name of this module.

Example:
    >>> from persona_ml.faces.insightface_pack import locate_pack, resolve_pack, inspect_license
    >>> folder = locate_pack("~/.insightface/models", "buffalo_l")   # doctest: +SKIP
    >>> resolve_pack(folder).recognizer.name, inspect_license(folder).license   # doctest: +SKIP
    ('w600k_r50.onnx', 'non-commercial (no MODEL.LICENSE)')
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, BackendUnavailableError, InputError, ModelNotFoundError

logger = logging.getLogger(__name__)

BACKEND_NAME = "insightface"
ENV_MODEL_DIR = "PERSONA_ML_INSIGHTFACE_DIR"
DEFAULT_PACK = "buffalo_l"
NO_LICENSE = "non-commercial (no MODEL.LICENSE)"


# ---------------------------------------------------------------------------------------------
# finding the models


@dataclass(frozen=True)
class OnnxSignature:
    """Inputs and outputs of an ONNX graph: ``(name, shape, elem_type)``; a dim is an int or ``None``."""

    inputs: tuple[tuple[str, tuple[int | None, ...], int], ...]
    outputs: tuple[tuple[str, tuple[int | None, ...]], ...]

    def role(self) -> tuple[str, str]:
        """``("detector" | "recognizer" | "other", reason)`` by insightface's routing rules."""
        if len(self.inputs) != 1:
            return "other", f"{len(self.inputs)} inputs"
        shape = self.inputs[0][1]
        if len(shape) != 4 or shape[1] != 3:
            return "other", f"input shape {_fmt_shape(shape)} is not [N, 3, H, W]"
        if len(self.outputs) >= 5:
            if len(self.outputs) not in (9, 15):
                return "other", f"detector with {len(self.outputs)} outputs has no keypoints (SCRFD kps: 9 or 15)"
            if shape[0] not in (1, None):
                return "other", f"detector input batch {shape[0]} (SCRFD: 1)"
            return "detector", f"{len(self.outputs)} outputs"
        h, w = shape[2], shape[3]
        if h is None or w is None or h != w:
            return "other", f"input {_fmt_shape(shape)} is not a square face crop"
        if h in (96, 192):
            return "other", f"{h}x{h} input (attribute / landmark model)"
        if not (h % 112 == 0 or h % 128 == 0) or len(self.outputs) != 1 or len(self.outputs[0][1]) != 2:
            return "other", f"input {_fmt_shape(shape)}, outputs {[_fmt_shape(o[1]) for o in self.outputs]}"
        return "recognizer", f"{h}x{w} -> {_fmt_shape(self.outputs[0][1])}"


def _fmt_shape(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def read_signature(path: str | os.PathLike) -> OnnxSignature:
    """Read an ONNX file's graph inputs (initializers excluded) and outputs without running it.

    Raises:
        ArtifactError: code ``model_load_failed`` when the file is not a readable ONNX model.
    """
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except ImportError as exc:
        raise BackendUnavailableError("the insightface backend needs the 'onnx' package: pip install onnx",
                                      field="backend", value=BACKEND_NAME) from exc
    except Exception as exc:
        raise ArtifactError(f"{path} is not a readable ONNX model: {exc}", code="model_load_failed",
                            field="model", value=str(path)) from exc
    graph = model.graph
    initializers = {init.name for init in graph.initializer}

    def dims(value) -> tuple[int | None, ...]:
        shape = value.type.tensor_type.shape
        return tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape.dim)

    inputs = tuple((v.name, dims(v), int(v.type.tensor_type.elem_type))
                   for v in graph.input if v.name not in initializers)
    outputs = tuple((v.name, dims(v)) for v in graph.output)
    return OnnxSignature(inputs=inputs, outputs=outputs)


@dataclass(frozen=True)
class PackFiles:
    """The two models of a pack and how they were chosen.

    Attributes:
        folder: the pack folder.
        model_name: the pack name (folder name; a manifest's ``model_id``).
        layout: ``"folder"`` (buffalo_l / antelopev2) or ``"manifest"`` (insightface 2.x V2).
        detector / recognizer: the ONNX files.
        det_preprocessing / rec_preprocessing: a manifest's ``{"mean", "std"}`` or ``"embedded"``;
            ``None`` for a folder pack (insightface's wrappers choose).
        embedding_dim: a manifest's declared dimension, else ``None``.
        ignored: ONNX files not used, with the reason.
    """

    folder: Path
    model_name: str
    layout: str
    detector: Path
    recognizer: Path
    det_preprocessing: Any = None
    rec_preprocessing: Any = None
    embedding_dim: int | None = None
    ignored: Mapping[str, str] = field(default_factory=dict)


def _holds_pack(folder: Path) -> bool:
    try:
        return folder.is_dir() and (any(folder.glob("*.onnx")) or (folder / "manifest.json").is_file())
    except OSError:
        return False


def default_model_dirs() -> list[Path]:
    """Where a pack is looked for when no ``model_dir`` is given: ``$PERSONA_ML_INSIGHTFACE_DIR``,
    then ``~/.insightface/models/buffalo_l`` (where insightface's own downloader puts it)."""
    out = []
    if os.environ.get(ENV_MODEL_DIR):
        out.append(Path(os.environ[ENV_MODEL_DIR]).expanduser())
    out.append(Path("~/.insightface/models").expanduser() / DEFAULT_PACK)
    return out


def locate_pack(model_dir: str | os.PathLike | None, pack_name: str | None = None) -> Path:
    """Find the pack folder under ``model_dir`` (see the module docstring for the layouts).

    Raises:
        ModelNotFoundError: nothing found; ``details['searched']`` lists every folder tried.
        InputError: code ``model_pack_ambiguous`` when several packs are found and no
            ``pack_name`` says which.
    """
    roots = [Path(model_dir).expanduser()] if model_dir is not None else default_model_dirs()
    searched: list[str] = []
    for root in roots:
        candidates = ([root / pack_name, root / "models" / pack_name] if pack_name else []) + [root]
        for cand in candidates:
            if pack_name and cand == root and root.name != pack_name:
                continue
            searched.append(str(cand))
            if _holds_pack(cand):
                return cand
        if pack_name or not root.is_dir():
            continue
        found = []
        for parent in (root / "models", root):
            if parent.is_dir():
                searched.append(str(parent / "*"))
                found += [p for p in sorted(parent.iterdir()) if p.is_dir() and _holds_pack(p)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = sorted({p.name for p in found})
            raise InputError(f"{root} holds several insightface packs ({', '.join(names)}); pass pack_name=",
                             code="model_pack_ambiguous", field="pack_name", value=None, packs=names)
    what = f"insightface pack {pack_name!r}" if pack_name else "an insightface model pack (*.onnx or manifest.json)"
    hint = ("" if model_dir is not None else
            f" (no model_dir given; set {ENV_MODEL_DIR} or pass model_dir)")
    raise ModelNotFoundError(
        f"{what} not found{hint}; searched: {', '.join(searched)}. Packs are never downloaded: "
        "copy one (e.g. buffalo_l) to a local folder and pass it as model_dir",
        field="model_dir", value=None if model_dir is None else str(model_dir), searched=searched)


def resolve_pack(folder: Path) -> PackFiles:
    """Pick the detector and recognizer of a pack folder (manifest V2 or ONNX signatures).

    Raises:
        ModelNotFoundError: a model is missing (``details['searched']`` lists the files examined).
        ArtifactError: an invalid manifest, a checksum mismatch, or a manifest model whose
            signature does not fit its task.
    """
    try:
        from insightface.model_zoo.package_manifest import has_model_package_manifest
    except ImportError:  # insightface < 2: no manifest packages
        def has_model_package_manifest(_folder) -> bool:
            return False

    if has_model_package_manifest(folder):
        return _resolve_manifest(folder)
    if (folder / "manifest.json").is_file():
        logger.info("%s/manifest.json is not a V2 package manifest; models are chosen by signature", folder)
    files = sorted(folder.glob("*.onnx"))
    detector = recognizer = None
    ignored: dict[str, str] = {}
    for path in files:
        role, reason = read_signature(path).role()
        if role == "detector" and detector is None:
            detector = path
        elif role == "recognizer" and recognizer is None:
            recognizer = path
        else:
            ignored[path.name] = reason if role == "other" else f"another {role} ({reason}) was chosen first"
    if ignored:
        logger.debug("insightface pack %s: ignored %s", folder, ignored)
    missing = [what for what, got in (("detector (SCRFD: [1, 3, ?, ?] -> >= 5 outputs with keypoints)", detector),
                                      ("recognizer (ArcFace: [N, 3, 112, 112] -> [N, D])", recognizer))
               if got is None]
    if missing:
        raise ModelNotFoundError(
            f"insightface pack {folder} has no {' and no '.join(missing)}; examined: "
            + (", ".join(f"{p.name} ({ignored.get(p.name, 'used')})" for p in files) or "no .onnx files"),
            field="model_dir", value=str(folder), searched=[str(p) for p in files] or [str(folder / "*.onnx")],
            ignored=ignored)
    return PackFiles(folder=folder, model_name=folder.name, layout="folder",
                     detector=detector, recognizer=recognizer, ignored=ignored)  # type: ignore[arg-type]


def _resolve_manifest(folder: Path) -> PackFiles:
    from insightface.model_zoo import package_manifest as pm

    try:
        package = pm.load_model_package(folder)
    except FileNotFoundError as exc:
        raise ModelNotFoundError(str(exc), field="model_dir", value=str(folder),
                                 searched=[str(folder / pm.MODEL_PACKAGE_MANIFEST)]) from exc
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"invalid insightface package manifest {folder / pm.MODEL_PACKAGE_MANIFEST}: {exc}",
                            code="model_manifest_invalid", field="manifest", value=str(folder)) from exc
    paths: dict[str, Path] = {}
    searched = [str(folder / pm.MODEL_PACKAGE_MANIFEST)]
    for task, role in ((pm.DETECTION_TASK, "detector"), (pm.RECOGNITION_TASK, "recognizer")):
        if task not in package.tasks:
            raise ModelNotFoundError(f"package manifest {package.manifest_path} declares no {task!r} task "
                                     f"(it has: {', '.join(package.tasks) or 'none'})",
                                     field="manifest", value=str(folder), searched=searched)
        descriptor = package.tasks[task]
        searched.append(str(descriptor.path))
        try:
            path = pm.verify_model_artifact(descriptor)
        except FileNotFoundError as exc:
            raise ModelNotFoundError(f"{task} model {descriptor.file} of package {package.name} is missing: {exc}",
                                     field="manifest", value=str(folder), searched=searched) from exc
        except (RuntimeError, ValueError) as exc:
            raise ArtifactError(f"{task} model {descriptor.file} of package {package.name}: {exc}",
                                code="model_checksum_mismatch", field=f"tasks.{task}", value=descriptor.file) from exc
        got, reason = read_signature(path).role()
        if got != role:
            raise ArtifactError(f"manifest {task} model {descriptor.file} does not have a {role}'s signature "
                                f"({reason})", code="model_signature_mismatch", field=f"tasks.{task}",
                                value=descriptor.file)
        paths[task] = path
    used = set(paths.values())
    ignored = {p.name: "not a detection/recognition task of the manifest"
               for p in sorted(folder.rglob("*.onnx")) if p.resolve() not in used}
    rec_meta = package.tasks[pm.RECOGNITION_TASK].metadata
    return PackFiles(folder=folder, model_name=package.name, layout="manifest",
                     detector=paths[pm.DETECTION_TASK], recognizer=paths[pm.RECOGNITION_TASK],
                     det_preprocessing=package.tasks[pm.DETECTION_TASK].metadata.get("preprocessing"),
                     rec_preprocessing=rec_meta.get("preprocessing"),
                     embedding_dim=rec_meta.get("embedding_dimension"), ignored=ignored)


# ---------------------------------------------------------------------------------------------
# license


@dataclass(frozen=True)
class LicenseStatus:
    """What a pack's ``MODEL.LICENSE`` allows (insightface 2.x's inspection, summarised).

    Attributes:
        status: insightface's status (``default_non_commercial``, ``verified_commercial``,
            ``verified_non_commercial``, ``invalid``, ``expired``, ``not_active``,
            ``invalid_manifest``, ``dependency_missing``).
        license: the text stored in provenance, e.g. ``"non-commercial (no MODEL.LICENSE)"``.
        commercial_use: ``True`` only for a verified commercial grant; ``None`` when a license
            exists but could not be verified here.
        message: insightface's explanation.
    """

    status: str
    license: str
    commercial_use: bool | None
    message: str
    license_id: str | None = None


def inspect_license(folder: str | os.PathLike) -> LicenseStatus:
    """Read the pack's license with insightface's ``inspect_model_package_license`` (no network)."""
    try:
        from insightface.model_zoo import model_license as ml
    except ImportError:  # insightface < 2 cannot verify licenses
        if (Path(folder) / "MODEL.LICENSE").exists():
            return LicenseStatus("dependency_missing", "unverified MODEL.LICENSE (needs insightface >= 2 to verify)",
                                 None, "insightface < 2 cannot verify MODEL.LICENSE")
        return LicenseStatus("default_non_commercial", NO_LICENSE, False, "MODEL.LICENSE is absent")
    result = ml.inspect_model_package_license(folder)
    status = result.status
    lic = result.license
    if status == ml.STATUS_DEFAULT_NON_COMMERCIAL:
        return LicenseStatus(status, NO_LICENSE, False, result.message)
    if status in (ml.STATUS_VERIFIED_COMMERCIAL, ml.STATUS_VERIFIED_NON_COMMERCIAL) and lic is not None:
        grant = "commercial" if lic.commercial_use_permitted else "non-commercial"
        return LicenseStatus(status, f"{grant} (signed MODEL.LICENSE {lic.license_id})",
                             bool(lic.commercial_use_permitted), result.message, lic.license_id)
    if status == ml.STATUS_DEPENDENCY_MISSING:
        logger.warning("%s has a MODEL.LICENSE that cannot be verified here: %s", folder, result.message)
        return LicenseStatus(status, "unverified MODEL.LICENSE (install cryptography and rfc8785 to verify)",
                             None, result.message)
    logger.warning("%s: MODEL.LICENSE is %s: %s; treating the pack as not licensed for commercial use",
                   folder, status, result.message)
    return LicenseStatus(status, f"invalid MODEL.LICENSE ({status})", False, result.message)
