"""Fit the dlib identity thresholds on half of ../shared/faces' people and check them on the others.

Embeds every photo under ``people/`` with ``FaceEmbedder("dlib")`` (its defaults), leaves out
``unknown`` (unlabelled people) and the near-duplicates MANIFEST.tsv flags, splits the people in
two (the 150 px greyscale crops and the real photos dealt to both halves), fits
``same_person_min_cosine`` and ``outlier_max_cosine`` on one half
(``persona_ml.faces.calibration.calibrate``) and prints the held-out FAR/FRR of the fitted and the
configured values. The README and ``configs/face_thresholds.yaml`` quote these lines; the test
``tests/integration/test_face_thresholds.py`` recomputes them.

Usage:
    python tools/fit_face_thresholds.py [--faces ../shared/faces] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FACES = Path(os.environ.get("PERSONA_ML_SHARED_FACES", REPO.parent / "shared" / "faces"))


def labelled_rows(faces: Path) -> list[dict]:
    """MANIFEST.tsv rows under people/ with a known identity and not flagged as near-duplicates."""
    with open(faces / "MANIFEST.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    out = []
    for r in rows:
        notes = (r.get("notes") or "").lower()
        if not r["path"].startswith("people/") or r["identity"] == "unknown":
            continue
        if "near-duplicate" in notes or "mirrored copy" in notes:
            continue
        out.append(r)
    return out


def strata(rows: list[dict]) -> dict[str, str]:
    """``crop`` for people whose photos are all small pre-cropped faces (the TV set), else ``photo``."""
    kinds: dict[str, set[str]] = {}
    for r in rows:
        w, h = (int(v) for v in r["size"].split("x"))
        kinds.setdefault(r["identity"], set()).add("crop" if max(w, h) <= 200 else "photo")
    return {p: "crop" if k == {"crop"} else "photo" for p, k in kinds.items()}


def embed(faces: Path, rows: list[dict], embedder=None):
    """(embeddings, identities) of the largest face of each photo; photos without a face are left out."""
    import numpy as np

    from persona_ml.faces import FaceEmbedder

    embedder = embedder or FaceEmbedder("dlib")
    results = embedder.analyze([faces / r["path"] for r in rows])
    embs, ids = [], []
    for r, res in zip(rows, results):
        if isinstance(res, Exception) or not res:
            continue
        embs.append(res[0].embedding)
        ids.append(r["identity"])
    return np.stack(embs), ids, embedder


def run(faces: Path, seed: int = 0, embedder=None):
    from persona_ml.faces.calibration import calibrate

    rows = labelled_rows(faces)
    embeddings, identities, embedder = embed(faces, rows, embedder)
    report = calibrate(embeddings, identities, seed=seed, strata=strata(rows), configured=embedder.thresholds)
    return report, embedder, len(rows), len(identities)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, default=DEFAULT_FACES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    args = parser.parse_args(argv)
    if not (args.faces / "MANIFEST.tsv").is_file():
        print(f"no MANIFEST.tsv under {args.faces}; pass --faces", file=sys.stderr)
        return 2
    report, embedder, n_rows, n_faces = run(args.faces, args.seed)
    prov = embedder.provenance
    print(f"fit_face_thresholds: {prov.backend}/{prov.model_name}, {n_faces} faces of {n_rows} labelled photos "
          f"in {args.faces}/people, seed {args.seed}")
    print(f"fitting people: {', '.join(report.fit_identities)}")
    print(f"held-out people: {', '.join(report.check_identities)}")
    for line in report.summary_lines():
        print(line)
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
