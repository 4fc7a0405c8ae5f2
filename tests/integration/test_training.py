"""The trainer end to end on tiny-flux, CPU: learning, events, samples, export round trip,
cache reuse without encoder passes, cancellation, SIGTERM, NaN, rules before model load."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from persona_ml.errors import LoraRuleError, TrainingError
from persona_ml.training import job as jobmod
from persona_ml.training.config import load_train_config
from persona_ml.training.flux import FluxBatch, flow_matching_loss, mask_to_packed_weights
from persona_ml.training.samples import IdentityScorer
from persona_ml.training.testing import TinyLoader, make_synthetic_dataset
from persona_ml.training.types import JobStatus


class ForwardCounter:
    """Counts forward passes of the VAE encoder and both text encoders of each loaded pipeline."""

    def __init__(self) -> None:
        self.counts = {"vae_encoder": 0, "text_encoder": 0, "text_encoder_2": 0}

    def __call__(self, pipe) -> None:
        for name, module in (("vae_encoder", pipe.vae.encoder if pipe.vae is not None else None),
                             ("text_encoder", pipe.text_encoder), ("text_encoder_2", pipe.text_encoder_2)):
            if module is None:
                continue
            module.register_forward_hook(lambda *_a, _n=name: self.counts.__setitem__(_n, self.counts[_n] + 1))


def _dlib_embedder():
    pytest.importorskip("dlib")
    from persona_ml.faces.embedder import FaceEmbedder

    return FaceEmbedder("dlib")


@pytest.fixture(scope="module")
def tiny():
    """One tiny-flux build per module; every run gets a deep copy."""
    return TinyLoader()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("prepared"), n=3, size=64)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _cfg(cache_dir, *over):
    return load_train_config("tiny-cpu", [f"cache.dir={cache_dir}", "steps=8", "checkpoint.every=4",
                                          "checkpoint.keep_last=2", "samples.every=-1", "samples.steps=2",
                                          "optimizer.lr=1e-2", *over])


@pytest.fixture(scope="module")
def first_run(dataset, cache_dir, tmp_path_factory, tiny):
    counter = ForwardCounter()
    loader = tiny.with_hook(counter)
    events = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jobmod, "_load_base_model", loader)
        out = tmp_path_factory.mktemp("run1")
        result = jobmod.train_lora(_cfg(cache_dir, "samples.every=4"), dataset.root, out, on_event=events.append,
                                   profile=_Profile(), face_embedder=_dlib_embedder())
    return result, events, counter, loader


def test_loss_falls_when_overfitting_a_fixed_batch(tiny):
    from peft import LoraConfig

    from persona_ml.training.config import NoiseConfig

    tr = tiny("tiny-flux", dtype=torch.float32, device="cpu").pipeline.transformer
    tr.requires_grad_(False)
    torch.manual_seed(0)
    tr.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for p in tr.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-2)
    g = torch.Generator().manual_seed(1)
    batch = FluxBatch(torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 8, 32, generator=g),
                      torch.randn(1, 32, generator=g))
    losses = []
    for _ in range(30):
        loss = flow_matching_loss(tr, batch, NoiseConfig(), torch.Generator().manual_seed(5))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0] and losses[-1] < min(losses[:5]), losses


def test_face_mask_weights_the_face_tokens_more():
    mask = torch.zeros(64, 64)
    mask[:32, :32] = 1.0                                  # face in the top-left quadrant
    w = mask_to_packed_weights(mask, 8, 8, face_weight=3.0, channels=16)
    assert w.shape == (1, 16, 64)                          # 4 x 4 packed tokens of 2 x 2 x 16 values
    grid = w[0].mean(-1).reshape(4, 4)                     # token order is row-major over the 4 x 4 grid
    assert torch.allclose(grid[:2, :2], torch.full((2, 2), 3.0)) and torch.allclose(grid[2:, 2:], torch.ones(2, 2))
    assert mask_to_packed_weights(mask, 8, 8, face_weight=1.0, channels=16) is None


def test_a_full_run_completes_with_events_checkpoints_and_resolved_config(first_run, cache_dir):
    result, events, counter, _ = first_run
    assert result.status is JobStatus.COMPLETED and result.status.api_status == "completed"
    statuses = [e.status for e in events if e.kind == "status"]
    assert statuses == [JobStatus.PREPARING, JobStatus.TRAINING, JobStatus.COMPLETED]
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == list(range(1, 9)) and all(np.isfinite(e.loss) and e.lr > 0 for e in steps)
    assert steps[-1].eta_s == 0 and steps[0].eta_s > 0
    assert load_train_config(result.config_path) == _cfg(cache_dir, "samples.every=4")
    ckpts = sorted(p.name for p in (result.output_dir / "checkpoints").iterdir())
    assert ckpts == ["step-000004", "step-000008"]
    assert {"steps_too_low", "rank_too_low", "base_model_not_allowed"} <= {v["code"] for v in result.rule_violations}
    saved = json.loads((result.output_dir / "result.json").read_text())
    assert saved["status"] == "completed" and len(saved["losses"]) == 8
    assert result.cache["latent_misses"] == 6 and sum(counter.counts.values()) > 0   # cold cache: 3 items x 2 sizes


def test_export_carries_provenance_in_both_formats(first_run, dataset):
    from persona_ml.lora.export import read_lora_metadata

    result, _, _, loader = first_run
    assert result.lora_path.is_file() and result.kohya_path.is_file()
    meta = read_lora_metadata(result.lora_path)
    assert (meta.rank, meta.steps, meta.trigger, meta.base_model) == (4, 8, "ohwx", "tiny-flux")
    assert meta.base_model_fingerprint.startswith("sha256:") and meta.dataset_hash == dataset.info.dataset_hash


def test_samples_are_rendered_and_scored_honestly_without_faces(first_run):
    result, events, _, _ = first_run
    sample_events = [e for e in events if e.kind == "samples"]
    assert [e.step for e in sample_events] == [4, 8]
    assert all(os.path.isfile(p) for e in sample_events for p in e.sample_paths)
    # a random tiny model draws no face: recorded as such, and no checkpoint is called "best"
    assert [(s.step, s.detection_rate, s.similarity, s.score) for s in result.identity] == [(4, 0.0, None, 0.0),
                                                                                            (8, 0.0, None, 0.0)]
    assert result.best_step is None and result.best_lora_path == result.lora_path


def test_exported_lora_reproduces_the_trained_pipelines_images(first_run):
    from persona_ml.models.tiny_flux import build_tiny_flux_pipeline

    result, _, _, _ = first_run  # a fresh build (not a copy of the trained one)
    trained = np.asarray(Image.open(result.output_dir / "samples" / "step-000008" / "p0_s7.png"), dtype=np.int16)
    pipe = build_tiny_flux_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    cfg = load_train_config(result.config_path)

    def render():
        return np.asarray(pipe(cfg.samples.prompts[0].replace("{trigger}", "ohwx"), num_inference_steps=cfg.samples.steps,
                               guidance_scale=cfg.samples.guidance, width=cfg.samples.width, height=cfg.samples.height,
                               max_sequence_length=cfg.data.max_sequence_length,
                               generator=torch.Generator().manual_seed(cfg.samples.seeds[0])).images[0], dtype=np.int16)

    base = render()
    pipe.load_lora_weights(str(result.lora_path.parent), adapter_name="exported")
    with_lora = render()
    pipe.set_adapters(["exported"], adapter_weights=[0.9])   # what an export at 90% strength would give
    at_90 = render()

    def matches(img):  # PNG rounding only: at most one level anywhere, almost nowhere
        d = np.abs(img - trained)
        return d.max() <= 1 and d.mean() < 0.02

    assert np.abs(base - trained).max() > 3, "training changed nothing visible: the comparison would be vacuous"
    assert matches(with_lora)
    assert not matches(at_90), "a LoRA exported at 90% strength would pass: the tolerance is too loose"


def test_second_run_hits_the_cache_without_encoder_passes(first_run, dataset, cache_dir, tmp_path, monkeypatch, tiny):
    counter = ForwardCounter()
    monkeypatch.setattr(jobmod, "_load_base_model", tiny.with_hook(counter))
    result = jobmod.train_lora(_cfg(cache_dir, "steps=2"), dataset.root, tmp_path)
    assert result.status is JobStatus.COMPLETED
    assert counter.counts == {"vae_encoder": 0, "text_encoder": 0, "text_encoder_2": 0}
    assert result.cache["latent_hits"] == 6 and result.cache["latent_misses"] == 0 and result.cache["text_misses"] == 0
    assert result.encoders == "skipped"    # nothing to encode: the encoders were not even loaded


def test_cancel_checkpoints_and_resume_finishes(dataset, cache_dir, tmp_path, monkeypatch, tiny):
    monkeypatch.setattr(jobmod, "_load_base_model", tiny.with_hook(None))
    job = jobmod.TrainingJob(_cfg(cache_dir), dataset, tmp_path,
                             on_event=lambda e: job.cancel() if (e.kind == "step" and e.step == 3) else None)
    result = job.run()
    assert result.status is JobStatus.CANCELLED and result.lora_path is None and len(result.losses) == 3
    assert (tmp_path / "checkpoints" / "step-000003" / "meta.json").is_file()
    events = []
    resumed = jobmod.train_lora(_cfg(cache_dir), dataset, tmp_path, resume=True, on_event=events.append)
    assert resumed.status is JobStatus.COMPLETED and resumed.resumed_from == 3 and len(resumed.losses) == 8
    # the resumed run computed steps 4..8 only (its first 3 losses are the checkpoint's copy: not compared;
    # tests/integration/test_resume.py compares what a resumed run computes with an uninterrupted run)
    assert [e.step for e in events if e.kind == "step"] == [4, 5, 6, 7, 8]


def test_sigterm_writes_a_checkpoint_and_ends_cancelled(dataset, cache_dir, tmp_path, monkeypatch, tiny):
    monkeypatch.setattr(jobmod, "_load_base_model", tiny.with_hook(None))
    previous = signal.getsignal(signal.SIGTERM)
    job = jobmod.TrainingJob(_cfg(cache_dir), dataset, tmp_path,
                             on_event=lambda e: os.kill(os.getpid(), signal.SIGTERM) if (e.kind == "step"
                                                                                        and e.step == 2) else None)
    try:
        job.install_signal_handlers()
        result = job.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.status is JobStatus.CANCELLED
    assert (tmp_path / "checkpoints" / "step-000002" / "meta.json").is_file()


def test_nan_loss_fails_the_job_with_a_code(dataset, cache_dir, tmp_path, monkeypatch, tiny):
    monkeypatch.setattr(jobmod, "_load_base_model", tiny.with_hook(None))
    job = jobmod.TrainingJob(_cfg(cache_dir, "optimizer.lr=1e30", "optimizer.max_grad_norm=0"), dataset, tmp_path)
    with pytest.raises(TrainingError) as err:
        job.run()
    assert err.value.code == "training_nan_loss" and job.status is JobStatus.FAILED
    assert json.loads((tmp_path / "result.json").read_text())["error"]["code"] == "training_nan_loss"


def test_rule_violation_stops_before_any_model_is_loaded(dataset, cache_dir, tmp_path, monkeypatch):
    loader = TinyLoader()
    monkeypatch.setattr(jobmod, "_load_base_model", loader)
    job = jobmod.TrainingJob(_cfg(cache_dir, "rules.mode=enforce"), dataset, tmp_path)
    with pytest.raises(LoraRuleError) as err:
        job.run()
    assert loader.calls == 0 and job.status is JobStatus.FAILED
    assert {"too_few_images", "steps_too_low", "rank_too_low"} <= set(err.value.details["codes"])



def test_device_cuda_without_cuda_fails_before_loading_instead_of_training_on_cpu(dataset, cache_dir, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loader = TinyLoader()
    monkeypatch.setattr(jobmod, "_load_base_model", loader)
    job = jobmod.TrainingJob(_cfg(cache_dir, "device=cuda"), dataset, tmp_path)
    with pytest.raises(TrainingError) as err:
        job.run()
    assert err.value.code == "device_unavailable" and err.value.details["field"] == "device"
    assert loader.calls == 0 and job.status is JobStatus.FAILED


def test_an_out_of_memory_error_fails_the_job_with_a_code_and_a_result(dataset, cache_dir, tmp_path, monkeypatch,
                                                                       tiny):
    from persona_ml.training import flux

    monkeypatch.setattr(jobmod, "_load_base_model", tiny.with_hook(None))

    def oom(*_a, **_k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 18.00 GiB")

    monkeypatch.setattr(flux, "flow_matching_loss", oom)
    events = []
    job = jobmod.TrainingJob(_cfg(cache_dir), dataset, tmp_path, on_event=events.append)
    with pytest.raises(TrainingError) as err:
        job.run()
    assert err.value.code == "out_of_memory" and isinstance(err.value.__cause__, torch.OutOfMemoryError)
    assert job.status is JobStatus.FAILED and events[-1].status is JobStatus.FAILED  # not stuck in "training"
    assert json.loads((tmp_path / "result.json").read_text())["error"]["code"] == "out_of_memory"


def test_a_cpu_job_does_not_pin_later_jobs_to_its_device_or_precision(dataset, cache_dir, tmp_path, monkeypatch,
                                                                      tiny):
    # accelerate's state is process-wide: a service worker runs many jobs in one process
    monkeypatch.setattr(jobmod, "_load_base_model", tiny.with_hook(None))
    first = jobmod.train_lora(_cfg(cache_dir, "steps=1", "precision=fp32"), dataset, tmp_path / "a")
    second = jobmod.train_lora(_cfg(cache_dir, "steps=1", "precision=bf16"), dataset, tmp_path / "b")
    assert first.status is JobStatus.COMPLETED and second.status is JobStatus.COMPLETED

class _Obs:
    def __init__(self, emb, size=50.0):
        self.embedding = np.asarray(emb, dtype=np.float32)
        self.face_size = size


class _FakeEmbedder:
    """Finds a 'face' whose embedding is the image's mean colour (unit-normalised)."""

    class thresholds:
        near_duplicate_min_cosine = 0.999

    def analyze(self, paths):
        out = []
        for p in paths:
            rgb = np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0) + 1e-3
            out.append([_Obs(rgb / np.linalg.norm(rgb))])
        return out


