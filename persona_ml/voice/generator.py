"""``VoiceGenerator``: speech in a character's voice, every output scored against its voice profile.

The model is Dia (``DiaForConditionalGeneration`` in transformers, Apache-2.0): it clones a voice
from an audio prompt and that prompt's transcript, and decodes through the 44.1 kHz Descript Audio
Codec. Weights load from a local folder only (``from_pretrained``); tests and notebooks use
``persona_ml.voice.testing.build_tiny_dia``, a random model of the same classes built in code,
whose outputs are flagged ``random_weights``.

The API's voice settings map onto the model's own knobs: ``stability`` sets the sampling
temperature (``configs/voice_models.yaml``), ``use_speaker_boost`` becomes best-of-N by similarity
to the profile; settings Dia has no knob for (``similarity_boost``, ``style``) come back in
``ignored_settings`` with the reason. Each output is scored (cosine to the profile, seconds of
speech, clipping) and flagged ``voice_low``, ``no_speech``, ``clipping``.

Example:
    >>> gen = VoiceGenerator.from_pretrained("/models/dia-1.6b", embedder=embedder, device="cuda")  # doctest: +SKIP
    >>> prompt = VoicePrompt.from_audio("ref.wav", "Hello there.")                               # doctest: +SKIP
    >>> out = gen.generate("Hi, I'm Ava.", profile=profile, prompt=prompt)                      # doctest: +SKIP
    >>> out.similarity, out.flags, out.ignored_settings                                          # doctest: +SKIP
    (0.83, (), {'similarity_boost': '...', 'style': '...'})
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write_json, sha256_file
from .._json import jsonable
from ..audio import AudioLimits, AudioSource, LoadedAudio, load_audio, save_audio
from ..errors import BackendError, InputError, ModelNotFoundError, VoiceError
from .embedder import VoiceEmbedder
from .models import TtsSpec, tts_spec
from .profile import VoiceProfile
from .rules import VoiceSettings, check_voice_settings

log = logging.getLogger(__name__)

FLAG_CODES = ("voice_low", "no_speech", "clipping")


@dataclass(frozen=True)
class TtsModelInfo:
    """Which TTS model made an output."""

    name: str
    model_class: str
    license: str
    path: str | None
    files: dict[str, str]
    random_weights: bool
    parameters: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model_class": self.model_class, "license": self.license, "path": self.path,
                "files": dict(self.files), "random_weights": self.random_weights, "parameters": self.parameters}


@dataclass(frozen=True, eq=False)
class VoicePrompt:
    """The reference the model clones: a clip of the voice and what is said in it."""

    audio: LoadedAudio
    transcript: str

    @classmethod
    def from_audio(cls, source: AudioSource, transcript: str, *, sample_rate: int = 44100,
                   source_sample_rate: int | None = None, max_s: float = 20.0) -> VoicePrompt:
        """Load ``source`` as a prompt at the codec's rate.

        Raises:
            AudioError: the clip is refused by the intake (longer than ``max_s`` included).
            InputError: empty transcript.
        """
        if not isinstance(transcript, str) or not transcript.strip():
            raise InputError("a voice prompt needs the transcript of its audio (Dia aligns the prompt by it)",
                             field="transcript", value=transcript)
        audio = load_audio(source, sample_rate=sample_rate, source_sample_rate=source_sample_rate,
                           limits=AudioLimits(max_duration_s=max_s, min_duration_s=0.5))
        return cls(audio=audio, transcript=transcript.strip())


@dataclass(frozen=True, eq=False)
class GeneratedSpeech:
    """One generation: the chosen candidate's audio and how it scored.

    Attributes:
        samples: float32 mono at ``sample_rate``.
        similarity: cosine of its speaker embedding to the profile centroid (``None`` when empty).
        speech_s: seconds of speech the VAD finds in it.
        clipped_fraction: share of samples at full scale.
        flags: ``voice_low`` (similarity under the model's ``generated_min_cosine``), ``no_speech``,
            ``clipping``.
        candidates: every candidate's figures (best-of-N with ``use_speaker_boost``).
        chosen: index of the returned candidate.
        settings: the API settings, defaults filled.
        model_settings: what they became for the model (temperature, top_p, ...).
        ignored_settings: settings the model cannot honour -> why.
        random_weights: the model is a random test model (its speech is noise).
    """

    samples: np.ndarray
    sample_rate: int
    text: str
    similarity: float | None
    speech_s: float
    clipped_fraction: float
    flags: tuple[str, ...]
    candidates: tuple[dict, ...]
    chosen: int
    settings: VoiceSettings
    model_settings: dict
    ignored_settings: dict[str, str]
    random_weights: bool
    model: dict
    scorer: dict
    profile_fingerprint: str
    extra: dict = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / float(self.sample_rate)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "text": self.text, "duration_s": round(self.duration_s, 3), "sample_rate": self.sample_rate,
            "similarity": None if self.similarity is None else round(self.similarity, 4),
            "speech_s": round(self.speech_s, 3), "clipped_fraction": round(self.clipped_fraction, 6),
            "flags": list(self.flags), "candidates": list(self.candidates), "chosen": self.chosen,
            "settings": self.settings.to_dict(), "model_settings": self.model_settings,
            "ignored_settings": dict(self.ignored_settings), "random_weights": self.random_weights,
            "model": self.model, "scorer": self.scorer, "profile_fingerprint": self.profile_fingerprint})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the audio (format from the suffix, WAV by default) and ``<path>.json`` beside it, atomically."""
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".wav")
        if len(self.samples) == 0:
            raise VoiceError("the generation is empty: nothing to save", code="voice_generation_empty",
                             field="samples", value=0)
        save_audio(path, self.samples, self.sample_rate)
        atomic_write_json(path.with_name(path.name + ".json"), self.to_dict())
        return path


