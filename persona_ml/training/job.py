"""The training job: rules -> dataset -> model -> caches -> LoRA training -> samples -> export.

``TrainingJob`` is what the service layer drives (status, progress events, ``cancel()``);
``train_lora`` is the one-call form. Run folder layout::

    <output>/config.resolved.yaml
    <output>/checkpoints/step-NNNNNN/      resumable state, newest ``checkpoint.keep_last`` kept
    <output>/samples/step-NNNNNN/*.png      fixed-prompt samples (+ adapter.safetensors snapshot)
    <output>/lora/                          the final export (diffusers + kohya files, model card)
    <output>/best/                          the best-identity step's export, when it is not the last
    <output>/result.json                    TrainResult summary

On a GPU with FLUX.1-dev (``persona-flux-dev``): the base model is fingerprinted without its
weights and the cache is looked up; when something is missing, the VAE and the text encoders load
in bf16 (T5-XXL alone is ~9.5 GB), the missing captions and photos are encoded into the cache,
then the text encoders and the VAE encoder are dropped; when everything is cached (a retrain or
resume) they are never loaded. The loop holds the transformer (23.8 GB), the LoRA (fp32) and its
optimizer state; gradient checkpointing keeps activations small. A 24 GB card needs a quantized base,
which this trainer does not do; a 40 GB+ card (A100/H100/H200) fits as is.

Determinism: the data order is a permutation seeded by ``(seed, epoch)``; caption dropout,
timesteps and noise come from a generator seeded by ``(seed, step, micro-step, process)``, so a
resumed run draws exactly what the uninterrupted run would have drawn, on any number of processes.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write_json
from ..dataset.manifest import PreparedDataset, load_prepared
from ..errors import ConfigError, InputError, LoraRuleError, ModelMismatchError, PersonaMLError, TrainingError
from .checkpoint import (
    CheckpointState,
    DataPosition,
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    step_dir_name,
)
from .config import TrainConfig, load_train_config, write_resolved
from .types import CheckpointRecord, JobStatus, ProgressEvent, TrainResult

log = logging.getLogger(__name__)

EventCallback = Callable[[ProgressEvent], None]


def _load_base_model(name: str, *, dtype, device, path=None, parts: str = "all", quantization: str = "none"):
    """Indirection so tests can prove no model is loaded (monkeypatch this)."""
    from ..models import load_base_model

    return load_base_model(name, dtype=dtype, device=device, path=path, parts=parts, quantization=quantization)


def _collect(device) -> None:
    gc.collect()
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


class TrainingJob:
    """One LoRA training run, driven by the service layer or ``scripts/train_lora.py``.

    Args:
        config: a ``TrainConfig``, a preset name or a YAML path.
        images: a prepared dataset (folder with ``dataset.json`` or a ``PreparedDataset``), or a
            folder of raw photos, which is screened and prepared into ``<output>/prepared``.
        output_dir: the run folder (created).
        trigger: trigger word; defaults to the prepared dataset's. Required for raw photos.
        request: the ``LoraRequest`` the service received; ``None`` builds one from the config
            (plan, steps, rank, base model) and the dataset (accepted photos).
        profile: the character's ``FaceProfile`` (or a path to one) for identity scores.
        face_embedder: the ``FaceEmbedder`` for scores (default ``FaceEmbedder("dlib")`` when a
            profile is given).
        resume: continue from the newest checkpoint in ``output_dir`` when one exists.
        on_event: called with every ``ProgressEvent`` (on the training thread).
        overrides: ``key=value`` strings applied to ``config`` when it is a name or path.

    Example:
        >>> job = TrainingJob("tiny-cpu", "prepared/", "runs/alice", on_event=print)   # doctest: +SKIP
        >>> result = job.run()                                                         # doctest: +SKIP
        >>> result.status, result.lora_path                                            # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig | str | os.PathLike, images: Any, output_dir: str | os.PathLike, *,
                 trigger: str | None = None, request: Any = None, profile: Any = None, face_embedder: Any = None,
                 resume: bool = False, on_event: EventCallback | None = None, overrides: Sequence[str] = ()) -> None:
        if isinstance(config, TrainConfig):
            config = load_train_config(config.to_dict(), overrides) if overrides else config
        else:
            config = load_train_config(config, overrides)
        self.config = config
        self.images = images
        self.output_dir = Path(output_dir)
        self.trigger = trigger
        self.request = request
        self.profile = profile
        self.face_embedder = face_embedder
        self.resume = resume
        self.on_event = on_event
        self.status = JobStatus.QUEUED
        self.error: PersonaMLError | None = None
        self._cancel = threading.Event()
        self._sigterm = False
        self._stop_reason = ""
        self._previous_handlers: dict[int, Any] = {}
        self._step = 0
        self._total = self.config.steps
        self._t_train = 0.0

    # --- control ----------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Ask the job to stop; it writes a checkpoint at the end of the current step and ends cancelled."""
        self._stop_reason = self._stop_reason or "cancelled"
        self._cancel.set()

    def install_signal_handlers(self) -> dict[int, Any]:
        """On SIGTERM or SIGINT (Ctrl-C), write a checkpoint at the end of the current step (or of its
        samples) and end as cancelled. A second Ctrl-C stops at once (``KeyboardInterrupt``; the job
        ends cancelled, its last checkpoint kept). Main thread only (scripts).

        Returns:
            The previous handlers ``{signum: handler}`` (``restore_signal_handlers`` puts them back).
        """
        if threading.current_thread() is not threading.main_thread():
            raise InputError("signal handlers can only be installed from the main thread", field="thread",
                             value=threading.current_thread().name)

        def _handler(signum, frame):
            name = signal.Signals(signum).name
            if signum == signal.SIGINT and self._cancel.is_set():
                raise KeyboardInterrupt  # the second Ctrl-C: the user means now
            log.warning("%s received: checkpointing and stopping after this step%s", name,
                        " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "")
            self._stop_reason = name
            self._sigterm = True
            self._cancel.set()

        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:
            signal.signal(sig, _handler)
        self._previous_handlers = previous
        return previous

    def restore_signal_handlers(self) -> None:
        """Put back the handlers ``install_signal_handlers`` replaced."""
        for sig, handler in getattr(self, "_previous_handlers", {}).items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def _emit(self, kind: str, **kw: Any) -> None:
        if self.on_event is None:
            return
        elapsed = time.perf_counter() - self._t_train if self._t_train else 0.0
        self.on_event(ProgressEvent(kind=kind, status=self.status, total_steps=self._total, elapsed_s=elapsed, **kw))

    def _set_status(self, status: JobStatus, message: str = "") -> None:
        self.status = status
        log.info("job status: %s %s", status.value, message)
        self._emit("status", step=self._step, message=message)

    # --- run --------------------------------------------------------------------------------------

    def run(self, *, raise_on_error: bool = True) -> TrainResult:
        """Run the job to its end.

        Returns:
            TrainResult (status ``completed`` or ``cancelled``; ``failed`` when
            ``raise_on_error`` is False).

        Raises:
            LoraRuleError: the request breaks the rules (before any model is loaded).
            TrainingError: ``training_nan_loss`` (non-finite loss), ``checkpoint_invalid``,
                ``device_unavailable`` (``device: cuda`` without a CUDA device, before any model is loaded).
            PersonaMLError: dataset or model errors.
            TrainingError: ``out_of_memory`` (GPU out of memory) or ``training_failed`` for any other
                unexpected exception (chained as ``__cause__``); the job still ends ``failed`` with
                ``result.json`` written, never stuck in ``training``.
        """
        result = TrainResult(status=self.status, output_dir=self.output_dir)
        try:
            try:
                self._run(result)
            except PersonaMLError:
                raise
            except Exception as exc:  # CUDA OOM, a library error: the service must see a failed job
                raise _unexpected(exc, self.status) from exc
        except PersonaMLError as exc:
            self.error = exc
            result.error = exc.to_dict()
            self._set_status(JobStatus.FAILED, f"[{exc.code}] {exc.message}")
            result.status = self.status
            if _is_main_process():
                self._write_result(result)
            if raise_on_error:
                raise
        except KeyboardInterrupt:  # a second Ctrl-C: stop now, the newest checkpoint stays resumable
            self._set_status(JobStatus.CANCELLED, "interrupted (second Ctrl-C)")
            result.status = self.status
            if _is_main_process():
                self._write_result(result)
            raise
        return result

    def _run(self, result: TrainResult) -> None:
        import torch

        from .. import _notices

        _notices.install()
        cfg = self.config
        timings = result.timings
        t0 = time.perf_counter()
        self._set_status(JobStatus.PREPARING, "checking rules and dataset")
        dataset = self._dataset()
        trigger = self.trigger or dataset.info.trigger
        result.rule_violations = self._check_rules(dataset, trigger)

        if cfg.device == "cuda" and not torch.cuda.is_available():
            # accelerate would silently train on the CPU (hours to days for FLUX.1-dev): refuse instead
            raise TrainingError("device is 'cuda' but torch sees no CUDA device (torch.cuda.is_available() is "
                                "False); check the driver/CUDA build of torch, or set device=auto or cpu",
                                code="device_unavailable", field="device", value=cfg.device)
        use_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
        if use_cpu and cfg.device == "auto" and cfg.base_model != "tiny-flux":
            log.warning("device=auto found no CUDA device: training %s on the CPU", cfg.base_model)
        from ..models.quantization import check_scheme

        check_scheme(cfg.quantization, "cpu" if use_cpu else "cuda")  # before any model is loaded
        mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.precision]
        accelerator = _make_accelerator(use_cpu, "no" if use_cpu and mixed == "fp16" else mixed)
        if not use_cpu and torch.cuda.is_available() and accelerator.device.type != "cuda":
            raise TrainingError(f"accelerate placed this job on {accelerator.device} although CUDA is available "
                                f"(device={cfg.device})", code="device_unavailable", field="device",
                                value=str(accelerator.device))
        is_main = accelerator.is_main_process
        if is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            result.config_path = write_resolved(cfg, self.output_dir)
        timings["prepare"] = time.perf_counter() - t0

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
        device = accelerator.device
        from .cache import TensorCache, default_cache_dir
        from .data import Encoder, build_samples, drop_vae_encoder, load_pixels
        from .memory import PhaseMemory
        from .samples import fill_prompts

        memory = PhaseMemory(device)
        cache = TensorCache(cfg.cache.dir or default_cache_dir()) if cfg.cache.enabled else None
        samples = build_samples(dataset, cfg.data.resolutions)
        if not samples:
            raise InputError("the prepared dataset has no items", field="images", value=str(dataset.root))
        captions = sorted({s.item.caption for s in samples})
        prompts = fill_prompts(cfg.samples.prompts, trigger) if cfg.samples.every >= 0 else []
        masks = [load_pixels(dataset, s)[1] if (s.item.mask and cfg.data.face_loss_weight != 1.0) else None
                 for s in samples]
        load = functools.partial(_load_base_model, cfg.base_model, dtype=dtype, device=device,
                                 path=cfg.base_model_path)
        sample_text: dict = {}
        if cache is not None:
            # phase 0: the base model's fingerprint without its weights (headers and configs on a warm
            # worker), then every latent and text the run needs is looked up in the cache
            t0 = time.perf_counter()
            texts = list(dict.fromkeys([*captions, "", *prompts]))
            self._progress("check_cache", 0, 1, "fingerprinting the base model and looking up the cache")
            base = load(parts="none")
            fingerprint, scheduler = base.fingerprint, base.pipeline.scheduler
            base = None
            timings["fingerprint"] = time.perf_counter() - t0
            encoder = Encoder(None, fingerprint, cache, cfg.data.max_sequence_length, device)
            latents = [encoder.cached_latents(dataset, s) for s in samples]
            text = {c: hit for c in texts if (hit := encoder.cached_text(c)) is not None}
            todo_latents = [i for i, z in enumerate(latents) if z is None]
            todo_text = [c for c in texts if c not in text]
            timings["cache_lookup"] = time.perf_counter() - t0 - timings["fingerprint"]
            self._progress("check_cache", 1, 1, f"{len(samples) - len(todo_latents)} of {len(samples)} latents and "
                                                f"{len(texts) - len(todo_text)} of {len(texts)} texts cached")

            def same_base(got: str, what: str) -> None:
                if got != fingerprint:
                    raise ModelMismatchError(f"the base model's files changed between fingerprinting it and loading "
                                             f"its {what} ({fingerprint} -> {got})", code="base_model_mismatch",
                                             field="base_model", value=got, expected=fingerprint)

            if todo_latents or todo_text:
                # phase 1: only the VAE and the text encoders are in memory while the misses are encoded
                t0 = time.perf_counter()
                result.encoders = "loaded"
                memory.start("encode")
                self._progress("load_encoders", 0, 1, "loading the VAE and text encoders")
                enc = load(parts="encoders")
                same_base(enc.fingerprint, "encoders")
                timings["load_encoders"] = time.perf_counter() - t0
                encoder.pipe = epipe = enc.pipeline
                for n, i in enumerate(todo_latents):
                    s = samples[i]
                    latents[i] = encoder.encode_latents(dataset, s)
                    self._progress("encode_latents", n + 1, len(todo_latents), f"{s.item.image} at {s.width}x{s.height}")
                for n, c in enumerate(todo_text):
                    text[c] = encoder.encode_text(c)
                    self._progress("encode_text", n + 1, len(todo_text), c)
                memory.stop("encode", epipe.vae, epipe.text_encoder, epipe.text_encoder_2)
                encoder.release(keep_decoder=bool(prompts))
                decoder = epipe.vae  # the decoder half only, or None without samples
                encoder.pipe = epipe = enc = None
                _collect(device)
                timings["encode"] = time.perf_counter() - t0 - timings["load_encoders"]
            else:
                # every entry is cached: neither text encoder nor the VAE encoder is loaded
                result.encoders = "skipped"
                log.info("all %d latents and %d texts are cached for %s: the text encoders and the VAE encoder are "
                         "not loaded", len(samples), len(texts), fingerprint)
                self._progress("skip_encoders", 0, 1, f"all {len(samples)} latents and {len(texts)} texts cached: "
                                                      "the text encoders and the VAE encoder are not loaded")
                decoder = None
                if prompts:  # samples decode latents: the VAE's decoder half only, as after phase 1
                    t0 = time.perf_counter()
                    self._progress("load_decoder", 0, 1, "loading the VAE decoder for samples")
                    vae = load(parts="vae")
                    same_base(vae.fingerprint, "VAE")
                    decoder = drop_vae_encoder(vae.pipeline.vae)
                    vae = None
                    timings["load_decoder"] = time.perf_counter() - t0
            # phase 2: the transformer (quantized when asked) and, with samples, the VAE decoder
            t0 = time.perf_counter()
            memory.start("train")
            self._progress("load_transformer", 0, 1, f"loading the transformer ({cfg.quantization})")
            loaded = load(parts="transformer", quantization=cfg.quantization)
            same_base(loaded.fingerprint, "transformer")
            pipe = loaded.pipeline
            pipe.vae = decoder
            pipe.scheduler = scheduler
            timings["load_transformer"] = time.perf_counter() - t0
        else:
            # no cache: the encoders run at every step and stay loaded beside the transformer
            t0 = time.perf_counter()
            memory.start("train")
            self._progress("load_all", 0, 1, "loading the whole pipeline (cache off)")
            loaded = load(parts="all", quantization=cfg.quantization)
            result.encoders = "resident"
            pipe = loaded.pipeline
            encoder = Encoder(pipe, loaded.fingerprint, None, cfg.data.max_sequence_length, device)
            latents, text = None, {}
            timings["load_transformer"] = time.perf_counter() - t0
            sample_text = {p: encoder.text(p) for p in prompts}
        timings["load"] = sum(timings.get(k, 0.0) for k in ("load_encoders", "load_decoder", "load_transformer"))
        result.cache = encoder.stats.to_dict()

        transformer = pipe.transformer
        transformer.requires_grad_(False)
        if pipe.vae is not None:
            pipe.vae.requires_grad_(False)
        torch.manual_seed(cfg.seed)  # LoRA init (B = 0, A random)
        from ..lora.export import DEFAULT_LORA_TARGETS, lora_target_modules

        targets = lora_target_modules(transformer, cfg.lora.targets or DEFAULT_LORA_TARGETS)
        from peft import LoraConfig as PeftLoraConfig

        transformer.add_adapter(PeftLoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                               init_lora_weights=True, target_modules=list(targets)))
        params = [p for p in transformer.parameters() if p.requires_grad]
        for p in params:
            p.data = p.data.float()
        if cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        optimizer, result.optimizer = _make_optimizer(params, cfg)
        from diffusers.optimization import get_scheduler

        lr_scheduler = get_scheduler(cfg.optimizer.scheduler, optimizer, num_warmup_steps=cfg.optimizer.warmup_steps,
                                     num_training_steps=cfg.steps)
        transformer, optimizer = accelerator.prepare(transformer, optimizer)
        raw = accelerator.unwrap_model(transformer)
        names = [n for n, p in raw.named_parameters() if p.requires_grad]
        guidance_embeds = bool(getattr(raw.config, "guidance_embeds", False))

        ckpt_root = self.output_dir / "checkpoints"
        expect = {"training_hash": cfg.training_hash(), "dataset_hash": dataset.info.dataset_hash,
                  "base_fingerprint": loaded.fingerprint}
        started_at = time.time()
        start, pos, losses = 0, DataPosition(), []
        last = latest_checkpoint(ckpt_root) if self.resume else None
        if last is not None:
            st = load_checkpoint(last, expect=expect)
            with torch.no_grad():
                for n, p in raw.named_parameters():
                    if n in names:
                        p.copy_(st.adapter[n].to(p.device, p.dtype))
            optimizer.load_state_dict(st.optimizer)
            lr_scheduler.load_state_dict(st.scheduler)
            restore_rng(st.rng)
            start, pos, losses = st.step, st.position, list(st.losses)
            started_at = float(st.meta.get("training_started_at", started_at))
            result.resumed_from = start
            result.identity = _earlier_identity(self.output_dir / "samples", start)
            log.info("resumed from %s (step %d)", last, start)
        elif self.resume:
            log.info("no checkpoint in %s; starting from step 0", ckpt_root)

        def state(step: int, position: DataPosition) -> CheckpointState:
            return CheckpointState(step=step, position=position,
                                   adapter={n: p.detach().float().cpu().clone() for n, p in raw.named_parameters()
                                            if n in names},
                                   optimizer=optimizer.state_dict(), scheduler=lr_scheduler.state_dict(),
                                   rng=capture_rng(), losses=list(losses),
                                   meta={**expect, "training_started_at": started_at})

        from .data import bucket_batches
        from .flux import FluxBatch, flow_matching_loss

        scorer = self._scorer(dataset) if prompts and is_main else None
        world, rank = accelerator.num_processes, accelerator.process_index
        dropout = cfg.data.caption_dropout if cfg.data.caption_dropout is not None else dataset.info.caption_dropout
        n_samples = len(samples)

        @functools.lru_cache(maxsize=4)
        def epoch_batches(epoch: int) -> list[tuple[int, ...]]:
            return bucket_batches(_permutation(cfg.seed, epoch, n_samples), samples, cfg.data.batch_size)

        self._set_status(JobStatus.TRAINING, f"{n_samples} samples, steps {start}->{cfg.steps}")
        self._t_train = time.perf_counter()
        t_samples = 0.0
        step = saved = start
        accum = cfg.data.gradient_accumulation
        transformer.train()
        while step < cfg.steps:
            if self._cancel.is_set():
                break
            lr = float(lr_scheduler.get_last_lr()[0])
            step_loss = 0.0
            for micro in range(accum):
                picks = []
                for _ in range(world):  # one same-bucket batch per process
                    batches = epoch_batches(pos.epoch)
                    picks.append(batches[pos.index])
                    pos = DataPosition(pos.epoch + 1, 0) if pos.index + 1 >= len(batches) else \
                        DataPosition(pos.epoch, pos.index + 1)
                mine = picks[rank]
                gen = torch.Generator("cpu").manual_seed(_derive_seed(cfg.seed, step, micro, rank))
                sync = micro == accum - 1
                ctx = accelerator.no_sync(transformer) if (not sync and world > 1) else _null()
                with ctx:
                    items = []
                    for idx in mine:
                        s = samples[idx]
                        drop = float(torch.rand(1, generator=gen)) < dropout
                        caption = "" if drop else s.item.caption
                        if latents is not None:
                            z, (pe, pooled) = latents[idx], text[caption]
                        else:
                            z = encoder.encode_pixels(load_pixels(dataset, s)[0])
                            pe, pooled = encoder.text(caption)
                        items.append(FluxBatch(z, pe, pooled, masks[idx]))
                    b = FluxBatch.stack(items)
                    batch = FluxBatch(b.latents.to(device), b.prompt_embeds.to(device), b.pooled.to(device), b.mask)
                    with accelerator.autocast():
                        loss = flow_matching_loss(transformer, batch, cfg.noise, gen,
                                                  face_weight=cfg.data.face_loss_weight, dtype=dtype,
                                                  guidance_embeds=guidance_embeds)
                    loss_value = float(loss.detach())
                    if not math.isfinite(loss_value):
                        raise TrainingError(f"loss is {loss_value} at step {step + 1}; lower optimizer.lr "
                                            f"({cfg.optimizer.lr}) or check the data", code="training_nan_loss",
                                            field="loss", value=loss_value, step=step + 1)
                    accelerator.backward(loss / accum)
                    step_loss += loss_value / accum
            if cfg.optimizer.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, cfg.optimizer.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            self._step = step
            losses.append(step_loss)
            elapsed = time.perf_counter() - self._t_train - t_samples
            done = step - start
            eta = elapsed / done * (cfg.steps - step) if done else None
            self._emit("step", step=step, loss=step_loss, lr=lr, eta_s=eta)
            stopping = self._cancel.is_set()
            if is_main and (step % cfg.checkpoint.every == 0 or stopping):
                saved = self._checkpoint(result, ckpt_root, state(step, pos))
            every = cfg.samples.every
            if is_main and prompts and not stopping and ((every > 0 and step % every == 0) or step == cfg.steps):
                ts = time.perf_counter()
                self._samples(result, pipe, raw, step, [text.get(p) or sample_text[p] for p in prompts], scorer)
                t_samples += time.perf_counter() - ts
            accelerator.wait_for_everyone()
        if is_main and step < cfg.steps and step > saved:
            # a stop that arrived after this step's checkpoint decision (e.g. during its samples)
            saved = self._checkpoint(result, ckpt_root, state(step, pos))

        train_time = time.perf_counter() - self._t_train
        timings["samples"] = t_samples
        timings["train"] = train_time - t_samples
        done = step - start
        timings["s_per_step"] = (train_time - t_samples) / done if done else 0.0
        memory.stop("train", raw, pipe.vae)
        result.memory = memory.to_dict()
        result.losses = losses
        if step < cfg.steps:
            result.status = JobStatus.CANCELLED
            self._set_status(JobStatus.CANCELLED, self._stop_reason or "cancelled")
        else:
            if is_main:
                t0 = time.perf_counter()
                self._progress("export", 0, 1, "exporting the LoRA")
                self._export(result, raw, names, dataset, loaded, trigger, samples, started_at)
                timings["export"] = time.perf_counter() - t0
            result.status = JobStatus.COMPLETED
            self._set_status(JobStatus.COMPLETED, str(result.lora_path))
        if is_main:
            self._write_result(result)
        transformer = optimizer = pipe = None  # drop the references before collecting
        gc.collect()

    def _checkpoint(self, result: TrainResult, root: Path, state: CheckpointState) -> int:
        path = save_checkpoint(root, state, keep_last=self.config.checkpoint.keep_last)
        result.checkpoints.append(CheckpointRecord(state.step, str(path)))
        self._emit("checkpoint", step=state.step, checkpoint=str(path))
        return state.step

    def _progress(self, phase: str, current: int, count: int, message: str = "") -> None:
        self._emit("progress", step=self._step, phase=phase, current=current, count=count, message=message)

    # --- stages -----------------------------------------------------------------------------------

    def _dataset(self) -> PreparedDataset:
        if isinstance(self.images, PreparedDataset):
            return self.images
        root = Path(self.images)
        if (root / "dataset.json").is_file():
            return load_prepared(root)
        if not root.is_dir():
            raise InputError(f"images must be a prepared dataset or a folder of photos, got {root}",
                             field="images", value=str(root))
        if not self.trigger:
            raise InputError("a trigger word is needed to prepare raw photos", field="trigger", value=self.trigger)
        from ..dataset import prepare_dataset, screen_dataset

        profile = self._profile()
        embedder = self.face_embedder or _default_embedder()
        report = screen_dataset(root, profile, embedder)
        prepared = prepare_dataset(report, self.output_dir / "prepared", trigger=self.trigger)
        return load_prepared(getattr(prepared, "root", self.output_dir / "prepared"))

    def _profile(self):
        if self.profile is None or not isinstance(self.profile, (str, os.PathLike)):
            return self.profile
        from ..faces.profile import FaceProfile

        self.profile = FaceProfile.load(self.profile)
        return self.profile

    def _check_rules(self, dataset: PreparedDataset, trigger: str) -> list[dict]:
        from ..rules import LoraRequest, check_lora_request

        cfg = self.config
        if cfg.rules.mode == "research" and self.request is not None:
            raise ConfigError("rules.mode 'research' is for one-off runs without a service request; a LoraRequest "
                              "from the service is always checked under rules.mode 'enforce'", field="rules.mode",
                              value=cfg.rules.mode)
        if cfg.rules.mode == "research":
            log.warning("research mode: %s on %s; rule violations are recorded in the LoRA, not refused",
                        cfg.base_model, cfg.base_model_path or "its configured folder")
        req = self.request or LoraRequest(plan=cfg.rules.plan, num_images=dataset.info.num_source_images,
                                          training_steps=cfg.steps, lora_rank=cfg.lora.rank,
                                          base_model=cfg.base_model, trigger=trigger)
        checked = check_lora_request(req)
        if checked.ok:
            return []
        if cfg.rules.mode == "enforce":
            raise LoraRuleError("LoRA request violates the rules: " + "; ".join(v.message for v in checked.violations),
                                violations=checked.violations, codes=checked.codes)
        log.warning("%s run on %s: the request does not meet the platform rules (%s); training anyway",
                    cfg.rules.mode, cfg.base_model, ", ".join(checked.codes))
        return [v.to_dict() for v in checked.violations]

    def _scorer(self, dataset: PreparedDataset):
        from .samples import IdentityScorer

        profile = self._profile()
        if profile is None and self.face_embedder is None:
            return None  # nothing to measure identity against: samples are rendered, not scored
        embedder = self.face_embedder if self.face_embedder is not None else _default_embedder()
        return IdentityScorer(embedder, profile, [dataset.path(it.image) for it in dataset.items],
                              self.config.samples.near_copy_pixel_similarity)

    def _samples(self, result: TrainResult, pipe, raw, step: int, embeds, scorer) -> None:
        import torch
        from diffusers import FluxPipeline
        from safetensors.torch import save_file

        from .._atomic import atomic_path
        from .samples import render_samples

        sc = self.config.samples
        out = self.output_dir / "samples" / step_dir_name(step)
        was_training = raw.training
        rng = torch.get_rng_state()  # sampling must not move the training RNG (resume equality)
        raw.eval()
        sampler = FluxPipeline(scheduler=pipe.scheduler, vae=pipe.vae, text_encoder=None, tokenizer=None,
                               text_encoder_2=None, tokenizer_2=None, transformer=raw)
        sampler.set_progress_bar_config(disable=True)
        paths = render_samples(sampler, embeds, sc.seeds, steps=sc.steps, guidance=sc.guidance, width=sc.width,
                               height=sc.height, out_dir=out)
        torch.set_rng_state(rng)
        if was_training:
            raw.train()
        with atomic_path(out / "adapter.safetensors", suffix=".safetensors") as tmp:
            save_file({n: p.detach().float().cpu().contiguous() for n, p in raw.named_parameters() if p.requires_grad},
                      str(tmp))
        identity = scorer.score(step, paths) if scorer is not None else None
        if identity is not None:
            result.identity.append(identity)
            atomic_write_json(out / "identity.json", identity.to_dict())  # survives a kill; read on resume
        result.checkpoints.append(CheckpointRecord(step, str(out), identity))
        self._emit("samples", step=step, sample_paths=tuple(str(p) for p in paths), identity=identity)
        del sampler

    def _export(self, result: TrainResult, raw, names, dataset: PreparedDataset, loaded, trigger: str, samples,
                started_at: float) -> None:
        import torch
        from safetensors.torch import load_file

        from ..lora.export import LoraMetadata, export_lora
        from .samples import best_step

        cfg = self.config
        tags: dict[str, int] = {}
        for it in dataset.items:  # kohya's ss_tag_frequency: comma-separated caption tags
            for tag in (t.strip() for t in it.caption.split(",")):
                if tag:
                    tags[tag] = tags.get(tag, 0) + 1
        extra = {"training_hash": cfg.training_hash(), "quantization": cfg.quantization, "rules_mode": cfg.rules.mode,
                 "precision": cfg.precision}

        def meta(steps: int):
            return LoraMetadata(rank=cfg.lora.rank, alpha=float(cfg.lora.alpha), steps=steps, trigger=trigger,
                                base_model=loaded.name, base_model_fingerprint=loaded.fingerprint,
                                dataset_hash=dataset.info.dataset_hash,
                                architecture=getattr(loaded, "architecture", None),
                                resolutions=tuple(sorted({s.resolution for s in samples})),
                                num_train_images=len(dataset.items), tag_frequency={dataset.root.name: tags},
                                training_started_at=started_at,
                                rule_violations=tuple(v["code"] for v in result.rule_violations), extra=extra)

        exported = export_lora(raw, self.output_dir / "lora", metadata=meta(cfg.steps))
        result.loaders = {k: list(v) for k, v in exported.loaders.items()}
        result.exported = exported
        result.lora_path = Path(exported.diffusers_path)
        result.kohya_path = Path(exported.kohya_path) if getattr(exported, "kohya_path", None) else None
        result.best_step = best_step(result.identity)
        result.best_lora_path = result.lora_path if result.best_step in (None, cfg.steps) else None
        if result.best_step is not None and result.best_step != cfg.steps:
            snap = self.output_dir / "samples" / step_dir_name(result.best_step) / "adapter.safetensors"
            weights = load_file(str(snap))
            final = {n: p.detach().clone() for n, p in raw.named_parameters() if n in names}
            with torch.no_grad():
                for n, p in raw.named_parameters():
                    if n in weights:
                        p.copy_(weights[n].to(p.device, p.dtype))
                best = export_lora(raw, self.output_dir / "best", metadata=meta(result.best_step))
                for n, p in raw.named_parameters():
                    if n in final:
                        p.copy_(final[n])
            result.best_lora_path = Path(best.diffusers_path)

    def _write_result(self, result: TrainResult) -> None:
        from ..config import to_dict

        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            d = {k: to_dict(v) for k, v in result.__dict__.items() if k not in ("exported", "identity", "checkpoints")}
            d["status"] = result.status.value
            d["api_status"] = result.status.api_status
            d["identity"] = [s.to_dict() for s in result.identity]
            d["checkpoints"] = [{"step": c.step, "path": c.path,
                                 "identity": c.identity.to_dict() if c.identity else None} for c in result.checkpoints]
            atomic_write_json(self.output_dir / "result.json", d)
        except OSError as exc:  # a result file must never mask the real outcome
            log.warning("could not write result.json: %s", exc)