class _Profile:
    def similarity(self, obs):
        return float(obs.embedding[0])


def test_identity_score_penalises_near_copies_of_training_photos(dataset, tmp_path):
    train = [dataset.path(it.image) for it in dataset.items]
    copy = tmp_path / "copy.png"
    Image.open(train[0]).save(copy)                         # a memorised training photo
    novel = tmp_path / "novel.png"
    Image.fromarray(np.full((64, 64, 3), (200, 40, 40), np.uint8)).save(novel)
    score = IdentityScorer(_FakeEmbedder(), _Profile(), train).score(5, [copy, novel])
    assert [s.near_copy for s in score.samples] == [True, False]
    assert score.detection_rate == 1.0 and score.near_copies == 1
    assert score.similarity == pytest.approx(score.samples[1].similarity)
    assert score.score == pytest.approx(score.samples[1].similarity / 2)   # the copy counts 0


class _PathObs(_Obs):
    def __init__(self, path):
        is_sample = "samples" in str(path)
        super().__init__([0.0, 1.0] if is_sample else [1.0, 0.0])   # samples never match a training photo
        self.path = str(path)


class _PathEmbedder:
    """Finds a face everywhere; the 'identity' is read from the file path (step 4 looks best)."""

    class thresholds:
        near_duplicate_min_cosine = 0.99

    def analyze(self, paths):
        return [[_PathObs(p)] for p in paths]


