"""``persona-ml embed`` and ``persona-ml profile``: face embeddings and character face profiles.

Exit status: 0 when every input was usable, 2 when any input was bad (the others are still
processed and reported). ``profile`` exits 4 when the saved profile has outlier references
(photos likely of another person; with ``--strict`` also when the outlier decision could not be
made, see ``FaceProfile.undecided``). The profile is saved either way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ._args import output_name, positive_int


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="dlib", choices=("dlib", "insightface"), help="face backend (default dlib)")
    p.add_argument("--model-dir", default=None, help="model folder (insightface pack; dlib: default package models)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--max-pixels", type=positive_int, default=None, help="refuse images above this many pixels (default 50 MP)")
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")


def register(sub) -> None:
    p = sub.add_parser("embed", help="detect and embed the faces of images",
                       description="Detect and embed every face of each image; with --json one JSON object "
                                   "per line per image, with `path` and either `faces` or `error`.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (a folder adds its images)")
    _add_backend_args(p)
    p.add_argument("--with-embedding", action="store_true", help="include each face's embedding vector")
    p.set_defaults(func=run_embed)

    p = sub.add_parser("profile", help="build and save a character face profile from a folder of photos",
                       description="Embed the primary face of every photo in DIR, build the profile, save "
                                   "it as PROFILE.safetensors (one file, written atomically), and print each photo's similarity "
                                   "and the outliers (photos likely of another person).")
    p.add_argument("folder", metavar="DIR", help="folder of reference photos")
    p.add_argument("--out", required=True, metavar="PROFILE", type=output_name,
                   help="output path (PROFILE.safetensors)")
    p.add_argument("--strict", action="store_true",
                   help="also exit 4 when the outlier decision cannot be made (2-3 references that disagree)")
    _add_backend_args(p)
    p.set_defaults(func=run_profile)


def _embedder(args: argparse.Namespace):
    from ..faces.embedder import FaceEmbedder
    from ..images import ImageLimits

    limits = ImageLimits(max_pixels=args.max_pixels) if args.max_pixels else None
    return FaceEmbedder(args.backend, model_dir=args.model_dir, device=args.device, limits=limits)


def _expand(paths: list[str]) -> list[str]:
    from ..images import list_images

    out: list[str] = []
    for item in paths:
        try:
            is_dir = Path(item).is_dir()
        except (OSError, ValueError):  # a name over the filesystem's limit: load_image says so per path
            is_dir = False
        if is_dir:
            out.extend(str(p) for p in list_images(item))
        else:
            out.append(item)
    return out


def _check_out_path(out: Path) -> None:
    """Refuse ``--out`` when it, or the folder it goes in, cannot be written as a file."""
    from ..errors import InputError

    path = out.with_name(out.name + ".safetensors")
    try:
        is_dir = path.is_dir()
    except OSError as exc:  # a name over the filesystem's limit
        raise InputError(f"--out {out}: {exc.strerror or exc}", code="path_invalid", field="out",
                         value=str(out)) from None
    if is_dir:
        raise InputError(f"--out {out}: {path} is a folder", code="path_invalid", field="out", value=str(out))
    for parent in out.parents:
        try:
            exists = parent.exists()
        except OSError as exc:
            raise InputError(f"--out {out}: {exc.strerror or exc}", code="path_invalid", field="out",
                             value=str(out)) from None
        if exists:
            if not parent.is_dir():
                raise InputError(f"--out {out}: {parent} is a file, not a folder", field="out", value=str(out))
            if not os.access(parent, os.W_OK):
                raise InputError(f"--out {out}: cannot write in {parent}", field="out", value=str(out))
            break


def run_embed(args: argparse.Namespace) -> int:
    from ..cli import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK
    from ..errors import BackendError, PersonaMLError

    embedder = _embedder(args)
    paths = _expand(args.images)
    bad = faults = 0
    for path, result in zip(paths, embedder.analyze(paths)):
        if isinstance(result, PersonaMLError):
            if isinstance(result, BackendError):
                faults += 1  # the backend's fault: exit 1 (internal), not 2 (bad input)
            else:
                bad += 1
            record = {"path": path, "error": result.to_dict()}
        else:
            record = {"path": path, "faces": [f.to_dict(with_embedding=args.with_embedding) for f in result]}
        if args.json:
            print(json.dumps(record, sort_keys=True), flush=True)
        elif "error" in record:
            print(f"{path}: ERROR {record['error']['code']}: {record['error']['message']}")
        else:
            faces = record["faces"]
            desc = ", ".join(f"[{', '.join(str(round(v)) for v in f['bbox'])}] score {f['det_score']:.2f}"
                             for f in faces) or "no face"
            print(f"{path}: {len(faces)} face(s): {desc}")
    if not paths:
        print("no images given", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_INTERNAL if faults else EXIT_BAD_INPUT if bad else EXIT_OK


def run_profile(args: argparse.Namespace) -> int:
    from ..cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_OUTLIERS
    from ..errors import BackendError, InputError, PersonaMLError
    from ..faces.profile import FaceProfile
    from ..images import list_images

    folder = Path(args.folder)
    paths = [str(p) for p in list_images(folder)]  # "not a folder" (saying what it is) or the photos
    if not paths:
        raise InputError(f"{folder} holds no images", code="profile_empty", field="folder", value=str(folder))
    _check_out_path(Path(args.out))  # before the embedding work, which a failed save would lose
    embedder = _embedder(args)
    entries: list[dict] = []
    refs = []
    seen: dict[str, str] = {}
    for path in paths:
        try:
            face = embedder.embed_primary(path)
        except BackendError:  # the backend failed: no profile is built without that photo
            raise
        except PersonaMLError as exc:
            entries.append({"path": path, "error": exc.to_dict()})
            continue
        if face.image_sha256 in seen:
            entries.append({"path": path, "error": {
                "code": "duplicate_reference", "message": f"same image as {seen[face.image_sha256]}",
                "details": {"field": "image", "value": path, "duplicate_of": seen[face.image_sha256]}}})
            continue
        seen[face.image_sha256] = path
        entries.append({"path": path, "index": len(refs)})
        refs.append(face)
    bad = sum("error" in e for e in entries)
    if not refs:
        out = {"profile": None, "images": entries, "outliers": [],
               "error": {"code": "profile_empty", "message": "no usable reference face in the folder"}}
        print(json.dumps(out, sort_keys=True) if args.json else f"no usable reference face in {folder}")
        return EXIT_BAD_INPUT
    profile = FaceProfile.build(refs)
    base = profile.save(args.out)
    ref_paths = [e["path"] for e in entries if "index" in e]  # reference i came from ref_paths[i]
    for e in entries:
        if "index" in e:
            i = e.pop("index")
            score = float(profile.reference_scores[i])
            e.update({"image_sha256": refs[i].image_sha256, "similarity": round(profile.similarity(refs[i]), 4),
                      "score": None if score != score else round(score, 4), "outlier": i in profile.outliers,
                      "undecided": i in profile.undecided, "bbox": [round(float(v), 1) for v in refs[i].bbox]})
    outliers = [e["path"] for e in entries if e.get("outlier")]
    undecided = [e["path"] for e in entries if e.get("undecided")]
    summary = profile.to_summary()
    near = [{"images": [ref_paths[a], ref_paths[b]], "cosine": round(c, 4)} for a, b, c in profile.near_duplicates()]
    if args.json:
        print(json.dumps({"profile": str(base), "files": [str(base) + ".safetensors"],
                          "fingerprint": profile.fingerprint, "n_references": len(profile),
                          "images": entries, "outliers": outliers, "undecided": undecided,
                          "outlier_rule": profile.outlier_rule, "near_duplicates": near,
                          "provenance": summary["provenance"], "thresholds": summary["thresholds"]},
                         sort_keys=True))
    else:
        print(f"profile {base} ({len(profile)} references, {profile.provenance.backend}/"
              f"{profile.provenance.model_name}, fingerprint {profile.fingerprint})")
        for e in entries:
            if "error" in e:
                print(f"  {e['path']}: ERROR {e['error']['code']}: {e['error']['message']}")
            else:
                flag = ("  OUTLIER (likely another person)" if e["outlier"]
                        else "  UNDECIDED (cannot tell who the intruder is)" if e["undecided"] else "")
                print(f"  {e['path']}: similarity {e['similarity']:.3f}, vs others {e['score']}{flag}")
        for pair in near:
            print(f"  near-duplicates: {pair['images'][0]} and {pair['images'][1]} (cosine {pair['cosine']:.3f})")
        print(f"outliers: {', '.join(outliers) if outliers else 'none'}")
        if undecided:
            print(f"cannot decide ({profile.outlier_rule} rule, {len(profile)} references): {', '.join(undecided)}; "
                  "add references to decide")
    if bad:
        return EXIT_BAD_INPUT
    if outliers or (args.strict and undecided):
        return EXIT_OUTLIERS
    return EXIT_OK
