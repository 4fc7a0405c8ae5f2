"""One pipeline, many generators: the slot's state lives with the pipeline (issue 8).

Every image is compared with what a fresh single generator on a fresh pipeline renders for the
same request, so a generator that kept a stale idea of what is loaded, or a scale that was not
written, shows as different pixels.
"""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from persona_ml.errors import InputError  # noqa: E402
from persona_ml.inference import Character, CharacterGenerator, GenerationRequest  # noqa: E402
from persona_ml.inference.testing import make_random_lora  # noqa: E402

T_A = ["transformer_blocks.*.attn.to_q", "transformer_blocks.*.attn.to_k", "transformer_blocks.*.attn.to_v"]
T_B = ["transformer_blocks.*.attn.to_q", "transformer_blocks.*.attn.to_out.0", "single_transformer_blocks.*.proj_out"]


def _fresh():
    from persona_ml.models import load_base_model

    return load_base_model("tiny-flux")


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("share")
    base = _fresh()
    kw = dict(base_model=base.name, base_fingerprint=base.fingerprint)
    return {"A": make_random_lora(base.pipeline, tmp / "A", seed=1, rank=4, targets=T_A, **kw).diffusers_path,
            "B": make_random_lora(base.pipeline, tmp / "B", seed=2, rank=8, targets=T_B, **kw).diffusers_path,
            "C": make_random_lora(base.pipeline, tmp / "C", seed=3, rank=4, targets=T_A, **kw).diffusers_path}


def _request(cid, scale=1.0, seeds=(3,), tier=None):
    return GenerationRequest(cid, "a photo of {trigger}", seeds=seeds, height=32, width=32, steps=2,
                             max_sequence_length=32, lora_scale=scale, tier=tier)


def _pixels(result):
    return np.stack([np.asarray(im.image) for im in result.images])


@pytest.fixture(scope="module")
def reference(loras):
    """(character, scale) -> pixels from a fresh single generator on its own fresh pipeline."""
    cache: dict = {}

    def ref(cid, scale):
        if (cid, scale) not in cache:
            gen = CharacterGenerator(_fresh(), max_rank=8)
            gen.register(Character(cid, lora_path=loras[cid], trigger="ohwx"))
            cache[(cid, scale)] = _pixels(gen.generate(_request(cid, scale)))
        return cache[(cid, scale)]

    return ref


def _plain(seed=3):
    pipe = _fresh().pipeline
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=["a photo of ohwx"], height=32, width=32, num_inference_steps=2, guidance_scale=3.5,
               generator=[torch.Generator().manual_seed(seed)], max_sequence_length=32)
    return np.asarray(out.images[0])[None]


@pytest.mark.parametrize("swap", ["direct", "diffusers"])
def test_two_generators_interleaving_render_what_a_fresh_generator_renders(swap, loras, reference):
    base = _fresh()
    g1 = CharacterGenerator(base, max_rank=8, swap=swap)
    g2 = CharacterGenerator(base, max_rank=8, swap=swap)  # the same pipeline, as evaluate_lora(base=base) does
    g1.register(Character("A", lora_path=loras["A"], trigger="ohwx"))
    g2.register(Character("B", lora_path=loras["B"], trigger="ohwx"))
    g2.register(Character("A", lora_path=loras["C"], trigger="ohwx"))  # g2's "A" is another character
    plan = [(g1, "A", "A", 0.5), (g2, "B", "B", 1.0), (g1, "A", "A", 0.7), (g2, "B", "B", 0.5),
            (g1, "A", "A", 0.5), (g2, "A", "C", 0.5), (g1, "A", "A", 0.5), (g2, "B", "B", 0.7)]
    for gen, cid, file_id, scale in plan:
        got = _pixels(gen.generate(_request(cid, scale)))
        assert np.array_equal(got, reference(file_id, scale)), (swap, cid, file_id, scale)
        assert gen.slot.slot_scales() == {float(np.float32(scale))}  # PEFT's hotswap reset the scaling to 1.0 before the fix
    assert g1.slot is g2.slot and g1.cache_stats().slot_allocations == 2  # A's slot grew once, for B
    assert reference("A", 0.5).tolist() != reference("A", 0.7).tolist() != reference("C", 0.5).tolist()