class _StepProfile:
    def similarity(self, obs):
        return 0.9 if "step-000004" in obs.path else 0.5


def test_best_identity_step_is_named_and_exported(dataset, cache_dir, tmp_path, monkeypatch, tiny):
    from persona_ml.lora.export import read_lora_metadata

    monkeypatch.setattr(jobmod, "_load_base_model", tiny.with_hook(None))
    cfg = _cfg(cache_dir, "samples.every=4", "checkpoint.every=8")
    job = jobmod.TrainingJob(cfg, dataset, tmp_path, profile=_StepProfile(), face_embedder=_PathEmbedder(),
                             on_event=lambda e: job.cancel() if (e.kind == "step" and e.step == 5) else None)
    assert job.run().status is JobStatus.CANCELLED   # step 4's samples were scored before the stop
    result = jobmod.train_lora(cfg, dataset, tmp_path, profile=_StepProfile(), face_embedder=_PathEmbedder(),
                               resume=True)
    assert result.resumed_from == 5
    assert [(s.step, s.score) for s in result.identity] == [(4, pytest.approx(0.9)), (8, pytest.approx(0.5))]
    assert result.best_step == 4 and result.best_lora_path == tmp_path / "best" / "pytorch_lora_weights.safetensors"
    assert read_lora_metadata(result.best_lora_path).steps == 4 and read_lora_metadata(result.lora_path).steps == 8
    best, final = load_file(str(result.best_lora_path)), load_file(str(result.lora_path))
    assert any(not torch.equal(best[k], final[k]) for k in final)   # step 4's weights, not a copy of the final