def train_lora(config: TrainConfig | str | os.PathLike, images_dir_or_prepared: Any, output_dir: str | os.PathLike,
               **kwargs: Any) -> TrainResult:
    """Train a character LoRA in one call (see ``TrainingJob`` for the arguments).

    Args:
        config: ``TrainConfig``, preset name (``"persona-flux-dev"``, ``"tiny-cpu"``) or YAML path.
        images_dir_or_prepared: a prepared dataset folder / ``PreparedDataset`` or raw photos.
        output_dir: the run folder.
        **kwargs: ``trigger``, ``request``, ``profile``, ``face_embedder``, ``resume``,
            ``on_event``, ``overrides``.

    Returns:
        TrainResult (``completed`` or ``cancelled``).

    Raises:
        LoraRuleError, TrainingError, PersonaMLError: as ``TrainingJob.run``.

    Example:
        >>> result = train_lora("tiny-cpu", "prepared/", "runs/demo")    # doctest: +SKIP
        >>> print(result.summary())                                      # doctest: +SKIP
    """
    return TrainingJob(config, images_dir_or_prepared, output_dir, **kwargs).run()


# --- helpers --------------------------------------------------------------------------------------

def _permutation(seed: int, epoch: int, n: int, _cache: dict = {}) -> np.ndarray:  # noqa: B006 (memo)
    key = (seed, epoch, n)
    if key not in _cache:
        if len(_cache) > 64:
            _cache.clear()
        _cache[key] = np.random.default_rng([seed, epoch, n]).permutation(n)
    return _cache[key]