def test_scale_matches_diffusers_own_adapter_scale(loras, reference):
    """Scale 0.5 in our slot = diffusers' load_lora_weights + set_adapters(weights=0.5) (independent path)."""
    pipe = _fresh().pipeline
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(loras["B"]), adapter_name="b")
    pipe.set_adapters(["b"], [0.5])
    out = pipe(prompt=["a photo of ohwx"], height=32, width=32, num_inference_steps=2, guidance_scale=3.5,
               generator=[torch.Generator().manual_seed(3)], max_sequence_length=32)
    theirs = np.asarray(out.images[0]).astype(int)
    ours = reference("B", 0.5)[0].astype(int)
    assert np.abs(ours - theirs).max() <= 1
    assert np.abs(reference("B", 1.0)[0].astype(int) - theirs).max() > 1  # 0.5 is not rendered as 1.0


def test_base_only_request_after_a_lora_request_is_the_plain_base_bit_for_bit(loras):
    from peft.tuners.lora import LoraLayer

    base = _fresh()
    gen = CharacterGenerator(base, max_rank=8)
    gen.register(Character("A", lora_path=loras["A"], trigger="ohwx"))
    plain = _plain()
    lora_img = _pixels(gen.generate(_request("A")))
    assert not np.array_equal(lora_img, plain)
    for req in (_request("A", tier="base"), _request("A", scale=0.0)):
        res = gen.generate(req)
        assert np.array_equal(_pixels(res), plain)
        # the slot is out of the module tree: a base-only request runs the base model's own modules
        assert not any(isinstance(m, LoraLayer) for m in base.pipeline.transformer.modules())
    assert res.tier == "lora" and gen.generate(_request("A", tier="base")).tier == "base"
    assert np.array_equal(_pixels(gen.generate(_request("A"))), lora_img)  # re-attached: A again


def test_no_slot_before_the_first_lora_and_it_grows_to_the_union_once(loras):
    base = _fresh()
    gen = CharacterGenerator(base, max_rank=8)
    assert gen.cache_stats().slot_modules == 0 and getattr(base.pipeline.transformer, "peft_config", None) in (None, {})
    gen.register(Character("A", lora_path=loras["A"], trigger="ohwx"))
    gen.register(Character("B", lora_path=loras["B"], trigger="ohwx"))
    a1 = _pixels(gen.generate(_request("A")))
    s = gen.cache_stats()
    n_a = len(gen._memory["A"].lora.target_modules)
    assert (s.slot_modules, s.slot_rank, s.slot_allocations) == (n_a, 4, 1)  # only what A targets, at A's rank
    gen.generate(_request("B"))
    s = gen.cache_stats()
    union = set(gen._memory["A"].lora.target_modules) | set(gen._memory["B"].lora.target_modules)
    assert (s.slot_modules, s.slot_rank, s.slot_allocations) == (len(union), 8, 2)
    assert np.array_equal(_pixels(gen.generate(_request("A"))), a1)  # B's extra modules are zeroed for A
    assert gen.cache_stats().slot_allocations == 2
    # preloaded characters are covered by the first allocation: no growth later
    gen2 = CharacterGenerator(_fresh(), max_rank=8)
    for cid in ("A", "B"):
        gen2.register(Character(cid, lora_path=loras[cid], trigger="ohwx"), preload=True)
    gen2.generate(_request("A"))
    gen2.generate(_request("B"))
    assert gen2.cache_stats().slot_allocations == 1 and gen2.cache_stats().slot_modules == len(union)


