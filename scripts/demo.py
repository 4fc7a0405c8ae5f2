#!/usr/bin/env python
"""persona_ml end to end on this machine, in a few minutes, with no download.

profile -> screen -> prepare -> rules -> train a tiny-Flux LoRA -> samples and identity scores ->
exported files -> generation -> evaluation. Run it with `make demo` (or `make demo IMAGES=dir`).

Photos: by default augmented views of ONE public-domain portrait (scikit-image's astronaut), since
no pip package ships ten distinct photos of one person. Screening flags those views as
near-duplicates, and the demo goes past that only with the explicit override printed below.
The tiny Flux model is random: it trains and generates for real, but learns pixels, not a face.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from persona_ml.images import list_images


def say(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, help="a folder of photos of ONE person (default: demo photos)")
    ap.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    ap.add_argument("--trigger", default="ohwx", help="the LoRA trigger word")
    ap.add_argument("--steps", type=int, default=None, help="override the tiny-cpu preset's steps")
    args = ap.parse_args(argv)
    t0 = time.time()
    import transformers

    transformers.logging.set_verbosity_error()  # optional-processor notices are noise in a demo

    import persona_ml
    from persona_ml.dataset import PrepareConfig, ScreeningConfig, prepare_dataset, screen_dataset
    from persona_ml.faces.embedder import FaceEmbedder
    from persona_ml.rules import LoraRequest, check_lora_request

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    say("1. photos")
    intruder = None
    if args.images:
        photos = list_images(args.images)
        print(f"{len(photos)} photos from {args.images}")
        demo_views = False
    else:
        from persona_ml.demo_data import DEMO_SOURCE, make_demo_photos

        demo = make_demo_photos(out / "photos", n=14)
        photos, intruder = list(demo.views), demo.intruder
        demo_views = True
        print(f"{len(photos)} AUGMENTED VIEWS of one photo: {DEMO_SOURCE}")
        print("  (crops, rescales, small rotations, mirroring, light and colour changes; not distinct photos)")
        if intruder:
            print(f"  plus one photo of another person for the identity checks: {intruder.name} (insightface wheel)")

    say("2. face embeddings and the character's face profile (dlib backend)")
    embedder = FaceEmbedder("dlib")
    prov = embedder.provenance
    print(f"model: {prov.backend}/{prov.model_name} dim={prov.dim} license={prov.license!r} "
          f"fingerprint={prov.fingerprint}")
    refs = photos[:4] + ([intruder] if intruder else [])
    observations = []
    for path in refs:
        obs = persona_ml.embed_reference(path, embedder)
        observations.append(obs)
        print(f"  {path.name:28s} face {obs.face_size:4.0f}px det {obs.det_score:.2f} sharpness {obs.sharpness:6.1f} "
              f"yaw {obs.pose[0]:+5.1f}")
    profile = persona_ml.build_profile(observations[:1])
    for obs in observations[1:]:  # every reference upload refreshes the stored profile
        profile = profile.add(obs)
    summary = profile.to_summary()
    print(f"profile of {len(profile)} references; reference scores (cosine to the others' centroid):")
    for path, score, flagged in zip(refs, profile.reference_scores, [i in profile.outliers for i in range(len(refs))]):
        print(f"  {path.name:28s} {score:.4f}{'   <- OUTLIER: likely another person' if flagged else ''}")
    clean = persona_ml.build_profile([o for i, o in enumerate(observations) if i not in profile.outliers])
    profile_path = clean.save(out / "profile")
    print(f"saved the profile without outliers: {profile_path}.safetensors/.json (fingerprint {clean.fingerprint})")
    del summary

    say("3. screening the training photos")
    candidates = photos + ([intruder] if intruder else [])
    faces = embedder.analyze(candidates)  # detect + embed once; both screening passes reuse it
    report = screen_dataset(candidates, clean, embedder, faces=faces)
    print(report.summary())
    if not report.ok and demo_views:
        print("\n*** OVERRIDE: allow_near_duplicates=True. DEMO ONLY: these views are copies of ONE photo; a real")
        print("*** character needs 10+ distinct photos. Every kept copy stays flagged in the report. ***\n")
        report = screen_dataset(candidates, clean, embedder, faces=faces,
                                config=ScreeningConfig(allow_near_duplicates=True))
        print(report.summary())
    (out / "dataset_report.json").write_text(report.to_json())

    say("4. preparing the training set (crops, buckets, captions, face masks)")
    prepared_dir = out / "prepared"
    prepared = prepare_dataset(report, prepared_dir, trigger=args.trigger,
                               config=PrepareConfig(resolutions=(512,), max_upscale=2.0), seed=0)
    print(f"{prepared.info.num_items} training images from {prepared.info.num_source_images} photos -> {prepared_dir}")
    first = (prepared_dir / "manifest.jsonl").read_text().splitlines()[0]
    item = json.loads(first)
    print(f"  e.g. {item['image']} {item['width']}x{item['height']} caption {item['caption']!r}")

    say("5. LoRA training rules (the request the service would send)")
    request = LoraRequest(plan="pro", num_images=len(report.accepted))
    check = check_lora_request(request)
    print(check.summary())

    say("6. training a tiny-Flux LoRA on CPU (preset tiny-cpu)")
    from persona_ml.training import train_lora

    overrides = [f"steps={args.steps}"] if args.steps else []
    last = {"t": 0.0}

    def on_event(ev):
        now = time.time()
        if ev.kind == "step" and (now - last["t"] > 5 or ev.step == ev.total_steps):
            last["t"] = now
            eta = f" eta {ev.eta_s:.0f}s" if ev.eta_s is not None else ""
            print(f"  step {ev.step}/{ev.total_steps} loss {ev.loss:.4f}{eta}", flush=True)
        elif ev.kind == "checkpoint":
            print(f"  checkpoint at step {ev.step}: {ev.checkpoint}", flush=True)
        elif ev.kind == "samples":
            ident = ev.identity
            note = "" if ident is None else (f" faces found {ident.detection_rate:.0%}, similarity "
                                             f"{ident.similarity}, near-copies {ident.near_copies}")
            print(f"  samples at step {ev.step}: {len(ev.sample_paths)} image(s){note}", flush=True)
        elif ev.kind == "status":
            print(f"  [{ev.status.value}] {ev.message}", flush=True)

    result = train_lora("tiny-cpu", prepared_dir, out / "run", trigger=args.trigger,
                        profile=clean, face_embedder=embedder, on_event=on_event, overrides=overrides)
    print(result.summary())

    if result.lora_path is None:
        print("training did not complete; stopping here")
        return 1
    print("exported files:")
    for f in sorted(Path(result.lora_path).parent.iterdir()):
        print(f"  {f.name:40s} {f.stat().st_size:>9,d} bytes")

    say("7. generation: one base pipeline, the character's LoRA from the adapter cache")
    from persona_ml.inference import Character, CharacterGenerator, GenerationRequest, score_images
    from persona_ml.models import load_base_model

    gen = CharacterGenerator(load_base_model("tiny-flux"), face_embedder=embedder)
    gen.register(Character("astronaut", lora_path=result.lora_path, profile=clean, trigger=args.trigger))
    before = gen.base_checksum()
    res = gen.generate(GenerationRequest("astronaut", "a portrait photo of {trigger}", seeds=[0, 1, 2],
                                         height=64, width=64, steps=4, max_sequence_length=32))
    gen_dir = out / "generated"
    gen_dir.mkdir(exist_ok=True)
    for im in res.images:
        im.image.save(gen_dir / f"seed{im.seed}.png")
        print(f"  seed {im.seed}: identity {im.identity_score} flags {list(im.flags)} -> generated/seed{im.seed}.png")
    print(f"tier {res.tier}; base weights unchanged by the LoRA: {gen.base_checksum() == before}")
    print("(a random tiny model draws no faces, so every image is honestly flagged; the same scoring on real")
    print(" photos:)")
    for name, check in zip(["a character view", "the intruder"],
                           score_images([photos[5]] + ([intruder] if intruder else []), clean, embedder)):
        print(f"  {name:18s} similarity {check.similarity}  faces {check.num_faces}  flags {list(check.flags)}")

    say("8. evaluation report")
    from persona_ml.eval import evaluate_lora

    ev = evaluate_lora(result.lora_path, base=gen, out_dir=out / "eval", profile=clean, embedder=embedder,
                       seeds=(0, 1), height=64, width=64, steps=2, max_sequence_length=32, losses=result.losses)
    for p in ev.prompts:
        print(f"  {p.name:12s} faces {p.detection_rate:.0%}  similarity {p.mean_similarity}  "
              f"bleeding {p.bleeding_rate:.0%}")
    print(f"report, contact sheet and plots: {out / 'eval'}")

    say("done")
    print(f"everything is under {out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
