"""LoRA key formats for ``FluxTransformer2DModel``: PEFT/diffusers <-> kohya/ComfyUI (BFL layout).

A LoRA here is a set of ``ModuleLora(A, B, scale)`` keyed by the diffusers module path
(``transformer_blocks.0.attn.to_q``); its effective weight change is ``scale * B @ A``.

The kohya file uses the original Black Forest Labs module layout, where several diffusers
modules are one fused linear: ``double_blocks_N_img_attn_qkv`` = to_q|to_k|to_v,
``double_blocks_N_txt_attn_qkv`` = add_q_proj|add_k_proj|add_v_proj and ``single_blocks_N_linear1``
= to_q|to_k|to_v|proj_mlp. A fused LoRA concatenates the parts' A matrices (rank n x r) and places
their B matrices block-diagonally, so ``B_fused @ A_fused`` is exactly the stack of the parts'
deltas; a part that was not trained is a zero block. This is the layout diffusers' converter
(``lora_conversion_utils._convert_kohya_flux_lora_to_diffusers``) recognises as "sparse" and
splits back into the original rank-r parts.

Known limits of diffusers 0.42's converter, not of the file:

* it hard-codes FLUX.1's widths (3072, 12288) for ``single_blocks_N_linear1``, so a kohya file of
  a narrower model (tiny-flux) with single-block q/k/v/mlp LoRAs loads in kohya/ComfyUI terms but
  not through diffusers;
* it converts the top-level modules (``img_in``, ``txt_in``, ``time_in``, ``guidance_in``,
  ``vector_in``, ``final_layer``) to keys without the ``transformer.`` prefix, which
  ``load_lora_weights`` then drops silently; LoRAs on those modules are refused at export
  (``lora_module_unmappable``) rather than written into a file that loses them.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from persona_ml.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "ModuleLora",
    "kohya_name",
    "lora_target_modules",
    "extract_peft_lora",
    "lora_from_state_dict",
    "to_diffusers_state_dict",
    "to_kohya_state_dict",
    "kohya_layout",
    "KohyaLayout",
    "kohya_to_module_loras",
]

# Attention projections of the double-stream blocks (image and text streams) and of the
# single-stream blocks. In a single block the attention output projection is fused with the MLP
# output into ``proj_out`` (kohya ``linear2``), so that is where its LoRA goes.
DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "transformer_blocks.*.attn.to_q",
    "transformer_blocks.*.attn.to_k",
    "transformer_blocks.*.attn.to_v",
    "transformer_blocks.*.attn.to_out.0",
    "transformer_blocks.*.attn.add_q_proj",
    "transformer_blocks.*.attn.add_k_proj",
    "transformer_blocks.*.attn.add_v_proj",
    "transformer_blocks.*.attn.to_add_out",
    "single_transformer_blocks.*.attn.to_q",
    "single_transformer_blocks.*.attn.to_k",
    "single_transformer_blocks.*.attn.to_v",
    "single_transformer_blocks.*.proj_out",
)

# diffusers sub-path in a block -> (kohya suffix, part index, number of parts)
_DOUBLE = {
    "attn.to_q": ("img_attn_qkv", 0, 3),
    "attn.to_k": ("img_attn_qkv", 1, 3),
    "attn.to_v": ("img_attn_qkv", 2, 3),
    "attn.to_out.0": ("img_attn_proj", 0, 1),
    "attn.add_q_proj": ("txt_attn_qkv", 0, 3),
    "attn.add_k_proj": ("txt_attn_qkv", 1, 3),
    "attn.add_v_proj": ("txt_attn_qkv", 2, 3),
    "attn.to_add_out": ("txt_attn_proj", 0, 1),
    "ff.net.0.proj": ("img_mlp_0", 0, 1),
    "ff.net.2": ("img_mlp_2", 0, 1),
    "ff_context.net.0.proj": ("txt_mlp_0", 0, 1),
    "ff_context.net.2": ("txt_mlp_2", 0, 1),
    "norm1.linear": ("img_mod_lin", 0, 1),
    "norm1_context.linear": ("txt_mod_lin", 0, 1),
}
_SINGLE = {
    "attn.to_q": ("linear1", 0, 4),
    "attn.to_k": ("linear1", 1, 4),
    "attn.to_v": ("linear1", 2, 4),
    "proj_mlp": ("linear1", 3, 4),
    "proj_out": ("linear2", 0, 1),
    "norm.linear": ("modulation_lin", 0, 1),
}
_TOP = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in_in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in_out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in_in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in_out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in_in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in_out_layer",
    "proj_out": "final_layer_linear",
    "norm_out.linear": "final_layer_adaLN_modulation_1",
}
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class ModuleLora:
    """One adapted linear: its weight changes by ``scale * B @ A``.

    Attributes:
        A: ``lora_A`` / ``lora_down``, shape (rank, in_features).
        B: ``lora_B`` / ``lora_up``, shape (out_features, rank).
        scale: the multiplier (``alpha / rank`` in PEFT and kohya).
    """

    A: torch.Tensor
    B: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def delta(self) -> torch.Tensor:
        """The dense weight change ``scale * B @ A`` in float32."""
        return self.scale * (self.B.float() @ self.A.float())


_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "base_model.model.")


def _strip_wrappers(name: str) -> str:
    """Drop DDP (``module.``), torch.compile (``_orig_mod.``) and PeftModel prefixes."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def kohya_name(module: str) -> tuple[str, int, int]:
    """Map a diffusers module path to ``(kohya module name, part index, parts)``.

    Args:
        module: e.g. ``"single_transformer_blocks.3.attn.to_k"``.

    Returns:
        e.g. ``("lora_unet_single_blocks_3_linear1", 1, 4)``.

    Raises:
        ArtifactError: (``code="lora_module_unmappable"``) no kohya/BFL equivalent exists.
    """
    m = _BLOCK.match(module)
    if m:
        kind, idx, rest = m.groups()
        table, prefix = (_DOUBLE, "double_blocks") if kind == "transformer_blocks" else (_SINGLE, "single_blocks")
        if rest in table:
            suffix, part, parts = table[rest]
            return f"lora_unet_{prefix}_{idx}_{suffix}", part, parts
    elif module in _TOP:
        raise ArtifactError(
            f"LoRA on top-level module {module!r} (kohya lora_unet_{_TOP[module]}) is not exported: diffusers 0.42 "
            "converts it without the 'transformer.' prefix and load_lora_weights then drops it silently; "
            "adapt only linears of the double/single blocks",
            code="lora_module_unmappable",
            field="module",
            value=module,
        )
    raise ArtifactError(
        f"LoRA on module {module!r} has no kohya/ComfyUI (BFL layout) equivalent; "
        "adapt only linears of the double/single blocks or the embedders",
        code="lora_module_unmappable",
        field="module",
        value=module,
    )


