"""Nothing downloads: the whole tiny pipeline runs with the hub's offline switches unset and every
outgoing connection refused.

huggingface_hub and transformers read HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE when they are first
imported (and this test session sets both), so the pipeline runs in a child process whose
environment lacks them, with an empty HF_HOME (no hub cache to lean on) and a socket guard
installed before anything else is imported. The guard refuses and records every connection and
DNS lookup that is not a local socket; a library that swallows the refusal still shows up in the
record, so the test asserts the record is empty, not only that the run finished.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("dlib", reason="the pipeline's face steps need dlib-bin (pip install 'persona-ml[dlib]')")
pytest.importorskip("skimage", reason="the demo photos come from scikit-image's astronaut (dev extra)")

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE")

CHILD = textwrap.dedent("""
    import json, os, socket, sys
    attempts = []

    def _refuse(what):
        attempts.append(what)
        raise OSError(f"network blocked by test_no_download: {what}")

    _connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
    def connect(self, address, *a, **k):
        if self.family == socket.AF_UNIX:
            return _connect(self, address, *a, **k)
        _refuse(f"connect {address!r}")
    def connect_ex(self, address, *a, **k):
        if self.family == socket.AF_UNIX:
            return _connect_ex(self, address, *a, **k)
        _refuse(f"connect_ex {address!r}")
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = lambda host, *a, **k: _refuse(f"getaddrinfo {host!r}")
    socket.gethostbyname = lambda host, *a, **k: _refuse(f"gethostbyname {host!r}")
    socket.create_connection = lambda address, *a, **k: _refuse(f"create_connection {address!r}")

    out_dir = sys.argv[1]
    import torch
    torch.set_num_threads(1)
    from pathlib import Path
    out = Path(out_dir)
    assert not any(v in os.environ for v in %(offline_vars)r), "an offline switch is set"

    import persona_ml
    from persona_ml.dataset import PrepareConfig, ScreeningConfig, prepare_dataset, screen_dataset
    from persona_ml.demo_data import make_demo_photos
    from persona_ml.faces import FaceEmbedder
    from persona_ml.inference import Character, CharacterGenerator, GenerationRequest
    from persona_ml.models import load_base_model
    from persona_ml.training import train_lora

    photos = list(make_demo_photos(out / "photos", n=4).views)
    embedder = FaceEmbedder("dlib")
    profile = persona_ml.build_profile([persona_ml.embed_reference(p, embedder) for p in photos[:2]])
    report = screen_dataset(photos, profile, embedder, config=ScreeningConfig(allow_near_duplicates=True))
    prepared = prepare_dataset(report, out / "prepared", trigger="ohwx",
                               config=PrepareConfig(resolutions=(512,), max_upscale=2.0), seed=0)
    result = train_lora("tiny-cpu", out / "prepared", out / "run", profile=profile, face_embedder=embedder,
                        overrides=["steps=3", "checkpoint.every=3", "samples.every=3", "samples.steps=2",
                                   "samples.width=32", "samples.height=32", f"cache.dir={out / 'cache'}"])
    gen = CharacterGenerator(load_base_model("tiny-flux"), face_embedder=embedder)
    gen.register(Character("c", lora_path=result.lora_path, profile=profile, trigger="ohwx"))
    image = gen.generate(GenerationRequest("c", "a photo of {trigger}", seeds=(1,), height=32, width=32, steps=2,
                                           max_sequence_length=32)).images[0]
    print("RESULT " + json.dumps({
        "accepted": len(report.accepted), "prepared": prepared.info.num_items, "status": result.status.value,
        "losses": len(result.losses), "samples": [s.step for s in result.identity], "image": list(image.image.size),
        "attempts": attempts,
        "hub_offline_constant": __import__("huggingface_hub").constants.HF_HUB_OFFLINE}))
""") % {"offline_vars": OFFLINE_VARS}


def test_the_tiny_pipeline_never_opens_a_connection(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
    env.update(HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    assert res["hub_offline_constant"] is False        # the hub really ran in its online mode
    assert res["attempts"] == [], f"the pipeline tried to reach the network: {res['attempts']}"
    assert res["accepted"] == 4 and res["prepared"] >= 4
    assert res["status"] == "completed" and res["losses"] == 3 and res["samples"] == [3]
    assert res["image"] == [32, 32]
    hf_home = tmp_path / "hf_home"
    assert not hf_home.exists() or not any(hf_home.rglob("*")), "something was cached in HF_HOME"
