"""CharacterGenerator on tiny-flux (CPU): switching, reproducibility, formats, tiers, identity flags."""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from persona_ml.errors import InputError, LoraValidationError  # noqa: E402
from persona_ml.inference import Character, CharacterGenerator, GenerationRequest  # noqa: E402
from persona_ml.inference.generator import IPAdapterSpec  # noqa: E402
from persona_ml.inference.testing import build_tiny_ip_adapter, make_random_lora  # noqa: E402

# Double-block attention only: diffusers' kohya converter hard-codes FLUX.1's single-block widths.
TARGETS = ["transformer_blocks.*.attn.to_q", "transformer_blocks.*.attn.to_k", "transformer_blocks.*.attn.to_v",
           "transformer_blocks.*.attn.to_out.0", "transformer_blocks.*.attn.add_q_proj"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from persona_ml.models import load_base_model

    tmp = tmp_path_factory.mktemp("gen")
    base = load_base_model("tiny-flux")
    kw = dict(base_model=base.name, base_fingerprint=base.fingerprint, targets=TARGETS)
    loras = {"A": make_random_lora(base.pipeline, tmp / "A", seed=1, **kw),
             "B": make_random_lora(base.pipeline, tmp / "B", seed=2, **kw)}
    weights, encoder = build_tiny_ip_adapter(tmp / "ip", base.pipeline)
    gen = CharacterGenerator(base, max_rank=8, ip_adapter=IPAdapterSpec(weights, encoder))
    gen.register(Character("A", lora_path=loras["A"].diffusers_path, trigger="ohwx"))
    gen.register(Character("B", lora_path=loras["B"].diffusers_path, trigger="ohwx"))
    return base, gen, loras, tmp


def render(gen, cid, seeds=(1, 2), **kw):
    req = GenerationRequest(cid, "a photo of {trigger}", seeds=seeds, height=32, width=32, steps=2,
                            max_sequence_length=32, **kw)
    result = gen.generate(req)
    return np.stack([np.asarray(im.image) for im in result.images]), result


def test_switch_a_b_a_reproduces_a_exactly(setup):
    _, gen, _, _ = setup
    a1, res = render(gen, "A")
    b, _ = render(gen, "B")
    a2, _ = render(gen, "A")
    assert res.tier == "lora" and [im.seed for im in res.images] == [1, 2]
    assert np.array_equal(a1, a2)
    assert np.mean(a1 != b) > 0.5  # the two characters really differ


def test_base_weights_unchanged_after_200_switches(setup):
    _, gen, _, _ = setup
    gen.activate("B")  # both characters in the CPU cache, whatever ran before this test
    before_img, _ = render(gen, "A", seeds=(3,))
    before = gen.base_checksum()
    start = gen.cache_stats()
    for i in range(200):
        gen.activate("A" if i % 2 else "B", lora_scale=0.5 + (i % 3) * 0.25)
    assert gen.base_checksum() == before  # a merged LoRA would change it (test_integrity_probes.py)
    after_img, _ = render(gen, "A", seeds=(3,))
    assert np.array_equal(before_img, after_img)
    stats = gen.cache_stats()
    assert stats.loads_disk == start.loads_disk  # every switch served from memory, no file re-read
    assert stats.hits_memory - start.hits_memory >= 200


def test_each_image_of_a_batch_reproduces_alone(setup):
    _, gen, _, _ = setup
    batch, _ = render(gen, "A", seeds=(5, 6, 7))
    alone, _ = render(gen, "A", seeds=(6,))
    assert np.array_equal(batch[1], alone[0])
    assert not np.array_equal(batch[0], batch[1])


def test_lora_scale_per_request(setup):
    base, gen, _, _ = setup
    full, _ = render(gen, "A", seeds=(1,), lora_scale=1.0)
    half, _ = render(gen, "A", seeds=(1,), lora_scale=0.5)
    off, _ = render(gen, "A", seeds=(1,), lora_scale=0.0)
    assert not np.array_equal(full, half) and not np.array_equal(half, off)
    # scale 0 is the bare base model: same pixels as a fresh pipeline without any adapter
    from persona_ml.models import load_base_model

    fresh = load_base_model("tiny-flux").pipeline
    fresh.set_progress_bar_config(disable=True)
    ref = fresh(prompt=["a photo of ohwx"], height=32, width=32, num_inference_steps=2, guidance_scale=3.5,
                generator=[torch.Generator().manual_seed(1)], max_sequence_length=32).images[0]
    assert np.array_equal(off[0], np.asarray(ref))
    # and scale 1 matches diffusers' own load_lora_weights of the same file
    fresh.load_lora_weights(str(setup[2]["A"].diffusers_path))
    ref_lora = fresh(prompt=["a photo of ohwx"], height=32, width=32, num_inference_steps=2, guidance_scale=3.5,
                     generator=[torch.Generator().manual_seed(1)], max_sequence_length=32).images[0]
    assert np.abs(full[0].astype(int) - np.asarray(ref_lora).astype(int)).max() <= 1


def _comfyui_copy(src, dst):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), "pt") as fh:
        meta = fh.metadata()
    out = {}
    for k, v in load_file(str(src)).items():
        m = re.match(r"lora_unet_double_blocks_(\d+)_(img|txt)_attn_(qkv|proj)\.(.+)$", k)
        out[f"diffusion_model.double_blocks.{m[1]}.{m[2]}_attn.{m[3]}.{m[4]}"
            .replace("lora_down", "lora_A").replace("lora_up", "lora_B")] = v
    save_file(out, str(dst), metadata=meta)
    return dst