def _script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "train_lora.py"
    spec = importlib.util.spec_from_file_location("train_lora_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_trains_and_refuses_rule_violations(dataset, cache_dir, tmp_path, capsys):
    previous = signal.getsignal(signal.SIGTERM)
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        main = _script().main
        common = ["--config", "tiny-cpu", "--images", str(dataset.root), "--quiet",
                  "--set", f"cache.dir={cache_dir}", "--set", "steps=2", "--set", "samples.every=-1"]
        assert main([*common, "--output", str(tmp_path / "ok")]) == 0
        assert "status: completed" in capsys.readouterr().out
        assert (tmp_path / "ok" / "lora" / "pytorch_lora_weights.safetensors").is_file()
        assert main([*common, "--output", str(tmp_path / "refused"), "--set", "rules.mode=enforce"]) == 2
        err = capsys.readouterr().err
        assert "lora_rules_violation" in err and "steps_too_low" in err
        assert not (tmp_path / "refused" / "config.resolved.yaml").exists()   # stopped before anything ran
        assert signal.getsignal(signal.SIGINT) is previous_int   # the script puts Ctrl-C back
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def test_same_bucket_samples_are_stacked_into_one_forward(dataset, cache_dir, tmp_path, monkeypatch, tiny):
    """batch_size 2 over 3 items x 2 sizes: every forward holds one bucket, most hold two samples."""
    shapes = []

    def hook(pipe):
        if pipe.transformer is not None:
            pipe.transformer.register_forward_hook(
                lambda m, a, kw, out: shapes.append(tuple(kw["hidden_states"].shape)) if m.training else None,
                with_kwargs=True)

    monkeypatch.setattr(jobmod, "_load_base_model", tiny.with_hook(hook))
    result = jobmod.train_lora(_cfg(cache_dir, "steps=2", "checkpoint.every=2", "data.batch_size=2",
                                    "data.gradient_accumulation=2"), dataset, tmp_path)
    assert result.status is JobStatus.COMPLETED and all(np.isfinite(result.losses))
    # 4 forwards (2 steps x 2 micro-steps); 32 px = 4 packed tokens, 64 px = 16; batches of one bucket
    assert len(shapes) == 4 and {s[1] for s in shapes} <= {4, 16} and max(s[0] for s in shapes) == 2
    meta = json.loads((tmp_path / "checkpoints" / "step-000002" / "meta.json").read_text())
    # an epoch is 4 batches (each bucket: one of 2, one of 1): 4 micro-steps end it exactly
    assert meta["position"] == {"epoch": 1, "index": 0}


def test_bucket_batches_keep_the_seeded_order_and_one_bucket_per_batch(dataset):
    from persona_ml.training.data import bucket_batches, build_samples

    samples = build_samples(dataset, (32, 64))
    order = [5, 0, 3, 1, 4, 2]
    assert bucket_batches(order, samples, 1) == [(i,) for i in order]   # batch 1 is the permutation itself
    batches = bucket_batches(order, samples, 2)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len({(samples[i].width, samples[i].height) for i in b}) == 1 for b in batches)
    assert batches[0] == (5, 3) and [len(b) for b in batches] == [2, 2, 1, 1]   # full ones first, then the rest


