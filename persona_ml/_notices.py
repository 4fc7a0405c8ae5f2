"""Mute library notices that are not about the user's run (installed per logger, by message).

Every training run on this stack logs the same unrelated lines: transformers' notice that
torchvision is missing (the image processors fall back to PIL; Flux never uses them), diffusers'
"modules that should be kept in float32: []" on every ``.to(dtype)`` (the list is empty), torchao's
import-time failures to load CUDA-only kernels on a CPU build, its note about serialized torchao
tensors (we never load torchao checkpoints), and torch's deprecation of ``register_constant`` on
enums (raised by torchao's own imports). Each filter drops exactly its message on exactly the
logger that emits it; everything else those libraries log passes unchanged.

``install()`` is idempotent and cheap; the trainer and ``scripts/gpu_check.py`` call it.
"""

from __future__ import annotations

import logging
import re

# logger name -> message patterns to drop (re.search on the formatted message)
NOTICES: dict[str, tuple[str, ...]] = {
    "transformers.utils.import_utils": (r"requires torchvision \(not installed\); falling back to",),
    "diffusers.models.modeling_utils": (r"that should be kept in float32: \[\]",),
    "diffusers.quantizers.torchao.torchao_quantizer": (r"Unable to import `torchao` Tensor objects",),
    "torchao": (r"^Failed to load .*\.so",),
    "torch.utils._pytree": (r"is an Enum subclass and is now natively supported",),
}


class _DropNotices(logging.Filter):
    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (a record that cannot format is not ours to judge)
            return True
        return not any(p.search(message) for p in self.patterns)


def install() -> None:
    """Attach the filters (once) to the loggers in ``NOTICES``."""
    for name, patterns in NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices(patterns))