def lora_target_modules(transformer, targets: Iterable[str] = DEFAULT_LORA_TARGETS, *,
                        check_exportable: bool = True) -> list[str]:
    """Resolve target patterns to the full names of the transformer's linear modules.

    A target with ``*`` is a glob over full module paths (``transformer_blocks.*.attn.to_q`` does
    not match ``single_transformer_blocks.0.attn.to_q``); one without is a suffix matched at a
    ``.`` boundary, as PEFT does (``attn.to_q`` matches both block kinds). Passing the returned
    names to ``LoraConfig(target_modules=...)`` adapts exactly these modules.

    Args:
        transformer: a ``FluxTransformer2DModel`` (PEFT-wrapped or not).
        targets: patterns; ``DEFAULT_LORA_TARGETS`` by default.
        check_exportable: also require every match to map to the kohya layout, so a bad target
            fails before training rather than at export.

    Returns:
        Sorted full module names.

    Raises:
        ConfigError: a target matches no linear module (``code="lora_target_unmatched"``), or
            (with ``check_exportable``) matches one that cannot be exported
            (``code="lora_module_unmappable"``).
    """
    import torch

    targets = list(targets)
    names = []
    for name, module in transformer.named_modules():
        if not name or ".lora_" in name or name.endswith("base_layer") or ".base_layer" in name:
            continue
        base = getattr(module, "base_layer", module)
        if isinstance(base, torch.nn.Linear):
            names.append(name)
    chosen: set[str] = set()
    for target in targets:
        if "*" in target or "?" in target or "[" in target:
            hits = [n for n in names if fnmatch.fnmatchcase(n, target)]
        else:
            hits = [n for n in names if n == target or n.endswith("." + target)]
        if not hits:
            raise ConfigError(
                f"LoRA target {target!r} matches no linear module of the transformer",
                code="lora_target_unmatched",
                field="lora.targets",
                value=target,
            )
        chosen.update(hits)
    if check_exportable:
        for name in sorted(chosen):
            try:
                kohya_name(_strip_wrappers(name))
            except ArtifactError as exc:
                raise ConfigError(exc.message, code="lora_module_unmappable", field="lora.targets", value=name) from exc
    return sorted(chosen)