def test_resume_with_real_batches_is_bitwise_identical(dataset, cache_dir, tmp_path, monkeypatch, tiny):
    monkeypatch.setattr(jobmod, "_load_base_model", tiny.with_hook(None))
    over = ("steps=6", "checkpoint.every=2", "data.batch_size=2", "data.gradient_accumulation=2")
    reference = jobmod.train_lora(_cfg(cache_dir, *over), dataset, tmp_path / "ref")
    job = jobmod.TrainingJob(_cfg(cache_dir, *over), dataset, tmp_path / "cut",
                             on_event=lambda e: job.cancel() if (e.kind == "step" and e.step == 3) else None)
    assert job.run().status is JobStatus.CANCELLED
    resumed = jobmod.train_lora(_cfg(cache_dir, *over), dataset, tmp_path / "cut", resume=True)
    assert resumed.resumed_from == 3 and resumed.losses == reference.losses
    ref, got = load_file(str(reference.lora_path)), load_file(str(resumed.lora_path))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


# --- memory-ordered loading ----------------------------------------------------------------------

def test_encoders_are_released_before_the_transformer_loads(dataset, cache_dir, tmp_path, monkeypatch, tiny):
    import gc
    import weakref

    from persona_ml.training.memory import module_bytes

    held = {}

    def hook(pipe):
        if pipe.text_encoder_2 is not None:  # the encoders phase
            held["t5"] = weakref.ref(pipe.text_encoder_2)
            held["clip"] = weakref.ref(pipe.text_encoder)
            held["encode_bytes"] = module_bytes(pipe.vae, pipe.text_encoder, pipe.text_encoder_2)
        elif pipe.transformer is not None:  # the transformer phase: nothing of the encoders may be alive
            gc.collect()
            held["alive_at_transformer_load"] = (held["t5"]() is not None, held["clip"]() is not None)
            held["transformer_bytes"] = module_bytes(pipe.transformer)

    loader = tiny.with_hook(hook)
    monkeypatch.setattr(jobmod, "_load_base_model", loader)
    events = []
    # an empty cache: the encoders must load (a full cache skips them: tests/integration/test_training_cache.py)
    result = jobmod.train_lora(_cfg(tmp_path / "cache", "steps=2"), dataset, tmp_path / "run", on_event=events.append)
    assert loader.parts_loaded == ["none", "encoders", "transformer"]
    assert held["alive_at_transformer_load"] == (False, False)
    mem = result.memory
    assert mem["encode"]["weights_bytes"] == held["encode_bytes"]
    # the loop holds the transformer (+ fp32 LoRA) and, with samples off, no VAE at all
    assert held["transformer_bytes"] <= mem["train"]["weights_bytes"] < held["transformer_bytes"] * 1.2
    if mem["peak_bytes"] is not None:       # Linux: VmHWM reset per phase
        assert mem["peak_bytes"] == max(mem["encode"]["peak_bytes"], mem["train"]["peak_bytes"])
    phases = [e.phase for e in events if e.kind == "progress"]
    assert phases[:3] == ["check_cache", "check_cache", "load_encoders"]
    assert "encode_latents" in phases and "encode_text" in phases
    assert phases.index("load_transformer") > phases.index("encode_text") and phases[-1] == "export"
    latents = [e for e in events if e.phase == "encode_latents"]
    assert [e.current for e in latents] == list(range(1, 7)) and latents[-1].count == 6