def test_kohya_and_comfyui_files_give_the_same_images(setup):
    _, gen, loras, tmp = setup
    gen.register(Character("A_kohya", lora_path=loras["A"].kohya_path, trigger="ohwx"))
    gen.register(Character("A_comfy", lora_path=_comfyui_copy(loras["A"].kohya_path, tmp / "comfy.safetensors"),
                           trigger="ohwx"))
    a, _ = render(gen, "A", seeds=(4,))
    k, _ = render(gen, "A_kohya", seeds=(4,))
    c, _ = render(gen, "A_comfy", seeds=(4,))
    assert np.abs(a.astype(int) - k.astype(int)).max() <= 1
    assert np.abs(a.astype(int) - c.astype(int)).max() <= 1
    assert gen._memory["A_kohya"].lora.format == "kohya" and gen._memory["A_comfy"].lora.format == "comfyui"


def test_refused_lora_keeps_the_previous_adapter(setup):
    base, gen, _, tmp = setup
    other = make_random_lora(base.pipeline, tmp / "other", seed=9, base_model="flux-dev",
                             base_fingerprint="sha256:" + "0" * 64, targets=TARGETS)
    gen.register(Character("intruder", lora_path=other.diffusers_path))
    a1, _ = render(gen, "A", seeds=(8,))
    with pytest.raises(LoraValidationError) as exc:
        render(gen, "intruder", seeds=(8,))
    assert exc.value.code == "lora_base_mismatch"
    a2, _ = render(gen, "A", seeds=(8,))
    assert np.array_equal(a1, a2)


def test_ip_adapter_tier_conditions_on_the_reference(setup):
    _, gen, _, _ = setup
    rng = np.random.default_rng(0)
    ref1 = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    ref2 = 255 - ref1
    gen.register(Character("R", reference_image=ref1))
    a_before, _ = render(gen, "A", seeds=(2,))
    r1, res = render(gen, "R", seeds=(2,))
    r1_again, _ = render(gen, "R", seeds=(2,))
    r2, _ = render(gen, "R", seeds=(2,), reference_image=ref2)
    assert res.tier == "ip_adapter" and res.lora_sha256 is None
    assert np.array_equal(r1, r1_again) and not np.array_equal(r1, r2)
    a_after, _ = render(gen, "A", seeds=(2,))  # back to the LoRA tier: IP processors are out again
    assert np.array_equal(a_before, a_after)
    with pytest.raises(InputError) as exc:
        render(gen, "R", tier="lora")
    assert exc.value.code == "tier_unavailable"


def test_lru_cache_evicts_by_bytes(setup):
    base, _, loras, _ = setup
    gen = CharacterGenerator(base, max_rank=8, memory_budget_bytes=1)  # room for one entry only
    for cid in ("A", "B"):
        gen.register(Character(cid, lora_path=loras[cid].diffusers_path))
    gen.activate("A")
    gen.activate("B")
    stats = gen.cache_stats()
    assert stats.memory == ("B",) and stats.evictions == 1 and stats.active == "B"
    gen.activate("A")
    assert gen.cache_stats().loads_disk == 3


