"""``CharacterGenerator``: one base Flux pipeline, many characters, switched without reloading.

How a switch works. At start the transformer gets one PEFT LoRA *slot* (adapter
``persona_slot``) of the fixed maximum rank on every ``nn.Linear`` it may need, with zero
weights, after ``enable_lora_hotswap(target_rank=max_rank)``. A character's LoRA is validated
(``persona_ml.lora.validation.validate_lora``) into a canonical state dict held in a CPU-memory LRU cache
(byte budget); activating it hot-swaps those tensors into the slot with diffusers'
``load_lora_adapter(..., hotswap=True)``: an in-place copy into existing tensors. The base
weights are never written (no ``fuse_lora``/merge), so they cannot drift however many switches
run, and because the slot's tensors keep their shapes and the scalings are tensors, a
``torch.compile``d transformer does not recompile on a switch. The per-request LoRA scale is
written into the slot's scaling tensors; the ``ip_adapter`` tier sets it to 0, which adds an
exact zero to every projection.

Tiers (``Character.face_consistency_tier``): ``lora`` uses the character's adapter;
``ip_adapter`` conditions on a reference image through diffusers' Flux IP-Adapter
(``FluxPipeline.load_ip_adapter`` with a CLIP vision encoder, loaded from local files once at
start when an ``IPAdapterSpec`` is given).

Example:
    >>> from persona_ml.models import load_base_model
    >>> gen = CharacterGenerator(load_base_model("tiny-flux"), face_embedder=None)      # doctest: +SKIP
    >>> gen.register(Character("ada", lora_path="runs/ada/pytorch_lora_weights.safetensors"))  # doctest: +SKIP
    >>> result = gen.generate(GenerationRequest("ada", "a portrait of {trigger}", seeds=[1, 2],
    ...                                         height=64, width=64, steps=2))         # doctest: +SKIP
    >>> result.best.image.save("ada.png")                                                  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, LoraValidationError
from ..lora.validation import ValidatedLora, linear_modules, validate_lora
from .identity import rank_best_of, score_images
from .types import CacheStats, Character, GeneratedImage, GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

__all__ = ["CharacterGenerator", "IPAdapterSpec", "SLOT_ADAPTER"]

SLOT_ADAPTER = "persona_slot"


@dataclass(frozen=True)
class IPAdapterSpec:
    """Where a Flux IP-Adapter lives on disk (never downloaded).

    Attributes:
        weights: the IP-Adapter ``.safetensors`` file (XLabs layout: ``image_proj.*`` and
            ``ip_adapter.<block>.to_k_ip/to_v_ip``, or ``double_blocks.*`` keys).
        image_encoder: folder of a ``CLIPVisionModelWithProjection`` (``config.json`` +
            weights); for FLUX.1 IP-Adapters this is CLIP ViT-L/14.
        scale: default IP-Adapter strength.
    """

    weights: str | os.PathLike
    image_encoder: str | os.PathLike
    scale: float = 1.0


@dataclass
class _MemEntry:
    lora: ValidatedLora
    stat: tuple[int, int]


class CharacterGenerator:
    """Generates images of registered characters on one base pipeline loaded once.

    Args:
        base: a ``LoadedBaseModel`` (its ``fingerprint`` checks every LoRA) or a ``FluxPipeline``.
        base_fingerprint: the base fingerprint when ``base`` is a bare pipeline.
        max_rank: the largest LoRA rank accepted; the slot is allocated at this rank.
        memory_budget_bytes: CPU-memory cache budget for validated LoRAs (LRU eviction).
        slot_targets: transformer module paths the slot covers; default every ``nn.Linear``
            (covers diffusers, ai-toolkit and kohya LoRAs). A narrower list saves compute; a LoRA
            touching a module outside it is refused (``lora_unused_keys``).
        compile: ``torch.compile`` the transformer after the slot (and IP-Adapter) are in place.
        compile_kwargs: passed to ``transformer.compile`` (e.g. ``{"backend": "inductor"}``).
        face_embedder: a ``FaceEmbedder`` for identity scoring (``None``: images are not scored).
        ip_adapter: an ``IPAdapterSpec`` enabling the ``ip_adapter`` tier.
        require_base_fingerprint: refuse LoRAs whose metadata names no base fingerprint.
        swap: how a LoRA enters the slot: ``"diffusers"`` calls ``load_lora_adapter(...,
            hotswap=True)`` (PEFT's ``hotswap_adapter_from_state_dict``); ``"direct"`` (default)
            does the same in-place copies (zero-padded to the slot rank, other slot modules zeroed)
            from a precomputed parameter map, without diffusers' per-call state-dict walks: the
            same tensors end up in the same storage, so images are identical and a compiled
            transformer does not recompile either way.

    Raises:
        InputError: bad arguments. BackendUnavailableError: peft missing.
    """

    def __init__(self, base: Any, *, base_fingerprint: str | None = None, max_rank: int = 64,
                 memory_budget_bytes: int = 2 << 30, slot_targets: Sequence[str] | None = None,
                 compile: bool = False, compile_kwargs: dict[str, Any] | None = None, face_embedder: Any = None,
                 ip_adapter: IPAdapterSpec | None = None, require_base_fingerprint: bool = True,
                 swap: str = "direct") -> None:
        pipe = getattr(base, "pipeline", base)
        if not hasattr(pipe, "transformer") or not hasattr(pipe, "load_lora_weights"):
            raise InputError("base must be a LoadedBaseModel or a diffusers FluxPipeline",
                             field="base", value=type(base).__name__)
        if isinstance(max_rank, bool) or not isinstance(max_rank, int) or not 1 <= max_rank <= 1024:
            raise InputError(f"max_rank must be an integer in [1, 1024], got {max_rank!r}", field="max_rank",
                             value=max_rank)
        if swap not in ("direct", "diffusers"):
            raise InputError(f"swap must be 'direct' or 'diffusers', got {swap!r}", field="swap", value=swap)
        if not isinstance(memory_budget_bytes, int) or memory_budget_bytes < 0:
            raise InputError(f"memory_budget_bytes must be >= 0, got {memory_budget_bytes!r}",
                             field="memory_budget_bytes", value=memory_budget_bytes)
        try:
            import peft  # noqa: F401
        except ImportError as exc:  # pragma: no cover - core dependency
            from ..errors import BackendUnavailableError

            raise BackendUnavailableError("peft is required for LoRA switching: pip install peft",
                                          package="peft") from exc
        self.pipe = pipe
        self.base_name: str | None = getattr(base, "name", None)
        self.base_fingerprint: str | None = getattr(base, "fingerprint", None) or base_fingerprint
        if self.base_fingerprint is None:
            log.warning("no base-model fingerprint given: LoRAs cannot be checked against the base model")
        self.max_rank = max_rank
        self.memory_budget_bytes = memory_budget_bytes
        self.require_base_fingerprint = require_base_fingerprint
        self.swap = swap
        self.face_embedder = face_embedder
        self.transformer = pipe.transformer
        self.dtype = self.transformer.dtype
        self.device = self.transformer.device
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        self._lock = threading.RLock()
        self._characters: dict[str, Character] = {}
        self._memory: OrderedDict[str, _MemEntry] = OrderedDict()
        self._memory_bytes = 0
        self._stats = {"hits_active": 0, "hits_memory": 0, "loads_disk": 0, "evictions": 0}
        self._active: str | None = None
        self._active_sha: str | None = None
        self._scale: float | None = None
        self._tier: str = "lora"
        self._slot_params: dict[str, Any] | None = None
        self._slot_dirty: set[str] = set()

        self.modules = linear_modules(self.transformer)  # before any PEFT wrapping
        self._base_param_names = frozenset(
            n.replace(".base_layer.", ".") for n, _ in self.transformer.named_parameters()
            if "lora_" not in n and ".processor." not in n and not n.startswith("encoder_hid_proj"))
        targets = sorted(self.modules) if slot_targets is None else list(slot_targets)
        unknown = [t for t in targets if t not in self.modules]
        if unknown or not targets:
            raise InputError(f"slot_targets name no nn.Linear of this transformer: {unknown[:5]}",
                             field="slot_targets", value=unknown[:5])
        self.slot_targets = tuple(targets)
        self._init_slot()

        self._ip_spec = ip_adapter
        self._default_procs: dict[str, Any] | None = None
        self._ip_procs: dict[str, Any] | None = None
        if ip_adapter is not None:
            self._load_ip_adapter(ip_adapter)
        elif getattr(self.transformer, "encoder_hid_proj", None) is not None:
            self.pipe.unload_ip_adapter()  # left by an earlier generator on this pipeline
        self.compiled = False
        if compile:
            self.transformer.compile(**(compile_kwargs or {}))
            self.compiled = True

    # ------------------------------------------------------------------ setup

    def _init_slot(self) -> None:
        import torch
        from peft.tuners.lora import LoraLayer

        existing = dict(getattr(self.transformer, "peft_config", {}) or {})
        if existing:
            slot = existing.get(SLOT_ADAPTER)
            wrapped = {n for n, m in self.transformer.named_modules()
                       if isinstance(m, LoraLayer) and SLOT_ADAPTER in m.scaling}
            if set(existing) != {SLOT_ADAPTER} or slot is None or slot.r != self.max_rank or \
                    not set(self.slot_targets) <= wrapped:
                raise InputError(
                    f"the base pipeline already carries LoRA adapters {sorted(existing)} that this generator cannot "
                    "reuse (another rank or fewer targets); pass a freshly loaded base model",
                    code="base_has_adapters", field="base", value=sorted(existing))
            # A previous generator's slot on the same pipeline: reuse it (its weights are overwritten on use).
            self._lora_layers = [m for m in self.transformer.modules()
                                 if isinstance(m, LoraLayer) and SLOT_ADAPTER in m.scaling]
            self._slot_dirty = set(self.slot_targets)
            self._set_scale(0.0)
            return
        sd = {}
        for m in self.slot_targets:
            in_f, out_f = self.modules[m]
            sd[f"{m}.lora_A.weight"] = torch.zeros(self.max_rank, in_f, dtype=self.dtype, device=self.device)
            sd[f"{m}.lora_B.weight"] = torch.zeros(out_f, self.max_rank, dtype=self.dtype, device=self.device)
        self.pipe.enable_lora_hotswap(target_rank=self.max_rank)
        meta = {"r": self.max_rank, "lora_alpha": self.max_rank, "target_modules": list(self.slot_targets),
                "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False, "lora_bias": False,
                "use_rslora": False, "lora_dropout": 0.0}
        self.transformer.load_lora_adapter(sd, adapter_name=SLOT_ADAPTER, prefix=None, metadata=meta)
        self._lora_layers = [m for m in self.transformer.modules()
                             if isinstance(m, LoraLayer) and SLOT_ADAPTER in m.scaling]
        self._set_scale(0.0)

    def _load_ip_adapter(self, spec: IPAdapterSpec) -> None:
        weights = Path(spec.weights)
        encoder = Path(spec.image_encoder)
        for p, what in ((weights, "IP-Adapter weights"), (encoder, "IP-Adapter image encoder")):
            if not p.exists():
                from ..errors import ModelNotFoundError

                raise ModelNotFoundError(f"{what} not found at {p}", field="ip_adapter", value=str(p),
                                         searched=[str(p)])
        self._default_procs = dict(self.transformer.attn_processors)
        self.pipe.load_ip_adapter(str(weights.parent), weight_name=weights.name,
                                  image_encoder_pretrained_model_name_or_path=str(encoder),
                                  image_encoder_dtype=self.dtype, local_files_only=True)
        self.pipe.image_encoder.to(self.device)
        self._ip_procs = dict(self.transformer.attn_processors)
        self._tier = "ip_adapter"
        self._use_processors("lora")

    def _use_processors(self, tier: str) -> None:
        if self._ip_procs is None or tier == self._tier:
            self._tier = tier
            return
        procs = self._ip_procs if tier == "ip_adapter" else self._default_procs
        self.transformer.set_attn_processor(dict(procs))
        self._tier = tier

    # ------------------------------------------------------------------ characters and cache

    def register(self, character: Character, *, preload: bool = False) -> None:
        """Add or replace a character. ``preload`` validates its LoRA now (else on first use).

        Raises:
            LoraValidationError: with ``preload``, when the LoRA is refused.
        """
        if not isinstance(character, Character):
            raise InputError("register() takes a Character", field="character", value=type(character).__name__)
        with self._lock:
            old = self._characters.get(character.id)
            self._characters[character.id] = character
            if old is not None and old.lora_path != character.lora_path:
                self._drop(character.id)
            if preload and character.lora_path is not None:
                self._memory_entry(character)

    def unregister(self, character_id: str) -> None:
        """Forget a character and its cached LoRA."""
        with self._lock:
            self._characters.pop(character_id, None)
            self._drop(character_id)

    def character(self, character_id: str) -> Character:
        try:
            return self._characters[character_id]
        except KeyError:
            raise InputError(f"unknown character {character_id!r}; register it first", code="character_unknown",
                             field="character_id", value=character_id) from None

    def _drop(self, cid: str) -> None:
        entry = self._memory.pop(cid, None)
        if entry is not None:
            self._memory_bytes -= entry.lora.nbytes
        if self._active == cid:
            self._active = self._active_sha = None
            self._set_scale(0.0)

    @staticmethod
    def _file_stat(path: Path) -> tuple[int, int]:
        try:
            st = path.stat()
            return st.st_mtime_ns, st.st_size
        except OSError:
            return -1, -1

    def _memory_entry(self, character: Character) -> ValidatedLora:
        path = Path(character.lora_path)
        stat = self._file_stat(path)
        entry = self._memory.get(character.id)
        if entry is not None and entry.stat == stat:
            self._memory.move_to_end(character.id)
            self._stats["hits_memory"] += 1
            return entry.lora
        if entry is not None:  # the file changed on disk: validate it again
            self._drop(character.id)
        lora = validate_lora(path, self.modules, base_fingerprint=self.base_fingerprint, max_rank=self.max_rank,
                             require_base_fingerprint=self.require_base_fingerprint, dtype=self.dtype)
        outside = [m for m in lora.target_modules if m not in set(self.slot_targets)]
        if outside:
            raise LoraValidationError(
                f"{path.name} changes {len(outside)} module(s) outside this generator's slot_targets: "
                f"{', '.join(outside[:5])}", code="lora_unused_keys", field="target_modules", value=outside[:20])
        if self.device.type == "cuda":  # pinned host memory: the slot copy runs as an async DMA
            import dataclasses

            lora = dataclasses.replace(lora, state_dict={k: v.pin_memory() for k, v in lora.state_dict.items()})
        self._stats["loads_disk"] += 1
        self._memory[character.id] = _MemEntry(lora, stat)
        self._memory_bytes += lora.nbytes
        while self._memory_bytes > self.memory_budget_bytes and len(self._memory) > 1:
            cid, old = self._memory.popitem(last=False)
            self._memory_bytes -= old.lora.nbytes
            self._stats["evictions"] += 1
            log.debug("evicted LoRA of %s from CPU memory", cid)
        if self._memory_bytes > self.memory_budget_bytes:
            log.warning("LoRA of %s (%d bytes) alone exceeds the memory budget (%d bytes)", character.id,
                        lora.nbytes, self.memory_budget_bytes)
        return lora

    def activate(self, character_id: str, lora_scale: float = 1.0) -> ValidatedLora:
        """Make ``character_id``'s LoRA the active one at ``lora_scale`` (a no-op when it already is).

        Returns:
            The validated LoRA now in the slot.

        Raises:
            InputError: unknown character or one without a LoRA.
            LoraValidationError: the LoRA was refused; the previous adapter stays active.
        """
        with self._lock:
            character = self.character(character_id)
            if character.lora_path is None:
                raise InputError(f"character {character_id!r} has no LoRA (its tier is "
                                 f"{character.face_consistency_tier})", code="character_has_no_lora",
                                 field="character_id", value=character_id)
            if self._active == character_id and self._active_sha is not None:
                entry = self._memory.get(character_id)
                # the file may have been re-exported at the same path: then validate and swap it in again
                if entry is not None and entry.lora.sha256 == self._active_sha and \
                        entry.stat == self._file_stat(Path(character.lora_path)):
                    self._stats["hits_active"] += 1
                    self._memory.move_to_end(character_id)
                    self._set_scale(lora_scale)
                    return entry.lora
            lora = self._memory_entry(character)
            if self._active_sha != lora.sha256 or self._active != character_id:
                self._swap_in(lora)
                self._active, self._active_sha = character_id, lora.sha256
            self._set_scale(lora_scale)
            return lora

    def _swap_in(self, lora: ValidatedLora) -> None:
        if self.swap == "diffusers":
            self.transformer.load_lora_adapter(dict(lora.state_dict), adapter_name=SLOT_ADAPTER, prefix=None,
                                               hotswap=True, metadata=lora.peft_metadata())
            self._slot_dirty = set(self.slot_targets)
            return
        import torch

        if self._slot_params is None:
            self._slot_params = {}
            for name, module in self.transformer.named_modules():
                if name in self.modules and hasattr(module, "lora_A") and SLOT_ADAPTER in module.lora_A:
                    self._slot_params[name] = (module.lora_A[SLOT_ADAPTER].weight, module.lora_B[SLOT_ADAPTER].weight)
        targets = set(lora.target_modules)
        sd = lora.state_dict
        with torch.no_grad():
            for m in self._slot_dirty - targets:
                a_slot, b_slot = self._slot_params[m]
                a_slot.zero_()
                b_slot.zero_()
            for m in lora.target_modules:
                a_slot, b_slot = self._slot_params[m]
                a, b = sd[f"{m}.lora_A.weight"], sd[f"{m}.lora_B.weight"]
                r = a.shape[0]
                a_slot[:r].copy_(a, non_blocking=True)
                b_slot[:, :r].copy_(b, non_blocking=True)
                if r < a_slot.shape[0]:
                    a_slot[r:].zero_()
                    b_slot[:, r:].zero_()
        self._scale = None  # canonical LoRAs have scaling 1: _set_scale writes the request's into every layer
        self._slot_dirty = targets

    def _set_scale(self, scale: float) -> None:
        scale = float(scale)
        if self._scale == scale:
            return
        for layer in self._lora_layers:
            current = layer.scaling[SLOT_ADAPTER]
            if hasattr(current, "fill_"):
                current.fill_(scale)
            else:
                layer.scaling[SLOT_ADAPTER] = scale
        self._scale = scale

    def cache_stats(self) -> CacheStats:
        """Where each character's LoRA sits and how switches were served."""
        with self._lock:
            return CacheStats(active=self._active, memory=tuple(self._memory), memory_bytes=self._memory_bytes,
                              memory_budget_bytes=self.memory_budget_bytes, **self._stats)

    # ------------------------------------------------------------------ integrity

    def base_checksum(self) -> str:
        """sha256 over the base transformer's own weights (no LoRA slot, no IP-Adapter).

        Equal before and after any number of switches: LoRAs are never merged into base weights.
        Reads every base tensor (slow on a full-size model: a diagnostic, not a per-request call).
        """
        h = hashlib.sha256()
        current = {}
        for name, p in self.transformer.named_parameters():
            if "lora_" in name:
                continue
            current[name.replace(".base_layer.", ".")] = p
        names = sorted(n for n in current if n in self._base_param_names)
        missing = self._base_param_names - set(names)
        if missing:
            h.update(("missing:" + ",".join(sorted(missing))).encode())
        for name in names:
            h.update(name.encode())
            h.update(current[name].detach().to("cpu").contiguous().view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
        return h.hexdigest()

    def merged_adapters(self) -> list[str]:
        """Modules where an adapter is merged into base weights (always empty: nothing merges)."""
        return [str(type(m).__name__) for m in self._lora_layers if getattr(m, "merged_adapters", [])]

    # ------------------------------------------------------------------ generation

    def resolve_tier(self, character: Character, request: GenerationRequest) -> str:
        """The tier a request runs in: the request's, else the character's own.

        Raises:
            InputError: ``tier_unavailable`` when the character (or generator) lacks what the tier needs.
        """
        tier = request.tier or character.face_consistency_tier
        if tier is None:
            raise InputError(f"character {character.id!r} has neither a LoRA nor a reference image",
                             code="tier_unavailable", field="tier", value=None)
        if tier == "lora" and character.lora_path is None:
            raise InputError(f"character {character.id!r} has no LoRA for tier 'lora'", code="tier_unavailable",
                             field="tier", value=tier)
        if tier == "ip_adapter":
            if self._ip_procs is None:
                raise InputError("tier 'ip_adapter' needs a generator built with ip_adapter=IPAdapterSpec(...)",
                                 code="tier_unavailable", field="tier", value=tier)
            if (request.reference_image if request.reference_image is not None else character.reference_image) is None:
                raise InputError(f"character {character.id!r} has no reference image for tier 'ip_adapter'",
                                 code="tier_unavailable", field="reference_image", value=None)
        return tier

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate ``len(request.seeds)`` images, score each against the character's profile.

        Args:
            request: a ``GenerationRequest``.

        Returns:
            GenerationResult: images in seed order and the best-of-N ``selected`` indices.

        Raises:
            InputError: unknown character, unavailable tier, bad request.
            LoraValidationError: the character's LoRA was refused.
        """
        import torch

        if not isinstance(request, GenerationRequest):
            raise InputError("generate() takes a GenerationRequest", field="request", value=type(request).__name__)
        t0 = time.perf_counter()
        with self._lock:
            character = self.character(request.character_id)
            tier = self.resolve_tier(character, request)
            lora_sha = None
            extra: dict[str, Any] = {}
            if tier == "lora":
                lora_sha = self.activate(character.id, request.lora_scale).sha256
                self._use_processors("lora")
            else:
                self._set_scale(0.0)
                self._use_processors("ip_adapter")
                ref = request.reference_image if request.reference_image is not None else character.reference_image
                from PIL import Image

                from ..images import load_image

                extra["ip_adapter_image"] = Image.fromarray(load_image(ref, name="reference_image").pixels)
                self.pipe.set_ip_adapter_scale(float(request.ip_adapter_scale))
            t1 = time.perf_counter()
            prompt = request.prompt.replace("{trigger}", character.trigger or "")
            gen_device = "cpu" if self.device.type == "mps" else self.device
            generators = [torch.Generator(device=gen_device).manual_seed(int(s)) for s in request.seeds]
            with torch.inference_mode():
                out = self.pipe(prompt=[prompt] * len(request.seeds), height=request.height, width=request.width,
                                num_inference_steps=request.steps, guidance_scale=float(request.guidance),
                                generator=generators, max_sequence_length=request.max_sequence_length,
                                output_type="pil", **extra)
            images = list(out.images)
        t2 = time.perf_counter()
        checks = score_images(images, character.profile, self.face_embedder) if character.profile is not None \
            else score_images(images, None, None)
        t3 = time.perf_counter()
        generated = tuple(GeneratedImage(image=img, seed=int(s), index=i, identity=c)
                          for i, (img, s, c) in enumerate(zip(images, request.seeds, checks)))
        return GenerationResult(character_id=character.id, tier=tier, images=generated,
                                selected=rank_best_of(checks, request.keep), lora_sha256=lora_sha,
                                timings={"switch": round(t1 - t0, 4), "generate": round(t2 - t1, 4),
                                         "score": round(t3 - t2, 4)})


def _byte_dtype():
    import torch

    return torch.uint8