def test_cache_off_loads_everything_once_and_keeps_the_encoders(dataset, cache_dir, tmp_path, monkeypatch, tiny):
    loader = tiny.with_hook(None)
    monkeypatch.setattr(jobmod, "_load_base_model", loader)
    result = jobmod.train_lora(_cfg(cache_dir, "steps=1", "cache.enabled=false"), dataset, tmp_path)
    assert loader.parts_loaded == ["all"] and "encode" not in result.memory
    assert result.status is JobStatus.COMPLETED


# --- quantized base on CPU (torchao int8 weight-only; nf4 needs CUDA: tests/gpu) ----------------

def test_int8_quantized_base_trains_a_lora_that_exports_like_a_bf16_one(dataset, cache_dir, tmp_path, monkeypatch,
                                                                        tiny):
    pytest.importorskip("torchao")
    seen = {}

    def hook(pipe):
        if pipe.transformer is not None:
            seen["weight"] = type(pipe.transformer.transformer_blocks[0].attn.to_q.weight).__name__
            seen["transformer"] = pipe.transformer

    monkeypatch.setattr(jobmod, "_load_base_model", tiny.with_hook(hook))
    over = ("steps=3", "precision=bf16")
    q = jobmod.train_lora(_cfg(cache_dir, *over, "quantization=int8-weight-only"), dataset, tmp_path / "q")
    assert seen["weight"] == "Int8Tensor"
    assert type(seen["transformer"].transformer_blocks[0].attn.to_q).__name__ == "TorchaoLoraLinear"
    plain = jobmod.train_lora(_cfg(cache_dir, *over), dataset, tmp_path / "bf16")
    assert q.status is JobStatus.COMPLETED and all(np.isfinite(q.losses))
    qa, pa = load_file(str(q.lora_path)), load_file(str(plain.lora_path))
    assert qa.keys() == pa.keys() and all(qa[k].dtype == pa[k].dtype == torch.float32 for k in qa)
    assert any(qa[k].abs().sum() > 0 for k in qa if "lora_B" in k)   # it trained
    from persona_ml.lora.export import read_lora_metadata

    assert read_lora_metadata(q.lora_path).extra["quantization"] == "int8-weight-only"
    # the int8 weights are a fraction of the bf16 ones (weights of the loop phase)
    assert q.memory["train"]["weights_bytes"] < 0.75 * plain.memory["train"]["weights_bytes"]


