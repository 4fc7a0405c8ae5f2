"""A tiny FLUX.1-dev stand-in built fully offline with seeded random weights.

It keeps every structural switch of the real model (see ``shared/FLUX_FACTS.md``): a
``FluxTransformer2DModel`` with 64 input channels (16 latent channels packed 2x2) and a guidance
embedding, an 8x ``AutoencoderKL`` with 16 latent channels, the dev scaling/shift factors and no
quant convs, a CLIP text tower whose pooled output feeds ``pooled_projection_dim``, a T5 encoder
whose sequence feeds ``joint_attention_dim``, both tokenizers built in code, and the dev
flow-matching scheduler. Only the widths and depths are small, so code that trains, exports and
generates with it behaves the same on a GPU worker with the real files.

Same seed and config give identical weights and identical tokenizer files; no file or network
is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from persona_ml.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from diffusers import FluxPipeline

__all__ = ["TinyFluxConfig", "build_tiny_flux_pipeline", "build_tiny_tokenizers", "tiny_flux_fingerprint"]

# Real FLUX.1-dev VAE and scheduler settings (FLUX_FACTS.md); the tiny model copies them verbatim.
FLUX_VAE_SCALING_FACTOR = 0.3611
FLUX_VAE_SHIFT_FACTOR = 0.1159
FLUX_LATENT_CHANNELS = 16
FLUX_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}

# Words the tokenizers learn whole; anything else falls back to characters (T5) or bytes (CLIP),
# so arbitrary prompts, trigger words included, always tokenize.
_CORPUS = (
    "a photo of a person portrait close up face smiling woman man standing in the city at night "
    "sitting on a chair wearing a red jacket blue shirt black dress white hat glasses looking at the camera "
    "studio lighting soft light golden hour outdoors indoors park beach street cafe kitchen office "
    "half body full body group of friends people with and the of in on at to by from high quality "
    "detailed sharp photograph cinematic natural background bokeh ohwx sks character trigger"
)


@dataclass(frozen=True)
class TinyFluxConfig:
    """Sizes of the tiny stand-in. Every structural switch stays the real one.

    Attributes:
        num_layers: double-stream transformer blocks (19 in FLUX.1).
        num_single_layers: single-stream blocks (38 in FLUX.1).
        attention_head_dim: per-head width; must equal ``sum(axes_dims_rope)``.
        num_attention_heads: heads; hidden size is heads x head dim.
        axes_dims_rope: rotary dims for (text/id, y, x); each even.
        clip_hidden_size: CLIP text width = the transformer's ``pooled_projection_dim``.
        clip_layers, clip_heads, clip_intermediate_size: CLIP text tower depth and widths.
        t5_d_model: T5 width = the transformer's ``joint_attention_dim``.
        t5_layers, t5_heads, t5_d_kv, t5_d_ff: T5 encoder depth and widths.
        vae_block_out_channels: 4 entries -> 8x downsampling, as the real VAE.
        vae_layers_per_block, vae_norm_num_groups: VAE depth and group-norm groups.
        bpe_merges: how many CLIP BPE merges to learn from the built-in corpus.
    """

    num_layers: int = 2
    num_single_layers: int = 2
    attention_head_dim: int = 16
    num_attention_heads: int = 2
    axes_dims_rope: tuple[int, int, int] = (4, 6, 6)
    clip_hidden_size: int = 32
    clip_layers: int = 2
    clip_heads: int = 2
    clip_intermediate_size: int = 64
    t5_d_model: int = 32
    t5_layers: int = 2
    t5_heads: int = 2
    t5_d_kv: int = 16
    t5_d_ff: int = 64
    vae_block_out_channels: tuple[int, int, int, int] = (8, 16, 16, 16)
    vae_layers_per_block: int = 1
    vae_norm_num_groups: int = 4
    bpe_merges: int = 200

    def __post_init__(self) -> None:
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ConfigError(
                "axes_dims_rope must sum to attention_head_dim",
                field="axes_dims_rope",
                value=list(self.axes_dims_rope),
                attention_head_dim=self.attention_head_dim,
            )
        if any(d % 2 for d in self.axes_dims_rope):
            raise ConfigError("axes_dims_rope entries must be even", field="axes_dims_rope", value=list(self.axes_dims_rope))
        if len(self.vae_block_out_channels) != 4:
            raise ConfigError(
                "vae_block_out_channels needs 4 entries (8x downsampling, as FLUX.1's VAE)",
                field="vae_block_out_channels",
                value=list(self.vae_block_out_channels),
            )
        if any(c % self.vae_norm_num_groups for c in self.vae_block_out_channels):
            raise ConfigError(
                "vae_norm_num_groups must divide every VAE channel count",
                field="vae_norm_num_groups",
                value=self.vae_norm_num_groups,
            )
        for name in ("num_layers", "num_single_layers", "num_attention_heads", "clip_layers", "t5_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1", field=name, value=getattr(self, name))

    @property
    def hidden_size(self) -> int:
        """Transformer width (3072 in FLUX.1)."""
        return self.attention_head_dim * self.num_attention_heads

    @classmethod
    def cpu_large(cls) -> TinyFluxConfig:
        """A larger CPU-sized config for benchmarks (about 30M transformer parameters)."""
        return cls(
            num_layers=4,
            num_single_layers=8,
            attention_head_dim=64,
            num_attention_heads=4,
            axes_dims_rope=(8, 28, 28),
            clip_hidden_size=128,
            clip_layers=2,
            clip_heads=4,
            clip_intermediate_size=256,
            t5_d_model=128,
            t5_layers=2,
            t5_heads=4,
            t5_d_kv=32,
            t5_d_ff=256,
            vae_block_out_channels=(16, 32, 32, 32),
            vae_layers_per_block=1,
            vae_norm_num_groups=8,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TinyFluxConfig:
        """Strict constructor: unknown keys raise ``ConfigError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown tiny-flux config key(s): {unknown}", field=unknown[0], value=data[unknown[0]])
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------------- tokenizers


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode map (the byte-level alphabet of CLIP's BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _learn_bpe(words: list[str], n_merges: int) -> list[tuple[str, str]]:
    """Plain BPE on ``words`` (lowercase ASCII), ties broken by the pair itself: deterministic."""
    counts = Counter(words)
    vocab = {tuple(w[:-1]) + (w[-1] + "</w>",): c for w, c in counts.items()}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for sym, c in vocab.items():
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        new_vocab = {}
        for sym, c in vocab.items():
            out: list[str] = []
            i = 0
            while i < len(sym):
                if i < len(sym) - 1 and (sym[i], sym[i + 1]) == best:
                    out.append(sym[i] + sym[i + 1])
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            new_vocab[tuple(out)] = c
        vocab = new_vocab
    return merges


def _clip_tokenizer(n_merges: int):
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges = _learn_bpe(_CORPUS.split(), n_merges)
    for a, b in merges:
        tokens.append(a + b)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for tok in tokens:
        vocab.setdefault(tok, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[(a, b) for a, b in merges], model_max_length=77)


def _t5_tokenizer():
    from transformers import T5TokenizerFast

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    seen = {p for p, _ in pieces}
    for word in sorted(set(_CORPUS.split())):
        for piece in ("▁" + word, word):
            if piece not in seen:
                pieces.append((piece, -2.0 - 0.01 * len(pieces)))
                seen.add(piece)
    # Every printable ASCII char, alone and word-initial, so no prompt falls to <unk>.
    for code in range(33, 127):
        for piece in (chr(code), "▁" + chr(code)):
            if piece not in seen:
                pieces.append((piece, -10.0))
                seen.add(piece)
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def build_tiny_tokenizers(config: TinyFluxConfig | None = None):
    """Build the (CLIP, T5) tokenizer pair of the tiny model offline.

    Args:
        config: sizes; only ``bpe_merges`` matters here.

    Returns:
        ``(CLIPTokenizer, T5TokenizerFast)``; both tokenize any prompt.
    """
    config = config or TinyFluxConfig()
    return _clip_tokenizer(config.bpe_merges), _t5_tokenizer()


# --------------------------------------------------------------------------- pipeline


def build_tiny_flux_pipeline(
    seed: int = 0,
    config: TinyFluxConfig | None = None,
    dtype: torch.dtype | None = None,
) -> FluxPipeline:
    """Build a tiny ``FluxPipeline`` with seeded random weights, offline, in about a second.

    The global torch RNG is left untouched (weights come from a forked RNG seeded with ``seed``).

    Args:
        seed: weight seed; the same seed and config give bitwise-identical weights.
        config: sizes (``TinyFluxConfig()`` by default; ``TinyFluxConfig.cpu_large()`` for benchmarks).
        dtype: parameter dtype of every component (float32 by default).

    Returns:
        A ``diffusers.FluxPipeline`` on CPU, ready for ``pipe(prompt, height=64, width=64,
        num_inference_steps=2, guidance_scale=3.5)`` and ``save_pretrained``.

    Raises:
        ConfigError: ``config`` is inconsistent.

    Example:
        >>> pipe = build_tiny_flux_pipeline(seed=0)
        >>> image = pipe("ohwx person", height=64, width=64, num_inference_steps=2).images[0]
    """
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    config = config or TinyFluxConfig()
    dtype = dtype or torch.float32
    clip_tok, t5_tok = build_tiny_tokenizers(config)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=FLUX_LATENT_CHANNELS * 4,
            num_layers=config.num_layers,
            num_single_layers=config.num_single_layers,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
            joint_attention_dim=config.t5_d_model,
            pooled_projection_dim=config.clip_hidden_size,
            guidance_embeds=True,
            axes_dims_rope=tuple(config.axes_dims_rope),
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=tuple(config.vae_block_out_channels),
            layers_per_block=config.vae_layers_per_block,
            latent_channels=FLUX_LATENT_CHANNELS,
            norm_num_groups=config.vae_norm_num_groups,
            sample_size=64,
            scaling_factor=FLUX_VAE_SCALING_FACTOR,
            shift_factor=FLUX_VAE_SHIFT_FACTOR,
            use_quant_conv=False,
            use_post_quant_conv=False,
            mid_block_add_attention=True,
        )
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(clip_tok),
                hidden_size=config.clip_hidden_size,
                intermediate_size=config.clip_intermediate_size,
                num_hidden_layers=config.clip_layers,
                num_attention_heads=config.clip_heads,
                max_position_embeddings=77,
                projection_dim=config.clip_hidden_size,
                hidden_act="quick_gelu",
                bos_token_id=clip_tok.bos_token_id,
                eos_token_id=clip_tok.eos_token_id,
                pad_token_id=clip_tok.pad_token_id,
            )
        )
        torch.manual_seed(seed + 3)
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(t5_tok),
                d_model=config.t5_d_model,
                d_kv=config.t5_d_kv,
                d_ff=config.t5_d_ff,
                num_layers=config.t5_layers,
                num_heads=config.t5_heads,
                feed_forward_proj="gated-gelu",
                is_encoder_decoder=False,
                use_cache=False,
                tie_word_embeddings=False,
                pad_token_id=t5_tok.pad_token_id,
                eos_token_id=t5_tok.eos_token_id,
            )
        )
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)
    for module in (transformer, vae, text_encoder, text_encoder_2):
        if dtype != torch.float32:
            module.to(dtype=dtype)
        module.eval()
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tok,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )


