"""``PipelineSlot``: the one owner of what a pipeline's transformer holds.

Every ``CharacterGenerator`` built on the same pipeline shares one ``PipelineSlot`` (kept in a
weak map keyed by the transformer, so it lives exactly as long as the model does). It records
and changes, under one lock:

- the LoRA slot's *allocation*: a PEFT adapter (``persona_slot``) over the union of the modules the
  LoRAs used so far target, at the largest of their ranks. It is allocated on the first LoRA request
  and grows only when a LoRA needs a module or a rank it lacks: one re-allocation (the PEFT layers are
  removed and injected again over the larger set; a ``torch.compile``d transformer then recompiles).
- its *content*: the sha256 of the LoRA file whose canonical tensors are in the slot (``None``:
  zeros), and the scale written into the slot's scaling tensors. A generator asks the slot to hold
  a LoRA by content, never by character id, so two generators that each think "A is loaded" cannot
  disagree with the weights: the slot compares hashes and swaps when they differ.
- whether the slot is *attached*: base-only requests (tier ``base``, the ``ip_adapter`` tier,
  ``lora_scale=0``) detach it, putting each wrapped layer's own ``nn.Linear`` back in the module
  tree, so they run exactly the base model's modules, bit for bit and at its cost. Re-attaching
  is a pointer swap per layer; the slot's tensors stay where they are.
- the attention processors in place (default or IP-Adapter) and which IP-Adapter is loaded.

Nothing here merges a LoRA into base weights, so base weights never drift.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import BackendError, InputError
from ..lora.validation import ValidatedLora, linear_modules

log = logging.getLogger(__name__)

__all__ = ["PipelineSlot", "SLOT_ADAPTER"]

SLOT_ADAPTER = "persona_slot"

_SLOTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ALIGN = 64


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


# ATen splits a CPU op over its thread pool above 32768 elements (at::internal::GRAIN_SIZE); a split copy waits
# for every worker thread, and on a busy machine a descheduled worker costs a whole scheduler slice (measured:
# 5 ms instead of 0.7 ms per switch with 2 threads under load). Chunks below that size run on the calling thread.
_CPU_CHUNK = 32768


def _copy_flat(dst: Any, src: Any) -> None:
    if dst.device.type != "cpu":
        dst.copy_(src, non_blocking=True)  # one DMA from pinned host memory
        return
    for start in range(0, dst.numel(), _CPU_CHUNK):
        dst[start:start + _CPU_CHUNK].copy_(src[start:start + _CPU_CHUNK])
_SLOTS_LOCK = threading.Lock()


class PipelineSlot:
    """Shared state of one pipeline's transformer (see the module docstring). Use ``PipelineSlot.of(pipe)``."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.lock = threading.RLock()
        self.modules: dict[str, tuple[int, int]] = linear_modules(self.transformer)
        self.targets: frozenset[str] = frozenset()
        self.rank = 0
        self.content: str | None = None
        self.scale: float | None = None
        self.attached = False
        self.allocations = 0
        self.compiled = False
        self._layers: dict[str, Any] = {}
        self._places: list[tuple[Any, str, Any, Any]] = []  # (parent, child name, LoRA layer, base layer)
        self._params: dict[str, tuple[Any, Any]] = {}
        self._dirty: set[str] = set()  # slot modules that may hold non-zero weights
        # Every slot tensor is a view into one flat buffer, in ``_layout`` order (module, A then B), and
        # every layer's scaling is one shared 0-d tensor: a LoRA packed in the same layout swaps in with
        # one copy, and a scale change is one fill, whatever the number of modules.
        self._flat: Any = None
        self._scale_t: Any = None
        self._offsets: dict[str, tuple[int, int, int, int]] = {}  # module -> (A offset, in, B offset, out)
        self._ptrs: tuple[int, int] = (0, 0)
        self.layout: tuple[tuple[str, ...], int] = ((), 0)
        # IP-Adapter: which one is loaded, and the two processor sets
        self.ip_key: tuple | None = None
        self.default_procs: dict[str, Any] | None = None
        self.ip_procs: dict[str, Any] | None = None
        self.processors = "default"

    @classmethod
    def of(cls, pipe: Any) -> PipelineSlot:
        """The slot state of ``pipe``'s transformer, created on first use.

        Raises:
            InputError: ``base_has_adapters`` when the transformer already carries LoRA adapters that
                no generator put there (a plain ``load_lora_weights`` call): they would be silently
                applied to every character.
        """
        transformer = pipe.transformer
        with _SLOTS_LOCK:
            slot = _SLOTS.get(transformer)
            if slot is None:
                foreign = sorted(getattr(transformer, "peft_config", {}) or {})
                if foreign:
                    raise InputError(
                        f"the base pipeline already carries LoRA adapters {foreign} loaded outside persona_ml; "
                        "pass a freshly loaded base model (or unload them first)",
                        code="base_has_adapters", field="base", value=foreign)
                slot = cls(pipe)
                _SLOTS[transformer] = slot
            return slot

    # ------------------------------------------------------------------ allocation

    def check_foreign(self) -> None:
        """Refuse to run when someone loaded other adapters onto this transformer behind our back."""
        extra = sorted(set(getattr(self.transformer, "peft_config", {}) or {}) - {SLOT_ADAPTER})
        if extra:
            raise InputError(f"adapters {extra} were loaded onto the base pipeline outside persona_ml; they would "
                             "change every character's images", code="base_has_adapters", field="base", value=extra)

    def covers(self, targets: Iterable[str], rank: int) -> bool:
        return rank <= self.rank and set(targets) <= self.targets

    def reserve(self, targets: Iterable[str], rank: int) -> bool:
        """Make the slot cover ``targets`` at ``rank`` at least; returns whether it was (re)allocated.

        Growth takes the union with what the slot already covers, so a slot never shrinks under a
        generator that relies on it. The slot's content is zeros afterwards.

        Raises:
            InputError: a target is not an ``nn.Linear`` of this transformer.
            BackendError: PEFT/diffusers failed to inject the adapter.
        """
        targets = set(targets)
        if self.covers(targets, rank):
            return False
        self.check_foreign()
        unknown = sorted(t for t in targets if t not in self.modules)
        if unknown:
            raise InputError(f"slot targets name no nn.Linear of this transformer: {unknown[:5]}",
                             field="slot_targets", value=unknown[:5])
        new_targets = frozenset(targets | self.targets)
        new_rank = max(int(rank), self.rank)
        if self.allocations:
            log.warning("LoRA slot grows from %d modules at rank %d to %d modules at rank %d (one re-allocation%s)",
                        len(self.targets), self.rank, len(new_targets), new_rank,
                        "; the compiled transformer recompiles" if self.compiled else "")
        self._allocate(new_targets, new_rank)
        return True

    def _allocate(self, targets: frozenset[str], rank: int) -> None:
        import torch
        from peft.tuners.lora import LoraLayer

        transformer = self.transformer
        dtype, device = transformer.dtype, transformer.device
        try:
            if self._layers:
                for parent, child, layer, _ in self._places:  # back in the tree, so unload_lora finds every layer
                    setattr(parent, child, layer)
                transformer.unload_lora()  # restores the plain nn.Linear modules (same Parameters)
            self._layers, self._places, self._params, self._dirty = {}, [], {}, set()
            self._flat, self._scale_t, self._offsets, self.layout = None, None, {}, ((), 0)
            self.content, self.scale, self.attached = None, None, False
            self.targets, self.rank = frozenset(), 0
            sd = {}
            for m in sorted(targets):
                in_f, out_f = self.modules[m]
                sd[f"{m}.lora_A.weight"] = torch.zeros(rank, in_f, dtype=dtype, device=device)
                sd[f"{m}.lora_B.weight"] = torch.zeros(out_f, rank, dtype=dtype, device=device)
            # scalings become tensors (a scale change then never recompiles a compiled transformer)
            transformer.enable_lora_hotswap(target_rank=rank, check_compiled="ignore")
            meta = {"r": rank, "lora_alpha": rank, "target_modules": sorted(targets), "rank_pattern": {},
                    "alpha_pattern": {}, "use_dora": False, "lora_bias": False, "use_rslora": False,
                    "lora_dropout": 0.0}
            transformer.load_lora_adapter(sd, adapter_name=SLOT_ADAPTER, prefix=None, metadata=meta)
        except Exception as exc:
            raise BackendError(f"allocating the LoRA slot ({len(targets)} modules, rank {rank}) failed: "
                               f"{type(exc).__name__}: {exc}", stage="slot_allocate",
                               library="peft") from exc
        lookup = dict(transformer.named_modules())
        order = sorted(targets)
        offset = 0
        for name in order:  # each tensor starts on a 64-element boundary (aligned loads in the matmuls)
            in_f, out_f = self.modules[name]
            b_off = _align(offset + rank * in_f)
            self._offsets[name] = (offset, in_f, b_off, out_f)
            offset = _align(b_off + rank * out_f)
        flat = torch.zeros(offset, dtype=dtype, device=device)
        scale_t = torch.zeros((), dtype=torch.float32, device=device)
        for name in order:
            layer = lookup.get(name)
            if not isinstance(layer, LoraLayer) or SLOT_ADAPTER not in layer.scaling:
                raise BackendError(f"PEFT did not wrap {name} with the LoRA slot", stage="slot_allocate",
                                   library="peft", module=name)
            parent_name, _, child = name.rpartition(".")
            parent = lookup[parent_name] if parent_name else transformer
            a_off, in_f, b_off, out_f = self._offsets[name]
            a, b = layer.lora_A[SLOT_ADAPTER].weight, layer.lora_B[SLOT_ADAPTER].weight
            a.data = flat[a_off:a_off + rank * in_f].view(rank, in_f)
            b.data = flat[b_off:b_off + out_f * rank].view(out_f, rank)
            layer.scaling[SLOT_ADAPTER] = scale_t
            self._layers[name] = layer
            self._places.append((parent, child, layer, layer.get_base_layer()))
            self._params[name] = (a, b)
        self._flat, self._scale_t = flat, scale_t
        first, last = self._params[order[0]][0], self._params[order[-1]][1]
        self._ptrs = (first.data_ptr(), last.data_ptr())
        self.layout = (tuple(order), rank)
        self.targets, self.rank = targets, rank
        self.attached = True
        self.allocations += 1
        self.set_scale(0.0)
        log.info("LoRA slot allocated: %d modules at rank %d", len(targets), rank)

    # ------------------------------------------------------------------ attach / detach

    def _views_intact(self) -> bool:
        """The slot's parameters are still views into the flat buffer, on the transformer's device and dtype.

        ``pipe.to(device or dtype)`` replaces every parameter's tensor (attached slot), or leaves the
        detached slot behind; either way the buffer no longer is what the model computes with.
        """
        order = self.layout[0]
        first, last = self._params[order[0]][0], self._params[order[-1]][1]
        base = self._places[0][3].weight  # in the module tree attached or not: it moves with the pipeline
        # (not transformer.device/.dtype: diffusers walks every module for those, ~10 ms on a switch)
        return (first.data_ptr(), last.data_ptr()) == self._ptrs and self._flat.device == base.device \
            and self._flat.dtype == base.dtype

    def _set_attached(self, on: bool) -> None:
        if not self._places:
            self.attached = False
            return
        if on and not self._views_intact():
            log.info("the pipeline moved to %s/%s: re-allocating the LoRA slot", self.transformer.device,
                     self.transformer.dtype)
            self._allocate(self.targets, self.rank)  # content is zeros: the next load copies it in again
            return
        if on == self.attached:
            return
        for parent, child, layer, base in self._places:
            setattr(parent, child, layer if on else base)
        self.attached = on

    def attach(self) -> None:
        """Put the slot's LoRA layers back into the module tree."""
        self._set_attached(True)

    def detach(self) -> None:
        """Run the plain base modules: each LoRA layer is replaced by its own base ``nn.Linear``."""
        self._set_attached(False)

    # ------------------------------------------------------------------ content

    def load(self, lora: ValidatedLora, swap: str, *,
             reserve: Callable[[], tuple[Iterable[str], int]] | None = None, packed: Any = None) -> bool:
        """Make the slot hold ``lora`` (by content hash); returns whether tensors were copied.

        Args:
            lora: a validated, canonical LoRA.
            swap: ``"direct"`` (in-place copies) or ``"diffusers"`` (``load_lora_adapter(hotswap=True)``).
            reserve: returns ``(targets, rank)`` the slot should cover if it has to grow anyway (the
                union of what the caller holds validated), so that one re-allocation serves them all;
                called only when the slot grows.
            packed: ``(layout, flat tensor)`` from ``pack(lora)``; used (one copy) while the layout holds.

        Raises:
            BackendError: the copy failed; the slot is then marked empty, never half-loaded.
        """
        self.check_foreign()
        if self._places and not self._views_intact():
            self._set_attached(True)  # re-allocates on the pipeline's device and dtype
        if not self.covers(lora.target_modules, lora.rank):
            targets, rank = set(lora.target_modules), lora.rank
            if reserve is not None:
                more_targets, more_rank = reserve()
                targets |= set(more_targets)
                rank = max(rank, int(more_rank))
            self.reserve(targets, rank)
        self._set_attached(True)
        if self.content == lora.sha256:
            return False
        self.content = None  # until the copy has fully succeeded
        try:
            if swap == "diffusers":
                self._swap_diffusers(lora)
            elif packed is not None and packed[0] == self.layout:
                _copy_flat(self._flat, packed[1])
            else:
                self._swap_direct(lora)
        except Exception as exc:
            self._dirty = set(self.targets)  # unknown state: the next direct swap zeroes everything
            raise BackendError(f"copying LoRA {lora.path.name} into the slot failed: {type(exc).__name__}: {exc}",
                               code="backend_error", stage="slot_swap", swap=swap, library="peft") from exc
        self._dirty = set(lora.target_modules)
        self.content = lora.sha256
        self.scale = None  # canonical LoRAs carry scaling 1; PEFT's hotswap also rewrote the scalings
        return True

    def _swap_diffusers(self, lora: ValidatedLora) -> None:
        self.transformer.load_lora_adapter(dict(lora.state_dict), adapter_name=SLOT_ADAPTER, prefix=None,
                                           hotswap=True, metadata=lora.peft_metadata())

    def _swap_direct(self, lora: ValidatedLora) -> None:
        import torch

        sd: Mapping[str, Any] = lora.state_dict
        targets = set(lora.target_modules)
        with torch.no_grad():
            for m in self._dirty - targets:
                a_slot, b_slot = self._params[m]
                a_slot.zero_()
                b_slot.zero_()
            for m in lora.target_modules:
                a_slot, b_slot = self._params[m]
                a, b = sd[f"{m}.lora_A.weight"], sd[f"{m}.lora_B.weight"]
                r = a.shape[0]
                a_slot[:r].copy_(a, non_blocking=True)
                b_slot[:, :r].copy_(b, non_blocking=True)
                if r < a_slot.shape[0]:
                    a_slot[r:].zero_()
                    b_slot[:, r:].zero_()

    def pack(self, lora: ValidatedLora) -> tuple[tuple[tuple[str, ...], int], Any] | None:
        """``(layout, flat tensor)`` of ``lora`` in the slot's layout, or ``None`` when its modules or rank
        differ from the slot's (it then swaps in module by module).

        The flat tensor holds the canonical tensors (plus alignment padding of at most 64 elements per
        tensor), so a caller can keep only it (``unpack`` gives the state dict back as views); pinned
        on CUDA for an asynchronous copy.
        """
        import torch

        if (tuple(sorted(lora.target_modules)), lora.rank) != self.layout:
            return None
        flat = torch.empty(self._flat.numel(), dtype=self._flat.dtype)
        sd = lora.state_dict
        for m, (a_off, in_f, b_off, out_f) in self._offsets.items():
            flat[a_off:a_off + self.rank * in_f].view(self.rank, in_f).copy_(sd[f"{m}.lora_A.weight"])
            flat[b_off:b_off + out_f * self.rank].view(out_f, self.rank).copy_(sd[f"{m}.lora_B.weight"])
        if self._flat.device.type == "cuda":
            flat = flat.pin_memory()
        return self.layout, flat

    def unpack(self, packed: tuple[tuple[tuple[str, ...], int], Any]) -> dict[str, Any]:
        """The canonical state dict of a packed LoRA, as views into its flat tensor (valid while the layout holds)."""
        (order, rank), flat = packed
        if (order, rank) != self.layout:
            raise ValueError("unpack() needs the layout the LoRA was packed for")
        out = {}
        for m, (a_off, in_f, b_off, out_f) in self._offsets.items():
            out[f"{m}.lora_A.weight"] = flat[a_off:a_off + rank * in_f].view(rank, in_f)
            out[f"{m}.lora_B.weight"] = flat[b_off:b_off + out_f * rank].view(out_f, rank)
        return out

    def set_scale(self, scale: float) -> None:
        """Write ``scale`` into the slot's shared scaling tensor (skipped when it is already there)."""
        scale = float(scale)
        if self.scale == scale or self._scale_t is None:
            self.scale = scale if self._scale_t is not None else None
            return
        self._scale_t.fill_(scale)
        for layer in self._layers.values():  # PEFT's hotswap puts a tensor of its own in place of ours
            if layer.scaling[SLOT_ADAPTER] is not self._scale_t:
                layer.scaling[SLOT_ADAPTER] = self._scale_t
        self.scale = scale

    def slot_scales(self) -> set[float]:
        """The distinct scaling values the slot's layers hold now (a diagnostic for tests)."""
        return {float(layer.scaling[SLOT_ADAPTER]) for layer in self._layers.values()}

    def layers(self) -> list[Any]:
        return list(self._layers.values())

    def nbytes(self) -> int:
        """Bytes held by the slot's LoRA tensors."""
        return 0 if self._flat is None else self._flat.numel() * self._flat.element_size()

    # ------------------------------------------------------------------ attention processors

    def use_processors(self, which: str) -> None:
        """``"default"`` or ``"ip_adapter"`` attention processors (a no-op without an IP-Adapter)."""
        if self.ip_procs is None or which == self.processors:
            self.processors = which if self.ip_procs is not None else "default"
            return
        procs = self.ip_procs if which == "ip_adapter" else self.default_procs
        self.transformer.set_attn_processor(dict(procs))
        self.processors = which
