"""Peak memory per phase of a training job (``TrainResult.memory``).

On CUDA the figure is ``torch.cuda.max_memory_allocated`` between the phase's start and end
(the peak counter is reset at each start). On CPU it is the process's peak resident set
(``VmHWM``), reset at each start through ``/proc/self/clear_refs`` (Linux); where that cannot be
reset the phase's peak is ``None`` (a process-wide high-water mark would credit an earlier phase's
peak to a later one). Each phase also records the bytes of the weights it held, counted from the
modules themselves, which is what the phase order changes and what tests assert.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


def module_bytes(*modules: Any) -> int:
    """Bytes of the parameters and buffers of ``modules`` (``None`` entries skipped, shared tensors once)."""
    seen: set[int] = set()
    total = 0
    for m in modules:
        if m is None:
            continue
        for t in list(m.parameters()) + list(m.buffers()):
            key = t.data_ptr() if t.device.type != "meta" else id(t)
            if key in seen:
                continue
            seen.add(key)
            total += _tensor_bytes(t)
    return total


def _tensor_bytes(t: Any) -> int:
    # torchao / bitsandbytes weights are tensor subclasses: count their packed storage
    inner = [getattr(t, name) for name in ("qdata", "int_data", "data_int8") if hasattr(t, name)]
    if inner and hasattr(inner[0], "element_size"):
        extra = sum(x.numel() * x.element_size() for x in (getattr(t, n, None) for n in ("scale", "zero_point"))
                    if x is not None and hasattr(x, "element_size"))
        return int(inner[0].numel() * inner[0].element_size() + extra)
    return int(t.numel() * t.element_size())


def _read_hwm() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class PhaseMemory:
    """Records each phase's peak and weight bytes.

    Args:
        device: the job's device (``cuda`` phases read CUDA counters, others the process RSS).
    """

    device: Any
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    _current: str | None = None
    _resettable: bool = True

    def _cuda(self) -> bool:
        return str(self.device).startswith("cuda")

    def start(self, phase: str) -> None:
        self._current = phase
        if self._cuda():
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._resettable = _reset_hwm()

    def stop(self, phase: str, *modules: Any) -> dict[str, Any]:
        """End ``phase``; ``modules`` are the weights it held (for ``weights_bytes``)."""
        if self._cuda():
            import torch

            torch.cuda.synchronize(self.device)
            peak = int(torch.cuda.max_memory_allocated(self.device))
            kind = "cuda_max_allocated"
        else:
            peak = _read_hwm() if self._resettable else None
            kind = "process_peak_rss"
        record = {"peak_bytes": peak, "measure": kind, "weights_bytes": module_bytes(*modules)}
        self.phases[phase] = record
        self._current = None
        return record

    def to_dict(self) -> dict[str, Any]:
        """``{phase: {...}, "peak_bytes": the largest phase peak (None if none measured)}``."""
        peaks = [p["peak_bytes"] for p in self.phases.values() if p["peak_bytes"] is not None]
        return {**{k: dict(v) for k, v in self.phases.items()}, "peak_bytes": max(peaks) if peaks else None,
                "peak_phase": max(self.phases, key=lambda k: self.phases[k]["peak_bytes"] or -1) if peaks else None}