def extract_peft_lora(transformer, adapter_name: str | None = None) -> dict[str, ModuleLora]:
    """Read every LoRA layer of a PEFT-wrapped transformer (weights detached, on CPU).

    Args:
        transformer: a model with PEFT LoRA layers (``add_adapter`` or ``get_peft_model``).
        adapter_name: which adapter; the only one when ``None``.

    Returns:
        ``{module path: ModuleLora}`` with the live per-module scale (covers rsLoRA and
        ``alpha_pattern``).

    Raises:
        ArtifactError: no LoRA layer found (``lora_empty``), several adapters and none named
            (``lora_adapter_ambiguous``), or DoRA (``lora_format_unsupported``).
    """
    out: dict[str, ModuleLora] = {}
    for name, module in transformer.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or not hasattr(lora_a, "keys") or not len(lora_a):
            continue
        adapters = sorted(lora_a.keys())
        adapter = adapter_name
        if adapter is None:
            if len(adapters) > 1:
                raise ArtifactError(f"{name} has adapters {adapters}; pass adapter_name",
                                    code="lora_adapter_ambiguous", field="adapter_name", value=adapters)
            adapter = adapters[0]
        if adapter not in lora_a:
            continue
        if getattr(module, "use_dora", {}).get(adapter, False):
            raise ArtifactError(f"{name}: DoRA adapters cannot be exported as plain LoRA",
                                code="lora_format_unsupported", field="module", value=name)
        out[_strip_wrappers(name)] = ModuleLora(
            A=lora_a[adapter].weight.detach().to("cpu").contiguous().clone(),
            B=module.lora_B[adapter].weight.detach().to("cpu").contiguous().clone(),
            scale=float(module.scaling[adapter]),
        )
    if not out:
        raise ArtifactError("the transformer has no LoRA layers to export", code="lora_empty",
                            field="transformer", value=type(transformer).__name__)
    return out