class VoiceGenerator:
    """Dia speech generation scored against a voice profile.

    Args:
        model: a ``DiaForConditionalGeneration`` in eval mode.
        processor: its ``DiaProcessor`` (tokenizer, feature extractor and DAC codec).
        embedder: the speaker model that scores outputs (the profile's model).
        info: provenance of the TTS model.
        spec: the knob mapping (``configs/voice_models.yaml`` ``tts.dia``).
    """

    def __init__(self, model: Any, processor: Any, *, embedder: VoiceEmbedder, info: TtsModelInfo,
                 spec: TtsSpec | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.embedder = embedder
        self.info = info
        self.spec = spec or tts_spec("dia")
        self.sample_rate = int(getattr(processor.feature_extractor, "sampling_rate", self.spec.sample_rate))

    # --- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, embedder: VoiceEmbedder, codec_path: str | os.PathLike | None = None,
                        device: str = "cpu", dtype: str = "float32", spec: TtsSpec | None = None) -> VoiceGenerator:
        """Load Dia and its DAC codec from local folders (never from a hub).

        Args:
            path: the Dia folder (``config.json``, weights, ``tokenizer_config.json``,
                ``preprocessor_config.json``).
            embedder: the speaker model that scores outputs.
            codec_path: the DAC folder (default ``path/<codec_subfolder>``).
            device: ``"cpu"``, ``"cuda"``...
            dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` for Dia (the codec stays float32).

        Raises:
            ModelNotFoundError: a folder or a required file is missing (``searched`` lists them).
            BackendError: transformers cannot load what is there.
        """
        import torch
        from transformers import DacModel, DiaFeatureExtractor, DiaForConditionalGeneration, DiaProcessor, DiaTokenizer

        spec = spec or tts_spec("dia")
        root = Path(path)
        codec = Path(codec_path) if codec_path is not None else root / spec.codec_subfolder
        wanted = [root / f for f in spec.required_files] + [codec / "config.json"]
        weights = [root / "model.safetensors", root / "model.safetensors.index.json"]
        missing = [str(p) for p in wanted if not p.is_file()]
        if not any(w.is_file() for w in weights):
            missing.append(" or ".join(str(w) for w in weights))
        if missing:
            raise ModelNotFoundError(f"Dia model not found locally: missing {', '.join(missing)} (weights are never "
                                     "downloaded: copy the model folder to the worker)", code="model_not_found",
                                     field="path", value=str(root), searched=[str(p) for p in wanted] + [str(w) for w in weights])
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
        if torch_dtype is None:
            raise InputError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}", field="dtype", value=dtype)
        try:
            model = DiaForConditionalGeneration.from_pretrained(str(root), local_files_only=True, dtype=torch_dtype).to(device)
            dac = DacModel.from_pretrained(str(codec), local_files_only=True).to(device).eval()
            processor = DiaProcessor(feature_extractor=DiaFeatureExtractor.from_pretrained(str(root), local_files_only=True),
                                     tokenizer=DiaTokenizer.from_pretrained(str(root), local_files_only=True),
                                     audio_tokenizer=dac)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise BackendError(f"transformers could not load Dia from {root} (codec {codec}): {exc}", code="backend_error",
                               field="path", value=str(root)) from exc
        files = {p.name: sha256_file(p) for p in sorted(root.glob("*.safetensors"))}
        info = TtsModelInfo(name="dia", model_class="DiaForConditionalGeneration", license=spec.license, path=str(root),
                            files=files, random_weights=_says_random(root),
                            parameters=int(sum(p.numel() for p in model.parameters())))
        return cls(model, processor, embedder=embedder, info=info, spec=spec)

    # --- settings --------------------------------------------------------------------------------

    def map_settings(self, settings: VoiceSettings, text: str, seed: int) -> tuple[dict, dict[str, str]]:
        """The model's knobs for ``settings`` and the settings it cannot honour (with reasons)."""
        t0, t1 = self.spec.temperature_at_stability
        n = self.spec.speaker_boost_candidates if settings.use_speaker_boost else 1
        tokens = min(self.spec.max_new_tokens,
                     max(self.spec.min_new_tokens, self.spec.max_new_tokens_per_char * len(text)))
        knobs = {"temperature": round(t0 + (t1 - t0) * settings.stability, 4), "top_p": self.spec.top_p,
                 "top_k": self.spec.top_k, "guidance_scale": self.spec.guidance_scale, "candidates": n,
                 "max_new_tokens": int(tokens), "seed": int(seed), "do_sample": True}
        return knobs, dict(self.spec.ignored_settings)

    # --- generation ------------------------------------------------------------------------------

    def generate(self, text: str, *, profile: VoiceProfile, prompt: VoicePrompt,
                 settings: VoiceSettings | Mapping[str, Any] | None = None, seed: int = 0,
                 max_new_tokens: int | None = None) -> GeneratedSpeech:
        """Speak ``text`` in the prompt's voice; score every candidate against ``profile``.

        Args:
            text: what to say (at most ``max_text_chars``).
            profile: the character's voice profile (made by this generator's embedder's model).
            prompt: the reference clip and its transcript.
            settings: ``VoiceSettings`` or a mapping of the API's settings (defaults from
                ``configs/voice_rules.yaml``).
            seed: sampling seed (the same seed, settings and model give the same audio on CPU).
            max_new_tokens: cap on codec frames (default from the text length).

        Raises:
            InputError: empty or too long text, bad seed, no prompt.
            VoiceRuleError: settings out of range (``voice_rules_violation``, every violation listed).
            ModelMismatchError: the profile was made by another speaker model than the scorer.
            BackendError: the model failed on valid input.
        """

        from ..errors import VoiceRuleError

        if not isinstance(text, str) or not text.strip():
            raise InputError("text must be a non-empty string", field="text", value=text)
        if len(text) > self.spec.max_text_chars:
            raise InputError(f"text has {len(text)} characters; at most {self.spec.max_text_chars} per generation",
                             field="text", value=len(text), limit=self.spec.max_text_chars)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}", field="seed", value=seed)
        if not isinstance(prompt, VoicePrompt):
            raise InputError("generation needs a VoicePrompt (a clip of the voice and its transcript)", field="prompt",
                             value=type(prompt).__name__)
        if not isinstance(profile, VoiceProfile):
            raise InputError(f"profile must be a VoiceProfile, got {type(profile).__name__}", field="profile",
                             value=type(profile).__name__)
        profile.provenance.require_compatible(self.embedder.provenance, "voice profile")
        if not isinstance(settings, VoiceSettings):
            checked = check_voice_settings(dict(settings or {}))
            if not checked.ok:
                raise VoiceRuleError("voice settings violate the rules: " + "; ".join(v.message for v in checked.violations),
                                     violations=checked.violations, codes=checked.codes)
            settings = checked.settings
        knobs, ignored = self.map_settings(settings, text, seed)
        if max_new_tokens is not None:
            if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
                raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}",
                                 field="max_new_tokens", value=max_new_tokens)
            knobs["max_new_tokens"] = max_new_tokens
        audios = self._sample(prompt, text, knobs)
        candidates, embeddings = [], []
        for i, wav in enumerate(audios):
            figures = self._score(wav, profile)
            candidates.append({"index": i, **{k: v for k, v in figures.items() if k != "samples"}})
            embeddings.append(figures["samples"])
        scored = [c["similarity"] if c["similarity"] is not None else -math.inf for c in candidates]
        chosen = int(np.argmax(scored))
        best = candidates[chosen]
        return GeneratedSpeech(samples=embeddings[chosen], sample_rate=self.sample_rate, text=text,
                               similarity=best["similarity"], speech_s=best["speech_s"],
                               clipped_fraction=best["clipped_fraction"], flags=tuple(best["flags"]),
                               candidates=tuple(candidates), chosen=chosen, settings=settings, model_settings=knobs,
                               ignored_settings=ignored, random_weights=self.info.random_weights,
                               model=self.info.to_dict(), scorer=self.embedder.provenance.to_dict(),
                               profile_fingerprint=profile.fingerprint)

    def _sample(self, prompt: VoicePrompt, text: str, knobs: dict) -> list[np.ndarray]:
        import torch

        n = knobs["candidates"]
        full = f"[S1] {prompt.transcript} [S1] {text.strip()}"
        audio = load_audio(prompt.audio, sample_rate=self.sample_rate).samples
        try:
            inputs = self.processor(text=[full] * n, audio=[audio] * n, padding=True, return_tensors="pt")
            inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
            prompt_len = self.processor.get_audio_prompt_len(inputs["decoder_attention_mask"])
            devices = [self.model.device.index or 0] if self.model.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.inference_mode():
                torch.manual_seed(knobs["seed"])
                out = self.model.generate(**inputs, max_new_tokens=knobs["max_new_tokens"], do_sample=True,
                                          temperature=knobs["temperature"], top_p=knobs["top_p"], top_k=knobs["top_k"],
                                          guidance_scale=knobs["guidance_scale"])
                wavs = self.processor.batch_decode(out, audio_prompt_len=prompt_len)
        except (RuntimeError, ValueError, IndexError) as exc:
            raise BackendError(f"Dia generation failed: {exc}", code="backend_error", field="text", value=text[:80]) from exc
        return [np.clip(np.nan_to_num(w.float().cpu().numpy().reshape(-1)), -1.0, 1.0).astype(np.float32) for w in wavs]

    def _score(self, wav: np.ndarray, profile: VoiceProfile) -> dict:
        t = profile.thresholds
        if len(wav) < int(0.1 * self.sample_rate):
            return {"similarity": None, "speech_s": 0.0, "clipped_fraction": 0.0, "duration_s": len(wav) / self.sample_rate,
                    "flags": ["no_speech"], "samples": wav}
        clip = load_audio(wav, source_sample_rate=self.sample_rate, limits=AudioLimits(min_duration_s=0.0))
        emb = self.embedder.embed(clip)
        similarity = profile.similarity(emb)
        flags = []
        if similarity < t.generated_min_cosine:
            flags.append("voice_low")
        if emb.speech_s < t.no_speech_s:
            flags.append("no_speech")
        if "clipping" in clip.warning_codes:
            flags.append("clipping")
        return {"similarity": round(similarity, 4), "speech_s": emb.speech_s, "duration_s": round(clip.duration_s, 3),
                "clipped_fraction": clip.stats.clipped_fraction if clip.stats else 0.0, "flags": flags, "samples": wav}


def _says_random(root: Path) -> bool:
    """A folder written by ``build_tiny_dia(...).save`` carries ``persona_ml.json`` saying its weights are random."""
    marker = root / "persona_ml.json"
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text(encoding="utf-8")).get("random_weights", False))
    except (OSError, ValueError):
        return False