def test_nf4_without_cuda_is_refused_before_any_model_is_loaded(dataset, cache_dir, tmp_path, monkeypatch):
    from persona_ml.errors import BackendUnavailableError

    loader = TinyLoader()
    monkeypatch.setattr(jobmod, "_load_base_model", loader)
    job = jobmod.TrainingJob(_cfg(cache_dir, "quantization=nf4"), dataset, tmp_path)
    with pytest.raises(BackendUnavailableError) as err:
        job.run()
    assert err.value.code in ("provider_unavailable", "backend_unavailable") and loader.calls == 0


# --- stops: Ctrl-C like SIGTERM; a stop during samples still checkpoints ------------------------

def test_sigint_checkpoints_and_ends_cancelled_like_sigterm(dataset, cache_dir, tmp_path, monkeypatch, tiny):
    monkeypatch.setattr(jobmod, "_load_base_model", tiny.with_hook(None))
    job = jobmod.TrainingJob(_cfg(cache_dir), dataset, tmp_path,
                             on_event=lambda e: os.kill(os.getpid(), signal.SIGINT) if (e.kind == "step"
                                                                                       and e.step == 2) else None)
    before = signal.getsignal(signal.SIGINT)
    job.install_signal_handlers()
    try:
        result = job.run()
    finally:
        job.restore_signal_handlers()
    assert signal.getsignal(signal.SIGINT) is before
    assert result.status is JobStatus.CANCELLED and len(result.losses) == 2
    assert (tmp_path / "checkpoints" / "step-000002" / "meta.json").is_file()
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "cancelled"


def test_sigterm_while_samples_render_still_checkpoints_that_step(dataset, cache_dir, tmp_path, monkeypatch, tiny):
    from persona_ml.training import samples as samplesmod

    monkeypatch.setattr(jobmod, "_load_base_model", tiny.with_hook(None))
    real = samplesmod.render_samples
    sent = []

    def render_then_term(*a, **k):
        paths = real(*a, **k)
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)   # arrives after this step's checkpoint decision
        return paths

    monkeypatch.setattr(samplesmod, "render_samples", render_then_term)
    job = jobmod.TrainingJob(_cfg(cache_dir, "samples.every=3", "checkpoint.every=8"), dataset, tmp_path)
    job.install_signal_handlers()
    try:
        result = job.run()
    finally:
        job.restore_signal_handlers()
    assert result.status is JobStatus.CANCELLED and len(result.losses) == 3
    assert [c.step for c in result.checkpoints if "checkpoints" in c.path] == [3]
    resumed = jobmod.train_lora(_cfg(cache_dir, "samples.every=3", "checkpoint.every=8"), dataset, tmp_path,
                                resume=True)
    assert resumed.resumed_from == 3 and resumed.status is JobStatus.COMPLETED


