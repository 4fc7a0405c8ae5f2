"""``CharacterGenerator``: one base Flux pipeline, many characters, switched without reloading.

How a switch works. The pipeline's transformer has one PEFT LoRA *slot* (adapter
``persona_slot``), owned by a ``PipelineSlot`` that every generator on the same pipeline shares
(``persona_ml.inference.slot``). The slot is allocated on the first LoRA request over the modules
the character's LoRA targets, at its rank, and grows only when a later LoRA needs a module or a
rank it lacks (the union of what this generator has validated, bounded by ``max_rank``): one
re-allocation, logged; a compiled transformer recompiles then. A character's LoRA is validated
(``persona_ml.lora.validation.validate_lora``) into a canonical state dict held in a CPU-memory
LRU cache (byte budget); activating it copies those tensors into the slot in place, with our
precomputed parameter map (``swap="direct"``) or with diffusers' ``load_lora_adapter(...,
hotswap=True)`` (``swap="diffusers"``). The slot knows its content by the LoRA's sha256 and its
scale, so any number of generators on one pipeline always render a request with that request's
weights and scale. The base weights are never written (no ``fuse_lora``/merge), so they cannot
drift however many switches run, and because the slot's tensors keep their shapes and the
scalings are tensors, a ``torch.compile``d transformer does not recompile on a switch.

Requests that use no LoRA (tier ``base``, tier ``ip_adapter``, ``lora_scale=0``) detach the slot:
the transformer then runs its own ``nn.Linear`` modules, bit for bit the base model at its cost.

Tiers: ``lora`` uses the character's adapter; ``ip_adapter`` conditions on a reference image
through diffusers' Flux IP-Adapter (``FluxPipeline.load_ip_adapter`` with a CLIP vision encoder,
loaded from local safetensors files once per pipeline when an ``IPAdapterSpec`` is given);
``base`` is the plain base model (A/B baselines), only when a request asks for it.

Example:
    >>> from persona_ml.models import load_base_model
    >>> gen = CharacterGenerator(load_base_model("tiny-flux"), face_embedder=None)      # doctest: +SKIP
    >>> gen.register(Character("ada", lora_path="runs/ada/pytorch_lora_weights.safetensors"))  # doctest: +SKIP
    >>> result = gen.generate(GenerationRequest("ada", "a portrait of {trigger}", seeds=[1, 2],
    ...                                         height=64, width=64, steps=2))         # doctest: +SKIP
    >>> result.best.image.save("ada.png")                                                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._atomic import sha256_file
from ..errors import BackendError, InputError, LoraValidationError, PersonaMLError
from ..lora.validation import ValidatedLora, validate_lora
from .identity import rank_best_of, score_images
from .ip_adapter import IPAdapterSpec, load_ip_adapter, spec_key
from .slot import SLOT_ADAPTER, PipelineSlot
from .types import CacheStats, Character, GeneratedImage, GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

__all__ = ["CharacterGenerator", "IPAdapterSpec", "SLOT_ADAPTER"]


@dataclass
class _MemEntry:
    lora: ValidatedLora
    stat: tuple[int, ...]
    packed: Any = None  # (slot layout, flat tensor) when the LoRA has the slot's exact layout
    tried: Any = None  # the slot layout packing was last tried for


def _file_stat(path: Path) -> tuple[int, ...]:
    """What changes when a file's content can have changed: device, inode, size, mtime and ctime.

    ctime cannot be set back by a user (``touch -d``, ``cp -p`` and ``rsync -t`` restore mtime,
    not ctime), so a rewrite that keeps size and mtime still shows here.
    """
    try:
        st = path.stat()
    except OSError:
        return (-1,)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class CharacterGenerator:
    """Generates images of registered characters on one base pipeline loaded once.

    Several generators may share one pipeline (``evaluate_lora`` builds one beside yours): the
    slot's state lives with the pipeline, so none can render another's weights or scale.

    Args:
        base: a ``LoadedBaseModel`` (its ``fingerprint`` checks every LoRA) or a ``FluxPipeline``.
        base_fingerprint: the base fingerprint when ``base`` is a bare pipeline.
        base_name: the base model's name when ``base`` is a bare pipeline (reports only).
        max_rank: the largest LoRA rank accepted (the platform's rules allow up to 32); the slot's
            rank is the largest rank actually used, never more than this.
        memory_budget_bytes: CPU-memory cache budget for validated LoRAs (LRU eviction).
        slot_targets: ``None`` (default): the slot covers what the LoRAs used target and grows on
            demand. A list of transformer module paths allocates the slot over exactly those at
            ``max_rank`` now (nothing grows later, so a compiled transformer never recompiles) and
            refuses a LoRA touching a module outside it (``lora_unused_keys``).
        compile: ``torch.compile`` the transformer (in place, once per pipeline).
        compile_kwargs: passed to ``transformer.compile`` (e.g. ``{"backend": "inductor"}``).
        face_embedder: a ``FaceEmbedder`` for identity scoring (``None``: images are not scored).
        ip_adapter: an ``IPAdapterSpec`` enabling the ``ip_adapter`` tier.
        require_base_fingerprint: refuse LoRAs whose metadata names no base fingerprint.
        swap: how a LoRA enters the slot: ``"diffusers"`` calls ``load_lora_adapter(...,
            hotswap=True)`` (PEFT's ``hotswap_adapter_from_state_dict``); ``"direct"`` (default)
            does the same in-place copies (zero-padded to the slot rank, other slot modules zeroed)
            from a precomputed parameter map, without diffusers' per-call state-dict walks: the
            same tensors end up in the same storage, so images are identical either way.

    Raises:
        InputError: bad arguments; ``base_has_adapters`` when the pipeline carries LoRAs loaded
            outside persona_ml or another IP-Adapter than ``ip_adapter``.
        ArtifactError: ``ip_adapter_invalid`` (a pickle, or files that do not fit the transformer).
        BackendError: PEFT/diffusers failed while preparing the pipeline.
        BackendUnavailableError: peft missing.
    """

    def __init__(self, base: Any, *, base_fingerprint: str | None = None, base_name: str | None = None,
                 max_rank: int = 64, memory_budget_bytes: int = 2 << 30, slot_targets: Sequence[str] | None = None,
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
        if isinstance(memory_budget_bytes, bool) or not isinstance(memory_budget_bytes, int) or memory_budget_bytes < 0:
            raise InputError(f"memory_budget_bytes must be >= 0, got {memory_budget_bytes!r}",
                             field="memory_budget_bytes", value=memory_budget_bytes)
        if ip_adapter is not None and not isinstance(ip_adapter, IPAdapterSpec):
            raise InputError(f"ip_adapter must be an IPAdapterSpec, got {type(ip_adapter).__name__}",
                             field="ip_adapter", value=repr(ip_adapter)[:200])
        try:
            import peft  # noqa: F401
        except ImportError as exc:  # pragma: no cover - core dependency
            from ..errors import BackendUnavailableError

            raise BackendUnavailableError("peft is required for LoRA switching: pip install peft",
                                          package="peft") from exc
        self.pipe = pipe
        self.base_name: str | None = getattr(base, "name", None) or base_name
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
        self.slot = PipelineSlot.of(pipe)
        self._lock = self.slot.lock  # one lock per pipeline: every generator on it is serialised
        self._characters: dict[str, Character] = {}
        self._memory: OrderedDict[str, _MemEntry] = OrderedDict()
        self._memory_bytes = 0
        self._stats = {"hits_active": 0, "hits_memory": 0, "loads_disk": 0, "evictions": 0}
        self._last: str | None = None
        self.modules = self.slot.modules
        self._base_param_names = frozenset(
            n.replace(".base_layer.", ".") for n, _ in self.transformer.named_parameters()
            if "lora_" not in n and ".processor." not in n and not n.startswith("encoder_hid_proj"))
        self.ip_adapter = ip_adapter
        with self._lock:
            self.slot.check_foreign()
            self.slot_targets: tuple[str, ...] | None = None
            if slot_targets is not None:
                targets = [slot_targets] if isinstance(slot_targets, str) else list(slot_targets)
                unknown = [t for t in targets if t not in self.modules]
                if unknown or not targets:
                    raise InputError(f"slot_targets name no nn.Linear of this transformer: {unknown[:5]}",
                                     field="slot_targets", value=unknown[:5])
                self.slot_targets = tuple(sorted(set(targets)))
                self.slot.reserve(self.slot_targets, max_rank)
            self._setup_ip_adapter(ip_adapter)
            if compile and not self.slot.compiled:
                self.transformer.compile(**(compile_kwargs or {}))
                self.slot.compiled = True
        self.compiled = self.slot.compiled

    # ------------------------------------------------------------------ setup

    def _setup_ip_adapter(self, spec: IPAdapterSpec | None) -> None:
        slot = self.slot
        if spec is None:
            if slot.ip_key is None and getattr(self.transformer, "encoder_hid_proj", None) is not None:
                self.pipe.unload_ip_adapter()  # loaded outside persona_ml: it would condition every image
            return
        key = spec_key(spec)
        if slot.ip_key is not None:
            if slot.ip_key != key:
                raise InputError(f"this pipeline already holds the IP-Adapter {slot.ip_key[0]}; a generator on it "
                                 f"cannot load {spec.weights} (load another base model for it)",
                                 code="base_has_adapters", field="ip_adapter", value=str(spec.weights))
            return
        if getattr(self.transformer, "encoder_hid_proj", None) is not None:
            self.pipe.unload_ip_adapter()
        default = dict(self.transformer.attn_processors)
        load_ip_adapter(self.pipe, spec, self.dtype, self.device)
        slot.default_procs, slot.ip_procs = default, dict(self.transformer.attn_processors)
        slot.ip_key, slot.processors = key, "ip_adapter"
        slot.use_processors("default")

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
        if self._last == cid:
            self._last = None

    def _memory_entry(self, character: Character) -> tuple[ValidatedLora, bool]:
        """The character's validated LoRA and whether it came from memory.

        A cached entry is trusted while the file's device, inode, size, mtime and ctime are
        unchanged. When any of them changes the file is hashed again (streamed): the same
        content keeps the entry (a ``touch`` costs one read, no re-validation), other content is
        validated afresh.
        """
        path = Path(character.lora_path)
        stat = _file_stat(path)
        entry = self._memory.get(character.id)
        if entry is not None and entry.stat == stat:
            self._memory.move_to_end(character.id)
            return entry.lora, True
        if entry is not None:
            try:
                same = sha256_file(path) == entry.lora.sha256
            except OSError:
                same = False  # gone or unreadable: validate_lora says what is wrong
            if same:
                entry.stat = stat
                self._memory.move_to_end(character.id)
                return entry.lora, True
            self._drop(character.id)
        lora = validate_lora(path, self.modules, base_fingerprint=self.base_fingerprint, max_rank=self.max_rank,
                             require_base_fingerprint=self.require_base_fingerprint, dtype=self.dtype)
        if self.slot_targets is not None:
            outside = [m for m in lora.target_modules if m not in set(self.slot_targets)]
            if outside:
                raise LoraValidationError(
                    f"{path.name} changes {len(outside)} module(s) outside this generator's slot_targets: "
                    f"{', '.join(outside[:5])}", code="lora_unused_keys", field="target_modules", value=outside[:20])
        if self.device.type == "cuda":  # pinned host memory: the slot copy runs as an async DMA
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
        return lora, False

    def _pack(self, entry: _MemEntry) -> None:
        """Keep the LoRA as one flat tensor in the slot's layout when it has exactly the slot's modules and
        rank (every character trained with the same settings does): its next switches are one copy. The
        canonical tensors become views into that flat tensor, so the cache holds the same bytes as before
        (plus alignment padding)."""
        entry.tried = self.slot.layout
        packed = self.slot.pack(entry.lora)
        if packed is None:
            return
        flat = packed[1]
        nbytes = flat.numel() * flat.element_size()
        entry.packed = packed
        self._memory_bytes += nbytes - entry.lora.nbytes
        entry.lora = dataclasses.replace(entry.lora, state_dict=self.slot.unpack(packed), nbytes=nbytes)

    def _registered_span(self) -> tuple[set[str], int]:
        """Union of the modules and the largest rank of every LoRA this generator holds validated."""
        targets: set[str] = set()
        rank = 0
        for entry in self._memory.values():
            targets.update(entry.lora.target_modules)
            rank = max(rank, entry.lora.rank)
        return targets, rank

    def activate(self, character_id: str, lora_scale: float = 1.0) -> ValidatedLora:
        """Make ``character_id``'s LoRA the one in the slot, at ``lora_scale``.

        At ``lora_scale=0`` the LoRA is validated but the slot is detached: the base model runs.

        Returns:
            The validated LoRA.

        Raises:
            InputError: unknown character or one without a LoRA.
            LoraValidationError: the LoRA was refused; the slot keeps what it held.
            BackendError: copying into the slot failed (the slot is then marked empty).
        """
        scale = float(lora_scale)
        with self._lock:
            character = self.character(character_id)
            if character.lora_path is None:
                raise InputError(f"character {character_id!r} has no LoRA (its tier is "
                                 f"{character.face_consistency_tier})", code="character_has_no_lora",
                                 field="character_id", value=character_id)
            lora, from_memory = self._memory_entry(character)
            slot = self.slot
            slot.use_processors("default")
            if scale == 0.0:
                slot.detach()
            else:
                held = slot.content == lora.sha256 and slot.covers(lora.target_modules, lora.rank)
                entry = self._memory[character_id]
                slot.load(lora, self.swap, reserve=self._registered_span, packed=entry.packed)
                if entry.tried != slot.layout:
                    self._pack(entry)
                slot.attach()
                slot.set_scale(scale)
                self._last = character_id
                if held:
                    self._stats["hits_active"] += 1
                    return lora
            if from_memory:
                self._stats["hits_memory"] += 1
            return lora

    def cache_stats(self) -> CacheStats:
        """Where each character's LoRA sits, how switches were served, and the slot's size."""
        with self._lock:
            entry = self._memory.get(self._last) if self._last is not None else None
            active = self._last if entry is not None and self.slot.content == entry.lora.sha256 else None
            return CacheStats(active=active, memory=tuple(self._memory), memory_bytes=self._memory_bytes,
                              memory_budget_bytes=self.memory_budget_bytes, **self._stats,
                              slot_modules=len(self.slot.targets), slot_rank=self.slot.rank,
                              slot_bytes=self.slot.nbytes(), slot_allocations=self.slot.allocations)

    # ------------------------------------------------------------------ integrity

    def base_checksum(self) -> str:
        """sha256 over the base transformer's own weights (no LoRA slot, no IP-Adapter).

        Equal before and after any number of switches: LoRAs are never merged into base weights.
        Reads every base tensor (slow on a full-size model: a diagnostic, not a per-request call).
        """
        import torch

        with self._lock:
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
                h.update(current[name].detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            return h.hexdigest()

    def merged_adapters(self) -> list[str]:
        """Modules where an adapter is merged into base weights (always empty: nothing merges)."""
        return [str(type(m).__name__) for m in self.slot.layers() if getattr(m, "merged_adapters", [])]

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
            if self.ip_adapter is None:
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
            BackendError: diffusers, PEFT or the face backend failed (``out_of_memory`` when the
                device ran out of memory); the cause is chained.
        """
        import torch

        if not isinstance(request, GenerationRequest):
            raise InputError("generate() takes a GenerationRequest", field="request", value=type(request).__name__)
        t0 = time.perf_counter()
        with self._lock:
            self.slot.check_foreign()
            character = self.character(request.character_id)
            tier = self.resolve_tier(character, request)
            lora_sha = None
            extra: dict[str, Any] = {}
            if tier == "lora":
                lora_sha = self.activate(character.id, request.lora_scale).sha256
            elif tier == "ip_adapter":
                ref = request.reference_image if request.reference_image is not None else character.reference_image
                from PIL import Image

                from ..images import load_image

                extra["ip_adapter_image"] = Image.fromarray(load_image(ref, name="reference_image").pixels)
                self.slot.detach()
                self.slot.use_processors("ip_adapter")
                self.pipe.set_ip_adapter_scale(float(request.ip_adapter_scale))
            else:
                self.slot.detach()
                self.slot.use_processors("default")
            t1 = time.perf_counter()
            prompt = request.prompt.replace("{trigger}", character.trigger or "")
            gen_device = "cpu" if self.device.type == "mps" else self.device
            generators = [torch.Generator(device=gen_device).manual_seed(int(s)) for s in request.seeds]
            try:
                with torch.inference_mode():
                    out = self.pipe(prompt=[prompt] * len(request.seeds), height=request.height, width=request.width,
                                    num_inference_steps=request.steps, guidance_scale=float(request.guidance),
                                    generator=generators, max_sequence_length=request.max_sequence_length,
                                    output_type="pil", **extra)
            except PersonaMLError:
                raise
            except Exception as exc:  # the request was checked up front: what fails in here is ours
                oom = isinstance(exc, torch.OutOfMemoryError)
                raise BackendError(f"generation failed in diffusers: {type(exc).__name__}: {str(exc)[:300]}",
                                   code="out_of_memory" if oom else "backend_error", stage="generate",
                                   library="diffusers", character_id=character.id, tier=tier) from exc
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