def test_threads_on_two_generators_never_mix_characters(loras, reference):
    base = _fresh()
    gens = [CharacterGenerator(base, max_rank=8), CharacterGenerator(base, max_rank=8)]
    for g in gens:
        for cid in ("A", "B"):
            g.register(Character(cid, lora_path=loras[cid], trigger="ohwx"))
    wrong: list = []

    def work(g, order):
        for cid, scale in order:
            if not np.array_equal(_pixels(g.generate(_request(cid, scale))), reference(cid, scale)):
                wrong.append((cid, scale))

    for cid, scale in (("A", 0.5), ("B", 1.0), ("A", 0.7)):
        reference(cid, scale)  # computed before the threads start
    threads = [threading.Thread(target=work, args=(gens[0], [("A", 0.5), ("B", 1.0), ("A", 0.7)])),
               threading.Thread(target=work, args=(gens[1], [("B", 1.0), ("A", 0.7), ("A", 0.5)]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_adapters_loaded_outside_persona_ml_are_refused(loras):
    base = _fresh()
    base.pipeline.load_lora_weights(str(loras["A"]), adapter_name="theirs")
    with pytest.raises(InputError) as exc:
        CharacterGenerator(base)
    assert exc.value.code == "base_has_adapters"
    other = _fresh()
    gen = CharacterGenerator(other, max_rank=8)
    gen.register(Character("B", lora_path=loras["B"], trigger="ohwx"))
    gen.generate(_request("B"))
    other.pipeline.load_lora_weights(str(loras["A"]), adapter_name="theirs")  # behind the generator's back
    with pytest.raises(InputError) as exc:
        gen.generate(_request("B"))
    assert exc.value.code == "base_has_adapters" and exc.value.details["value"] == ["theirs"]


def test_registered_lora_rewritten_with_the_same_size_and_mtime_is_revalidated(loras, reference, tmp_path):
    """Issue 12: a copy that keeps size and mtime (cp -p, rsync -t) used to leave the old LoRA in use."""
    assert loras["A"].stat().st_size == loras["C"].stat().st_size  # same rank and targets, same header size
    path = tmp_path / "pytorch_lora_weights.safetensors"
    shutil.copyfile(loras["A"], path)
    gen = CharacterGenerator(_fresh(), max_rank=8)
    gen.register(Character("R", lora_path=path, trigger="ohwx"))
    assert np.array_equal(_pixels(gen.generate(_request("R"))), reference("A", 1.0))
    st = os.stat(path)
    shutil.copyfile(loras["C"], path)  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime restored
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns and os.stat(path).st_size == st.st_size
    assert np.array_equal(_pixels(gen.generate(_request("R"))), reference("C", 1.0))
    loads = gen.cache_stats().loads_disk
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))  # a touch: same content
    assert np.array_equal(_pixels(gen.generate(_request("R"))), reference("C", 1.0))
    assert gen.cache_stats().loads_disk == loads  # hashed, found unchanged, not validated again


def test_fixed_slot_targets_allocate_once_and_refuse_outside(loras):
    from persona_ml.errors import LoraValidationError
    from persona_ml.lora.formats import lora_target_modules

    base = _fresh()
    targets = lora_target_modules(base.pipeline.transformer, T_A)
    gen = CharacterGenerator(base, max_rank=8, slot_targets=targets)
    s = gen.cache_stats()
    assert (s.slot_modules, s.slot_rank, s.slot_allocations) == (len(targets), 8, 1)
    gen.register(Character("A", lora_path=loras["A"]))
    gen.register(Character("B", lora_path=loras["B"]))
    gen.activate("A")
    with pytest.raises(LoraValidationError) as exc:
        gen.activate("B")
    assert exc.value.code == "lora_unused_keys"
    assert gen.cache_stats().slot_allocations == 1


def test_evaluate_lora_never_mutates_the_generator_it_is_given(loras, reference, tmp_path, insightface_images):
    from PIL import Image

    from persona_ml.eval import evaluate_lora
    from persona_ml.faces import FaceEmbedder, FaceProfile

    embedder = FaceEmbedder("dlib")
    profile = FaceProfile.build([embedder.embed_primary(
        Image.open(insightface_images / "Tom_Hanks_54745.png").convert("RGB"))])
    base = _fresh()
    gen = CharacterGenerator(base, max_rank=8)
    gen.register(Character("A", lora_path=loras["A"], trigger="ohwx"))
    assert np.array_equal(_pixels(gen.generate(_request("A", 0.7))), reference("A", 0.7))
    before = (dict(gen._characters), gen.cache_stats().memory, gen.face_embedder)
    report = evaluate_lora(loras["B"], base=gen, out_dir=tmp_path / "ev", profile=profile, embedder=embedder,
                           seeds=(0,), height=32, width=32, steps=1, max_sequence_length=32)
    assert report.threshold is not None and (tmp_path / "ev" / "report.json").is_file()
    assert (dict(gen._characters), gen.cache_stats().memory, gen.face_embedder) == before  # embedder not replaced
    assert gen.face_embedder is None
    # the evaluation left B in the shared slot: the caller's next A request still renders A at its scale
    assert np.array_equal(_pixels(gen.generate(_request("A", 0.7))), reference("A", 0.7))


def test_characters_with_the_slot_layout_switch_with_one_copy(loras, reference, monkeypatch):
    """LoRAs with exactly the slot's modules and rank are kept as one flat tensor in the slot's layout:
    their switches are one copy, with the same images and the same cache bytes as the per-module path."""
    from persona_ml.inference.slot import PipelineSlot

    gen = CharacterGenerator(_fresh(), max_rank=8)
    for cid in ("A", "C"):  # same targets and rank
        gen.register(Character(cid, lora_path=loras[cid], trigger="ohwx"))
    assert np.array_equal(_pixels(gen.generate(_request("A", 0.7))), reference("A", 0.7))  # module by module
    assert np.array_equal(_pixels(gen.generate(_request("C"))), reference("C", 1.0))
    bytes_before = gen.cache_stats().memory_bytes
    assert gen._memory["A"].packed is not None and gen._memory["C"].packed is not None

    def no_per_module_copy(self, lora):
        raise AssertionError("a packed LoRA was copied module by module")

    plan = (("A", "A", 0.7), ("C", "C", 1.0), ("A", "A", 0.5))
    refs = {(f, sc): reference(f, sc) for _, f, sc in plan}  # fresh generators copy module by module
    monkeypatch.setattr(PipelineSlot, "_swap_direct", no_per_module_copy)
    for cid, file_id, scale in plan:
        assert np.array_equal(_pixels(gen.generate(_request(cid, scale))), refs[(file_id, scale)])
    assert gen.cache_stats().memory_bytes == bytes_before
    # the flat copies replaced the canonical tensors (views now), they did not add to them
    canonical = sum(t.numel() * t.element_size() for t in gen._memory["A"].lora.state_dict.values())
    assert canonical <= bytes_before / 2 <= 1.05 * canonical
    gen.register(Character("B", lora_path=loras["B"], trigger="ohwx"))  # another layout: the slot grows
    monkeypatch.undo()
    assert np.array_equal(_pixels(gen.generate(_request("B", 0.7))), reference("B", 0.7))
    assert np.array_equal(_pixels(gen.generate(_request("A", 0.5))), reference("A", 0.5))  # stale pack not used


@pytest.mark.parametrize("detached", [False, True])
def test_pipeline_cast_after_the_slot_exists_reallocates_it(loras, detached):
    """pipe.to(dtype) replaces the slot's tensors (attached) or leaves them behind (detached): the slot notices,
    is allocated again on the pipeline's dtype, and the LoRA is copied in again."""
    base = _fresh()
    gen = CharacterGenerator(base, max_rank=8)
    for cid in ("A", "C"):  # same layout: both switch by one copy into the flat buffer
        gen.register(Character(cid, lora_path=loras[cid], trigger="ohwx"))
        gen.generate(_request(cid))
    if detached:
        gen.generate(_request("A", tier="base"))
    base.pipeline.to(torch.bfloat16)
    got = {cid: _pixels(gen.generate(_request(cid))) for cid in ("A", "C")}
    assert gen.slot.allocations == 2 and gen.slot._flat.dtype == torch.bfloat16
    ref_base = _fresh()
    ref_base.pipeline.to(torch.bfloat16)
    for cid in ("A", "C"):
        ref = CharacterGenerator(ref_base, max_rank=8)
        ref.register(Character(cid, lora_path=loras[cid], trigger="ohwx"))
        assert np.array_equal(got[cid], _pixels(ref.generate(_request(cid)))), cid