def test_script_exits_130_on_ctrl_c(dataset, cache_dir, tmp_path, monkeypatch, capsys):
    real_emit = jobmod.TrainingJob._emit

    def emit(self, kind, **kw):
        real_emit(self, kind, **kw)
        if kind == "step" and kw.get("step") == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(jobmod.TrainingJob, "_emit", emit)
    previous = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    try:
        code = _script().main(["--config", "tiny-cpu", "--images", str(dataset.root), "--quiet", "--output",
                               str(tmp_path), "--set", f"cache.dir={cache_dir}", "--set", "samples.every=-1"])
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    assert code == 130 and "status: cancelled" in capsys.readouterr().out
    assert (tmp_path / "checkpoints" / "step-000001").is_dir()


# --- research runs on any local Flux folder ------------------------------------------------------

@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    """A small custom schnell-style Flux (no guidance embedding) saved as a diffusers folder."""
    from diffusers import FluxTransformer2DModel

    from persona_ml.models.tiny_flux import build_tiny_flux_pipeline

    folder = tmp_path_factory.mktemp("custom-flux")
    pipe = build_tiny_flux_pipeline(seed=0)
    cfg = dict(pipe.transformer.config)
    torch.manual_seed(0)
    pipe.transformer = FluxTransformer2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")
                                                 and k != "guidance_embeds"}, guidance_embeds=False).eval()
    pipe.save_pretrained(folder)
    return folder


def _research_cfg(cache_dir, folder, *over):
    return load_train_config("tiny-cpu", [f"cache.dir={cache_dir}", "base_model=flux", f"base_model_path={folder}",
                                          "rules.mode=research", "steps=3", "checkpoint.every=3", "samples.every=-1",
                                          *over])


def test_a_custom_flux_folder_trains_in_research_mode_with_violations_recorded(dataset, cache_dir, tmp_path,
                                                                               flux_folder):
    from safetensors import safe_open

    from persona_ml.errors import ModelMismatchError
    from persona_ml.models.base_models import load_base_model

    with pytest.raises(ModelMismatchError) as err:   # flux-dev's structural checks still refuse it
        load_base_model("flux-dev", path=flux_folder)
    assert err.value.details["field"] == "transformer.guidance_embeds"
    result = jobmod.train_lora(_research_cfg(cache_dir, flux_folder), dataset, tmp_path)   # the real loader
    assert result.status is JobStatus.COMPLETED
    codes = {v["code"] for v in result.rule_violations}
    assert {"steps_too_low", "rank_too_low", "base_model_not_allowed"} <= codes
    with safe_open(str(result.kohya_path), "pt") as fh:
        header = fh.metadata()
    assert set(header["persona_ml.rule_violations"].split(",")) == codes
    assert header["modelspec.architecture"] == "flux/lora" and header["ss_base_model_version"] == "flux"
    card = (result.lora_path.parent / "README.md").read_text()
    assert "outside the platform's LoRA rules" in card and "steps_too_low" in card


def test_research_mode_never_applies_to_a_service_request(dataset, cache_dir, tmp_path, flux_folder):
    from persona_ml.errors import ConfigError
    from persona_ml.rules import LoraRequest

    req = LoraRequest(plan="pro", num_images=3, training_steps=3, lora_rank=4, base_model="flux")
    with pytest.raises(ConfigError) as err:
        jobmod.TrainingJob(_research_cfg(cache_dir, flux_folder), dataset, tmp_path, request=req).run()
    assert err.value.details["field"] == "rules.mode"
    with pytest.raises(LoraRuleError):   # the same run under the platform's rules
        jobmod.TrainingJob(_research_cfg(cache_dir, flux_folder, "rules.mode=enforce"), dataset, tmp_path).run()
