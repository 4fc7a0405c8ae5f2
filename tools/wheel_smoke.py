"""Smoke test of an installed persona_ml wheel, run by ``tools/wheel_check.sh`` in a fresh venv.

Run it from a folder that is not the repository, with the venv's python: it refuses to run
against a source checkout, so it proves what a GPU worker's ``pip install`` gets:

1. ``check_lora_request`` answers from the packaged rules with torch (and diffusers) NOT imported,
   and the ``persona-ml`` console script runs;
2. a dlib face embedding of a photo that ships in a pip package (insightface's ``data/images``);
3. a 5-step tiny-flux LoRA training (synthetic prepared dataset), exported in both formats;
4. one image generated with that LoRA through ``CharacterGenerator``.

Outgoing network connections are refused in-process for the whole run: nothing may download.
Prints one line per step and ``wheel smoke: OK`` at the end; exits non-zero on the first failure.

Usage:
    python wheel_smoke.py --repo /path/to/checkout --work /tmp/somewhere
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


class _NoNetwork(OSError):
    pass


def _block_network() -> None:
    """Refuse every connection that is not to a local (AF_UNIX) socket."""

    def refuse(self, address, *args, **kwargs):
        if self.family == getattr(socket, "AF_UNIX", None):
            return _connect(self, address, *args, **kwargs)
        raise _NoNetwork(f"wheel smoke: outgoing connection to {address!r} refused (nothing may download)")

    def refuse_lookup(host, *args, **kwargs):
        raise _NoNetwork(f"wheel smoke: DNS lookup of {host!r} refused (nothing may download)")

    _connect = socket.socket.connect
    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.getaddrinfo = refuse_lookup  # type: ignore[assignment]
    socket.create_connection = lambda address, *a, **k: refuse(socket.socket(), address)  # type: ignore[assignment]


def _step(name: str, t0: float, detail: str) -> None:
    print(f"[{time.perf_counter() - t0:6.1f} s] {name}: {detail}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="the source checkout (must NOT be imported)")
    parser.add_argument("--work", type=Path, required=True, help="a scratch folder for the run")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.pop(var, None)  # a wheel must not need them: the socket guard is the proof
    _block_network()

    # 1. the torch-free rules check, from the installed package
    import persona_ml

    where = Path(persona_ml.__file__).resolve()
    repo = args.repo.resolve()
    if repo in where.parents:
        raise SystemExit(f"persona_ml was imported from the checkout ({where}), not from the installed wheel")
    if Path(sys.prefix).resolve() not in where.parents:
        raise SystemExit(f"persona_ml at {where} is not inside this venv ({sys.prefix})")
    from persona_ml.config import packaged_config_dir

    configs = sorted(p.relative_to(packaged_config_dir()).as_posix() for p in packaged_config_dir().rglob("*.yaml"))
    expected = {"lora_rules.yaml", "face_thresholds.yaml", "base_models.yaml", "train/persona-flux-dev.yaml",
                "train/tiny-cpu.yaml"}
    if not expected <= set(configs):
        raise SystemExit(f"the wheel lacks packaged configs {sorted(expected - set(configs))} (has {configs})")
    result = persona_ml.check_lora_request({"plan": "pro", "num_images": 12, "training_steps": 1200})
    bad = persona_ml.check_lora_request({"plan": "free", "num_images": 31, "training_steps": 1600, "lora_rank": 8})
    heavy = sorted(m for m in ("torch", "diffusers", "transformers", "peft", "accelerate") if m in sys.modules)
    if heavy:
        raise SystemExit(f"check_lora_request imported {heavy}: the API layer's rules check must not need torch")
    if not result.ok or result.credit_cost != 500 or bad.ok:
        raise SystemExit(f"rules answered wrongly: ok={result.ok} cost={result.credit_cost}; bad.ok={bad.ok}")
    _step("rules", t0, f"pro/12 images ok, {result.credit_cost} credits; free/31 images -> {', '.join(bad.codes)}; "
                       f"torch not imported; {len(configs)} packaged configs")
    cli = Path(sys.executable).with_name("persona-ml")
    proc = subprocess.run([str(cli), "check", "--plan", "free", "--images", "31", "--steps", "1600"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 3 or "plan_not_allowed" not in proc.stdout:
        raise SystemExit(f"`persona-ml check` exited {proc.returncode}: {proc.stdout[-500:]} {proc.stderr[-1500:]}")
    _step("cli", t0, "persona-ml check -> exit 3 with plan_not_allowed")

    # 2. a face embedding of a photo that ships inside a pip package
    import importlib.util

    import numpy as np

    from persona_ml.faces import FaceEmbedder, FaceProfile

    spec = importlib.util.find_spec("insightface")
    photo = Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / "Tom_Hanks_54745.png"
    embedder = FaceEmbedder("dlib")
    face = embedder.embed_primary(photo)
    norm = float(np.linalg.norm(face.embedding))
    if face.embedding.shape != (128,) or abs(norm - 1.0) > 1e-4 or face.face_size < 40:
        raise SystemExit(f"bad embedding: shape {face.embedding.shape}, norm {norm}, face {face.face_size}px")
    prov = face.provenance
    if prov.backend != "dlib" or len(prov.files) != 2 or not all(len(h) == 64 for h in prov.files.values()):
        raise SystemExit(f"embedding provenance incomplete: {prov}")
    profile = FaceProfile.build([face])
    _step("face", t0, f"{photo.name}: {face.face_size:.0f}px face, 128-d, provenance {prov.model_name} "
                      f"({', '.join(sorted(prov.files))})")

    # 3. a 5-step tiny-flux training
    from persona_ml.training import train_lora
    from persona_ml.training.testing import make_synthetic_dataset
    from persona_ml.training.types import JobStatus

    work = args.work
    data = make_synthetic_dataset(work / "prepared", n=2, size=64)
    train = train_lora("tiny-cpu", data.root, work / "run", overrides=[
        "steps=5", "checkpoint.every=5", "samples.every=-1", f"cache.dir={work / 'cache'}",
        "data.resolutions=[32, 64]", "optimizer.lr=1e-2"])
    if train.status is not JobStatus.COMPLETED or len(train.losses) != 5 or not all(np.isfinite(train.losses)):
        raise SystemExit(f"training ended {train.status} with losses {train.losses}")
    if not (train.lora_path.is_file() and train.kohya_path.is_file()):
        raise SystemExit(f"training exported no LoRA ({train.lora_path}, {train.kohya_path})")
    _step("train", t0, f"5 steps, losses {[round(x, 4) for x in train.losses]}, exported {train.lora_path.name} "
                       f"+ {train.kohya_path.name}")

    # 4. one generated image with that LoRA
    from persona_ml.inference import Character, CharacterGenerator, GenerationRequest
    from persona_ml.models import load_base_model

    gen = CharacterGenerator(load_base_model("tiny-flux"), face_embedder=embedder)
    gen.register(Character("smoke", lora_path=train.lora_path, profile=profile, trigger="ohwx"))
    out = gen.generate(GenerationRequest("smoke", "a portrait photo of {trigger}", seeds=(1,), height=32, width=32,
                                         steps=2, max_sequence_length=32))
    image = out.images[0].image
    pixels = np.asarray(image)
    if out.tier != "lora" or image.size != (32, 32) or pixels.std() == 0:
        raise SystemExit(f"generation gave tier {out.tier}, size {image.size}, pixel std {pixels.std()}")
    image.save(work / "smoke.png")
    _step("generate", t0, f"tier {out.tier}, {image.size[0]}x{image.size[1]}, flags {list(out.images[0].flags)}, "
                          f"lora sha256 {out.lora_sha256[:12]}")
    print(json.dumps({"persona_ml": str(where.parent), "python": sys.version.split()[0]}))
    print("wheel smoke: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