def lora_from_state_dict(state_dict: Mapping[str, torch.Tensor], alpha: float) -> dict[str, ModuleLora]:
    """Group a PEFT/diffusers LoRA state dict into modules with ``scale = alpha / rank``.

    Args:
        state_dict: keys ``[transformer.]<module>.lora_A.weight`` / ``lora_B.weight``
            (``lora_A.default.weight`` is accepted too).
        alpha: the LoRA alpha used in training.

    Returns:
        ``{module path: ModuleLora}``.

    Raises:
        ArtifactError: a key of another form, or an A without its B (``lora_keys_invalid``).
    """
    pat = re.compile(r"^(?:transformer\.)?(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        m = pat.match(key)
        if not m:
            raise ArtifactError(f"not a PEFT LoRA key: {key!r}", code="lora_keys_invalid", field="key", value=key)
        parts.setdefault(m.group(1), {})[m.group(2)] = value
    out = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise ArtifactError(f"{module}: lora_A and lora_B must both be present", code="lora_keys_invalid",
                                field="module", value=module)
        A, B = ab["A"].detach().cpu(), ab["B"].detach().cpu()
        out[module] = ModuleLora(A=A, B=B, scale=float(alpha) / A.shape[0])
    if not out:
        raise ArtifactError("the LoRA state dict is empty", code="lora_empty", field="state_dict", value=0)
    return out


def to_diffusers_state_dict(loras: Mapping[str, ModuleLora]) -> tuple[dict[str, torch.Tensor], dict]:
    """PEFT/diffusers keys with each module's scale folded into ``lora_B``, and the matching ``LoraConfig``.

    Loaders that ignore the header (ComfyUI applies a ``transformer.<module>.lora_A/B`` pair at
    scale 1 when no ``.alpha`` tensor is present, ``comfy/lora.py``) and loaders that read it
    (diffusers 0.42 rebuilds the ``LoraConfig`` from ``lora_adapter_metadata``) must apply the
    same weight change, so ``scale`` is folded into ``lora_B`` (in float32, then cast back) and the
    config says ``lora_alpha == r`` for every module: ``scale * B @ A == (scale * B) @ A * r / r``.

    Returns:
        ``(state_dict, lora_config_kwargs)``: keys ``transformer.<module>.lora_A.weight`` /
        ``lora_B.weight`` and the kwargs of ``lora_adapter_metadata`` (``r``, ``lora_alpha``,
        ``rank_pattern``, ``alpha_pattern``...), without rsLoRA, so ``scaling = lora_alpha / r = 1``.
    """
    sd: dict[str, torch.Tensor] = {}
    for module, lora in sorted(loras.items()):
        sd[f"transformer.{module}.lora_A.weight"] = lora.A.contiguous()
        sd[f"transformer.{module}.lora_B.weight"] = _scaled(lora.B, lora.scale)
    ranks = {m: lo.rank for m, lo in loras.items()}
    r = max(set(ranks.values()), key=lambda v: (list(ranks.values()).count(v), v))
    # PEFT matches pattern keys as regexes (``(.*\.)?(key)$``); escape the dots.
    rank_pattern = {re.escape(m): v for m, v in sorted(ranks.items()) if v != r}
    config = {
        "r": r,
        "lora_alpha": float(r),
        "target_modules": sorted(loras),
        "rank_pattern": rank_pattern,
        "alpha_pattern": {k: float(v) for k, v in rank_pattern.items()},
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
    }
    return sd, config


def _scaled(t: torch.Tensor, factor: float) -> torch.Tensor:
    """``t * factor`` computed in float32 and stored in ``t``'s dtype (``t`` itself when factor is 1)."""
    if factor == 1.0:
        return t.contiguous()
    return (t.float() * factor).to(t.dtype).contiguous()


@dataclass(frozen=True)
class KohyaLayout:
    """What ``to_kohya_state_dict`` wrote, for the file's kohya header.

    Attributes:
        network_dim: the base rank (the most common per-part rank): ``ss_network_dim``.
        network_alpha: the one alpha every module carries: ``ss_network_alpha``.
        dims: kohya module name -> its real rank (``lora_down`` rows; 3x / 4x the part rank for
            the fused qkv / linear1 modules).
        reg_dims: ``network_reg_dims`` entries (regex -> rank) for modules whose rank is not
            ``network_dim``; the value of kohya's ``--network_args network_reg_dims=...``.
    """

    network_dim: int
    network_alpha: float
    dims: dict[str, int]
    reg_dims: dict[str, int]

    def network_reg_dims(self) -> str:
        """kohya's ``network_reg_dims`` argument: ``"regex=dim,regex=dim"`` (empty when all ranks agree)."""
        return ",".join(f"{k}={v}" for k, v in self.reg_dims.items())


def to_kohya_state_dict(loras: Mapping[str, ModuleLora], *, mlp_ratio: float = 4.0) -> dict[str, torch.Tensor]:
    """kohya/ComfyUI keys in the BFL layout (see ``kohya_layout`` for the header it implies)."""
    return kohya_layout(loras, mlp_ratio=mlp_ratio)[0]


def kohya_layout(loras: Mapping[str, ModuleLora], *, mlp_ratio: float = 4.0
                 ) -> tuple[dict[str, torch.Tensor], KohyaLayout]:
    """kohya/ComfyUI keys in the BFL layout with one ``.alpha`` for every module.

    Fused modules (qkv, single-block linear1) get the parts' A matrices stacked and their B
    matrices block-diagonal (kohya's ``split_qkv`` layout, ``networks/lora_flux.py``); missing
    parts are zero blocks of the same rank (the single block's ``proj_mlp`` has ``mlp_ratio`` x
    the hidden width).

    Every module carries the same ``.alpha`` (``network_alpha`` = base rank x base scale). The
    loaders divide it by the module's own rank (``lora_down`` rows): ComfyUI
    (``comfy/lora.py``: ``alpha / mat2.shape[0]``), kohya's ``create_network_from_weights`` and
    diffusers' converter. Whatever a module's rank or its parts' scales, the factor that makes
    ``alpha / rank * up @ down`` equal the trained change is folded into its ``lora_up``, so
    unfused modules keep their weights as trained and fused ones get their parts' count folded
    in. One alpha is also what kohya's resume path needs: ``create_network`` gives every module
    ``network_alpha`` and the rank from ``network_dim`` or ``network_reg_dims``.

    Args:
        loras: ``{diffusers module path: ModuleLora}``.
        mlp_ratio: FLUX's single-block MLP ratio (4.0), to size a missing ``proj_mlp`` part.

    Returns:
        ``({"lora_unet_...lora_down.weight" | ".lora_up.weight" | ".alpha": tensor}, KohyaLayout)``.

    Raises:
        ArtifactError: a module has no kohya equivalent (``lora_module_unmappable``).
    """
    import torch

    groups: dict[str, dict[int, tuple[str, ModuleLora]]] = {}
    n_parts: dict[str, int] = {}
    for module, lora in sorted(loras.items()):
        name, part, parts = kohya_name(module)
        groups.setdefault(name, {})[part] = (module, lora)
        n_parts[name] = parts
    pairs = [(lo.rank, lo.scale) for lo in loras.values()]
    base_rank, base_scale = max(set(pairs), key=lambda v: (pairs.count(v), v))
    alpha = float(base_rank) * base_scale

    out: dict[str, torch.Tensor] = {}
    dims: dict[str, int] = {}
    for name, members in sorted(groups.items()):
        parts = n_parts[name]
        loras_in = [lo for _, lo in members.values()]
        dtype = loras_in[0].A.dtype
        in_features = loras_in[0].A.shape[1]
        if parts == 1:
            lora = loras_in[0]
            dim = lora.rank
            out[f"{name}.lora_down.weight"] = lora.A.contiguous()
            out[f"{name}.lora_up.weight"] = _scaled(lora.B, lora.scale * dim / alpha)
        else:
            rank = max(lo.rank for lo in loras_in)
            dim = parts * rank
            attn = [lo for m, lo in members.values() if not m.endswith("proj_mlp")]
            hidden = attn[0].B.shape[0] if attn else int(round(loras_in[0].B.shape[0] / mlp_ratio))
            out_dims = []
            for p in range(parts):
                if p in members:
                    out_dims.append(members[p][1].B.shape[0])
                else:
                    out_dims.append(int(hidden * mlp_ratio) if (parts == 4 and p == 3) else hidden)
            down = torch.zeros(dim, in_features, dtype=dtype)
            up = torch.zeros(sum(out_dims), dim, dtype=dtype)
            row = 0
            for p in range(parts):
                if p in members:
                    lo = members[p][1]
                    down[p * rank:p * rank + lo.rank] = lo.A
                    up[row:row + out_dims[p], p * rank:p * rank + lo.rank] = _scaled(lo.B, lo.scale * dim / alpha)
                row += out_dims[p]
            out[f"{name}.lora_down.weight"] = down
            out[f"{name}.lora_up.weight"] = up
        out[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
        dims[name] = dim
    return out, KohyaLayout(network_dim=base_rank, network_alpha=alpha, dims=dims, reg_dims=_reg_dims(dims, base_rank))


def _reg_dims(dims: Mapping[str, int], base: int) -> dict[str, int]:
    """``network_reg_dims`` regexes for the modules whose rank is not ``base``.

    kohya matches each with ``re.search`` against the module name and takes the first hit; a
    module kind whose every instance has one rank gets one pattern (``_img_attn_qkv$``), others
    are named one by one.
    """
    kinds: dict[str, set[int]] = {}
    for name, dim in dims.items():
        kinds.setdefault(_KOHYA_KIND.sub("", name), set()).add(dim)
    out: dict[str, int] = {}
    for name, dim in sorted(dims.items()):
        if dim == base:
            continue
        kind = _KOHYA_KIND.sub("", name)
        block = "double" if "_double_blocks_" in name else "single"
        if len(kinds[kind]) == 1:
            out[f"{block}_blocks_\\d+_{kind}$"] = dim
        else:
            out[f"^{name}$"] = dim
    return out


_KOHYA_KIND = re.compile(r"^lora_unet_(double|single)_blocks_\d+_")


def kohya_to_module_loras(state_dict: Mapping[str, torch.Tensor]) -> dict[str, ModuleLora]:
    """Convert a kohya/ComfyUI Flux LoRA with diffusers' own converter (no model needed).

    Args:
        state_dict: kohya keys (``lora_unet_...``) or a path-free dict read from a file.

    Returns:
        ``{diffusers module path: ModuleLora}`` as diffusers would load it (scale 1: diffusers
        folds kohya's alpha into the weights).

    Raises:
        ArtifactError: diffusers cannot convert it (``lora_format_unknown``).
    """
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    try:
        converted = _convert_kohya_flux_lora_to_diffusers(dict(state_dict))
    except (ValueError, AssertionError, KeyError, RuntimeError) as exc:
        raise ArtifactError(f"diffusers cannot convert this kohya LoRA: {exc}", code="lora_format_unknown",
                            field="state_dict", value=str(exc)[:200]) from exc
    # load_lora_weights keeps only "transformer."-prefixed keys; mirror it so a drop shows up here
    dropped = sorted(k for k in converted if not k.startswith("transformer."))
    if dropped:
        log.warning("diffusers' converter left %d key(s) that load_lora_weights ignores: %s", len(dropped), dropped[:4])
    kept = {k: v for k, v in converted.items() if k.startswith("transformer.")}
    # diffusers folds kohya's alpha into the weights, so each module's scale is 1
    return {m: ModuleLora(lo.A, lo.B, 1.0) for m, lo in lora_from_state_dict(kept, alpha=1.0).items()}
