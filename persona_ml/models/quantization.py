"""Quantized Flux transformers for LoRA training, through diffusers' own quantization configs.

A scheme is a string (``TrainConfig.quantization``):

==================== ============== ===================================== =========================
scheme               backend        transformer weights (FLUX.1-dev)      runs on
==================== ============== ===================================== =========================
``none``             -              bf16, 23.8 GB                          CPU, CUDA
``int8-weight-only`` torchao        int8, ~12 GB                           CPU, CUDA
``nf4``              bitsandbytes   4-bit NormalFloat (QLoRA), ~6.7 GB     CUDA only
==================== ============== ===================================== =========================

Why these two: they are the quantized layers peft trains LoRA on (``peft.tuners.lora.torchao``
``TorchaoLoraLinear``, int8 weights only; ``peft.tuners.lora.bnb`` ``Linear4bit``, the QLoRA
path) *and* diffusers loads them with ``FluxTransformer2DModel.from_pretrained(...,
quantization_config=...)`` (``TorchAoConfig``, ``BitsAndBytesConfig``). optimum-quanto (what
ai-toolkit uses for fp8) has a diffusers config but no peft LoRA layer, and torchao's float8 /
int4 weights are outside what peft's torchao layer supports (its own check refuses int4). The
LoRA parameters stay fp32 on top of the frozen quantized base and export exactly as on a bf16
base (the LoRA is a change to the bf16 weights; it is applied to an unquantized base at
inference).

diffusers' bitsandbytes quantizer refuses to run without a GPU, so ``nf4`` is tested only on
GPUs (``tests/gpu``); ``int8-weight-only`` is tested on CPU with a quantized tiny-flux.
"""

from __future__ import annotations

from typing import Any

from persona_ml.errors import BackendUnavailableError, ConfigError

SCHEMES = ("none", "int8-weight-only", "nf4")
BACKENDS = {"int8-weight-only": "torchao", "nf4": "bitsandbytes"}

__all__ = ["SCHEMES", "BACKENDS", "quantization_config", "check_scheme", "is_quantized"]


def check_scheme(scheme: str, device_type: str | None = None) -> None:
    """Refuse an unknown scheme, or one the device cannot run, before any weight is read.

    Raises:
        ConfigError: unknown scheme (``config_invalid``).
        BackendUnavailableError: the backend package is not installed, or ``nf4`` without CUDA.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"quantization must be one of {list(SCHEMES)}, got {scheme!r}", field="quantization",
                          value=scheme)
    if scheme == "none":
        return
    backend = BACKENDS[scheme]
    import importlib.util

    if importlib.util.find_spec(backend) is None:
        extra = "gpu" if backend == "bitsandbytes" else "quant"
        raise BackendUnavailableError(f"quantization {scheme!r} needs {backend}: pip install 'persona-ml[{extra}]'",
                                      package=backend, field="quantization", value=scheme)
    if scheme == "nf4" and device_type is not None and device_type != "cuda":
        raise BackendUnavailableError("quantization 'nf4' (bitsandbytes) needs a CUDA device; use "
                                      "'int8-weight-only' on CPU", code="provider_unavailable",
                                      field="quantization", value=scheme, device=device_type)


def quantization_config(scheme: str, compute_dtype: Any) -> Any:
    """The diffusers ``quantization_config`` for ``scheme`` (``None`` for ``"none"``).

    Args:
        scheme: one of ``SCHEMES``.
        compute_dtype: the dtype matmuls run in (the job's precision, e.g. ``torch.bfloat16``).
    """
    check_scheme(scheme)
    if scheme == "none":
        return None
    if scheme == "int8-weight-only":
        from diffusers import TorchAoConfig
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    from diffusers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def is_quantized(model: Any) -> bool:
    """Whether a diffusers model was loaded with a quantization config."""
    return getattr(model, "hf_quantizer", None) is not None or bool(getattr(model, "is_quantized", False))