def test_direct_swap_matches_diffusers_hotswap(setup):
    base, gen, loras, _ = setup
    assert gen.swap == "direct"
    ref = {cid: render(gen, cid, seeds=(9,))[0] for cid in ("A", "B")}
    slow = CharacterGenerator(base, max_rank=8, swap="diffusers")  # reuses the same slot on the same pipeline
    for cid in ("A", "B"):
        slow.register(Character(cid, lora_path=loras[cid].diffusers_path, trigger="ohwx"))
    for cid in ("B", "A", "B"):
        assert np.array_equal(render(slow, cid, seeds=(9,))[0], ref[cid])


_COMPILE_CHECK = """
import sys, numpy as np, torch, torch._dynamo
from torch._dynamo.utils import counters
from persona_ml.models import load_base_model
from persona_ml.inference import Character, CharacterGenerator, GenerationRequest
gen = CharacterGenerator(load_base_model("tiny-flux"), max_rank=8, compile=True, compile_kwargs={"backend": "eager"})
gen.register(Character("A", lora_path=sys.argv[1])); gen.register(Character("B", lora_path=sys.argv[2]))
def render(cid, scale=1.0):
    r = gen.generate(GenerationRequest(cid, "a photo", seeds=(1,), height=32, width=32, steps=2,
                                       max_sequence_length=32, lora_scale=scale))
    return np.asarray(r.images[0].image)
a1 = render("A")
graphs = counters["stats"]["unique_graphs"]
torch._dynamo.config.error_on_recompile = True   # a recompile raises
b = render("B", 0.7); a2 = render("A")
assert counters["stats"]["unique_graphs"] == graphs >= 1, counters["stats"]
assert np.array_equal(a1, a2) and not np.array_equal(a1, b)
print("NO_RECOMPILE_OK", graphs)
# a base-only request detaches the slot (other modules in the tree: one more graph, then both are cached)
torch._dynamo.config.error_on_recompile = False
plain = load_base_model("tiny-flux").pipeline
plain.set_progress_bar_config(disable=True)
ref = np.asarray(plain(prompt=["a photo"], height=32, width=32, num_inference_steps=2, guidance_scale=3.5,
                       generator=[torch.Generator().manual_seed(1)], max_sequence_length=32).images[0])
base_img = render("A", 0.0)
assert np.abs(base_img.astype(int) - ref.astype(int)).max() <= 1 and not np.array_equal(base_img, a1)
assert np.array_equal(render("A"), a1) and np.array_equal(render("B", 0.7), b)
graphs2 = counters["stats"]["unique_graphs"]
assert np.array_equal(render("A", 0.0), base_img) and np.array_equal(render("A"), a1)
assert counters["stats"]["unique_graphs"] == graphs2, "switching back and forth compiled again"
print("DETACH_UNDER_COMPILE_OK", graphs2)
"""


