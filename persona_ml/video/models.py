"""Video base models from ``configs/base_models.yaml``: local folders (never downloaded) or tiny builders.

Example:
    >>> pipe, spec = load_video_model("ltx-2.5", dtype="bf16", device="cuda")   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)

_TINY = {"LTX2DFRPipeline": "build_tiny_ltx2_dfr_pipeline", "WanAnimatePipeline": "build_tiny_wan_animate_pipeline"}


def load_video_model(name: str, *, path: str | os.PathLike | None = None, dtype: str = "float32",
                     device: str = "cpu", config_path: str | os.PathLike | None = None) -> tuple[Any, Any]:
    """Load a video pipeline by name.

    Args:
        name: ``ltx-2.5``, ``wan2.2-animate``, ``tiny-ltx2``, ``tiny-wan-animate`` (or an alias).
        path: explicit model folder (overrides the environment variable and search paths).
        dtype: ``float32`` / ``bf16`` / ``fp16``.
        device: where the pipeline is moved.
        config_path: a base-models YAML (the packaged one by default).

    Returns:
        ``(pipeline, BaseModelSpec)``.

    Raises:
        ConfigError: unknown name (``base_model_unknown``), or the model is not a video model.
        ModelNotFoundError: no local folder (lists every place searched).
    """
    from ..models.base_models import _torch_dtype, resolve_base_model

    spec = resolve_base_model(name, path, config_path=config_path)
    if spec.pipeline not in _TINY:
        raise ConfigError(f"{spec.name} is not a video model (pipeline {spec.pipeline!r}); use one of "
                          "ltx-2.5, wan2.2-animate, tiny-ltx2, tiny-wan-animate", code="base_model_unknown",
                          field="base_model", value=name)
    torch_dtype = _torch_dtype(dtype)
    if spec.kind == "tiny_video":
        from . import testing

        pipe = getattr(testing, _TINY[spec.pipeline])(seed=spec.seed)
        if torch_dtype != _torch_dtype("float32"):
            pipe.to(dtype=torch_dtype)
        pipe.to(device)
        return pipe, spec
    import diffusers

    cls = getattr(diffusers, spec.pipeline)
    log.info("loading %s (%s) from %s", spec.name, spec.pipeline, spec.path)
    pipe = cls.from_pretrained(str(spec.path), torch_dtype=torch_dtype, local_files_only=True)
    pipe.to(device)
    return pipe, spec