def tiny_flux_fingerprint(pipeline: FluxPipeline, seed: int, config: TinyFluxConfig) -> str:
    """sha256 over the tiny config, the seed and the transformer's state-dict bytes.

    Args:
        pipeline: the built tiny pipeline (its transformer is hashed, in float32).
        seed: the weight seed it was built with.
        config: its sizes.

    Returns:
        ``"sha256:<hex>"``.
    """
    import torch

    h = hashlib.sha256()
    h.update(json.dumps({"model": "tiny-flux", "seed": seed, "config": config.to_dict()}, sort_keys=True).encode())
    state = pipeline.transformer.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu", torch.float32).contiguous()
        h.update(key.encode())
        h.update(tensor.numpy().tobytes())
    return "sha256:" + h.hexdigest()


def quantize_tiny_transformer(transformer: Any, quantization_config: Any, dtype: torch.dtype, device: Any) -> Any:
    """The tiny transformer reloaded through diffusers with ``quantization_config``.

    The weights go through a temporary folder and ``FluxTransformer2DModel.from_pretrained(...,
    quantization_config=...)``, the exact path a real model folder takes, so a quantized tiny-flux
    has the same quantized layer classes (torchao's ``Int8Tensor`` weights, peft's
    ``TorchaoLoraLinear`` once a LoRA is added) as a quantized FLUX.1-dev.

    Args:
        transformer: the tiny ``FluxTransformer2DModel``.
        quantization_config: a diffusers quantization config (``TorchAoConfig``, ``BitsAndBytesConfig``).
        dtype: compute dtype of the non-quantized parts.
        device: where it runs.
    """
    import tempfile

    from diffusers import FluxTransformer2DModel

    from persona_ml.models.base_models import dtype_kwargs

    with tempfile.TemporaryDirectory(prefix="persona_ml_tiny_q_") as tmp:
        transformer.save_pretrained(tmp)
        kwargs: dict[str, Any] = {**dtype_kwargs(dtype), "quantization_config": quantization_config,
                                  "local_files_only": True}
        is_cuda = str(device).startswith("cuda")
        if is_cuda:
            kwargs["device_map"] = {"": 0 if str(device) == "cuda" else int(str(device).split(":")[1])}
        quantized = FluxTransformer2DModel.from_pretrained(tmp, **kwargs)
    if not is_cuda:
        quantized.to(device)
    return quantized.eval()