def test_compiled_transformer_does_not_recompile_on_switch(setup):
    # In a child process: dynamo state left in this one slows every later test.
    import subprocess
    import sys

    _, _, loras, _ = setup
    proc = subprocess.run([sys.executable, "-c", _COMPILE_CHECK, str(loras["A"].diffusers_path),
                           str(loras["B"].diffusers_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NO_RECOMPILE_OK" in proc.stdout and "DETACH_UNDER_COMPILE_OK" in proc.stdout


# ---------------------------------------------------------------- identity on real photos


@pytest.fixture(scope="module")
def tom(insightface_images):
    from PIL import Image

    from persona_ml.faces import FaceEmbedder, FaceProfile

    embedder = FaceEmbedder("dlib")
    img = Image.open(insightface_images / "Tom_Hanks_54745.png").convert("RGB")
    profile = FaceProfile.build([embedder.embed_primary(img)])
    return embedder, profile, img


def test_identity_flags_on_real_photos(tom, insightface_images):
    from PIL import Image, ImageOps

    from persona_ml.inference import rank_best_of, score_images

    embedder, profile, img = tom
    w, h = img.size
    twice = Image.new("RGB", (2 * w + 20, h), "white")  # the character's face on two people
    twice.paste(img, (0, 0))
    twice.paste(ImageOps.mirror(img), (w + 20, 0))
    group = Image.open(insightface_images / "t1.jpg").convert("RGB")  # several other people
    blank = Image.new("RGB", (256, 256), (120, 160, 200))
    checks = score_images([img, twice, group, blank], profile, embedder)
    assert checks[0].flags == () and checks[0].matching_faces == 1
    assert checks[0].similarity > profile.thresholds.same_person_min_cosine
    assert "identity_bleeding" in checks[1].flags and checks[1].matching_faces == 2
    assert checks[2].num_faces >= 3 and "identity_bleeding" not in checks[2].flags
    assert "identity_low" in checks[2].flags
    assert checks[3].flags == ("no_face",) and checks[3].similarity is None
    assert rank_best_of(checks)[0] == 0 and rank_best_of(checks, keep=2)[0] == 0


def _side_by_side(paths, height=400):
    from PIL import Image

    tiles = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        tiles.append(im.resize((round(im.width * height / im.height), height)))
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 40 * (len(tiles) - 1), height), "white")
    x = 0
    for t in tiles:
        sheet.paste(t, (x, 0))
        x += t.width + 40
    return sheet


def test_identity_bleeding_with_distinct_photos(shared_faces, faces_manifest):
    """Two different photos of the character in one image are bleeding; the character beside a stranger is not."""
    from persona_ml.faces import FaceEmbedder, FaceProfile
    from persona_ml.inference import score_images

    rows = [r for r in faces_manifest if r["identity"] == "angelina" and not r["near_duplicate"]]
    photos = [shared_faces / r["path"] for r in rows]
    if len(photos) < 5:
        pytest.skip("needs 5 distinct photos of one identity in ../shared/faces")
    stranger = next(shared_faces / r["path"] for r in faces_manifest if r["identity"] == "deepface_p03")
    embedder = FaceEmbedder("dlib")
    profile = FaceProfile.build([embedder.embed_primary(p) for p in photos[:3]])
    two_of_her = _side_by_side([photos[3], photos[4]])
    her_and_stranger = _side_by_side([photos[3], stranger])
    bleed, single = score_images([two_of_her, her_and_stranger], profile, embedder)
    assert bleed.num_faces == 2 and bleed.matching_faces == 2 and "identity_bleeding" in bleed.flags
    assert single.num_faces == 2 and single.matching_faces == 1 and single.flags == ()


def test_requests_and_characters_are_checked_up_front():
    from persona_ml.inference import IdentityCheck, rank_best_of

    for bad in (dict(seeds=[]), dict(seeds=[-1]), dict(seeds=[1.5]), dict(height=50), dict(lora_scale=9.0),
                dict(tier="magic"), dict(steps=0), dict(keep=3), dict(prompt=" "), dict(lora_scale=None),
                dict(guidance="high"), dict(ip_adapter_scale=[1])):
        kw = {"character_id": "a", "prompt": "p", "seeds": [1, 2], **bad}
        with pytest.raises(InputError) as exc:
            GenerationRequest(**kw)
        assert exc.value.details["field"] in bad
    assert GenerationRequest("a", "p", lora_scale=np.float32(0.5)).lora_scale == 0.5
    with pytest.raises(InputError):
        Character("bad id/../x")
    assert Character("x", lora_path="a.safetensors", reference_image="r.png").face_consistency_tier == "lora"
    assert Character("x", reference_image="r.png").face_consistency_tier == "ip_adapter"
    assert Character("x").face_consistency_tier is None
    ok = IdentityCheck(0.9, 1, 1, 0.8)
    low = IdentityCheck(0.95, 2, 2, 0.8, ("identity_bleeding",))
    none = IdentityCheck(None, 0, 0, 0.8, ("no_face",))
    better = IdentityCheck(0.93, 1, 1, 0.8)
    assert rank_best_of([ok, low, none, better]) == (3, 0, 1, 2)
    assert rank_best_of([ok, low, none, better], keep=1) == (3,)


def test_retrained_lora_at_the_same_path_replaces_the_active_one(setup, tmp_path):
    """A worker re-exports a character's LoRA over the same file: the next request must use the new one,
    also when that character is the active one (no stale adapter served from the slot)."""
    import os
    import shutil

    _, gen, loras, _ = setup
    path = tmp_path / "pytorch_lora_weights.safetensors"
    shutil.copyfile(loras["A"].diffusers_path, path)
    gen.register(Character("R1", lora_path=path, trigger="ohwx"))
    a, _ = render(gen, "R1", seeds=(4,))
    b_ref, _ = render(gen, "B", seeds=(4,))
    render(gen, "R1", seeds=(4,))  # R1 active again
    shutil.copyfile(loras["B"].diffusers_path, path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse-mtime filesystems
    b, res = render(gen, "R1", seeds=(4,))
    assert np.array_equal(b, b_ref) and not np.array_equal(a, b)
    assert res.lora_sha256 == gen._memory["R1"].lora.sha256
    gen.unregister("R1")