def _derive_seed(seed: int, step: int, micro: int, rank: int) -> int:
    # int() before the shift: numpy 1.x refuses uint64 >> int64 (no safe common type)
    return int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1, dtype=np.uint64)[0]) >> 1


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _earlier_identity(samples_root: Path, up_to: int) -> list:
    """Identity scores of sample steps at or before ``up_to`` from an interrupted run's folder."""
    from .samples import IdentityScore

    found = []
    for path in sorted(samples_root.glob("step-*/identity.json")):
        try:
            score = IdentityScore.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            continue
        if score.step <= up_to:
            found.append(score)
    return found


def _make_accelerator(use_cpu: bool, mixed_precision: str):
    """An ``Accelerator`` with this job's device and precision.

    accelerate keeps its device and mixed precision process-wide: after a CPU job (``tiny-cpu``)
    a later job in the same process would silently run on the CPU, and one with another precision
    would fail with a raw ``ValueError``. A single-process job therefore starts from a clean
    state; under ``accelerate launch`` / torchrun (a process group exists) the state is kept.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if AcceleratorState._shared_state and not distributed and int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=use_cpu, mixed_precision=mixed_precision)


def _unexpected(exc: Exception, status: JobStatus) -> TrainingError:
    """A coded ``TrainingError`` for an exception that is not a ``PersonaMLError``."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return TrainingError(f"out of memory while {status.value}: {exc}; enable gradient_checkpointing, lower "
                             "data.resolutions or data.batch_size, or use a GPU with more memory",
                             code="out_of_memory", field="status", value=status.value,
                             error=type(exc).__name__)
    return TrainingError(f"unexpected {type(exc).__name__} while {status.value}: {exc}", field="status",
                         value=status.value, error=type(exc).__name__)


def _is_main_process() -> bool:
    """Rank 0 under ``accelerate launch`` / torchrun (read from the environment, no state needed)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def _default_embedder():
    from ..faces.embedder import FaceEmbedder

    return FaceEmbedder("dlib")


def _make_optimizer(params, cfg: TrainConfig):
    import torch

    o = cfg.optimizer
    kwargs = dict(lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    if o.name == "adamw8bit":
        try:
            import bitsandbytes as bnb  # type: ignore[import-not-found]

            return bnb.optim.AdamW8bit(params, **kwargs), "AdamW8bit"
        except Exception as exc:  # noqa: BLE001 (ImportError, or a CPU-only build that cannot run 8-bit kernels)
            log.warning("optimizer adamw8bit unavailable (%s); using torch AdamW (more optimizer memory)", exc)
    return torch.optim.AdamW(params, **kwargs), "AdamW"
