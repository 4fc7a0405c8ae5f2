"""Voice-clone rules and the voice settings schema: pure functions, read from ``configs/voice_rules.yaml``.

``check_clone_request`` reports every violation at once (each a ``persona_ml.rules.RuleViolation``
with ``code``, ``field``, ``limit``, ``actual`` and a message) plus the settings with defaults
filled in; ``enforce_clone_request`` raises one ``VoiceRuleError`` carrying all of them.
``check_voice_settings`` alone validates the settings the API reads and writes. No torch, no audio
decoding here: a sample is described by ``SampleFacts`` (``persona_ml.voice.api.sample_facts``
builds them from embeddings).

Example:
    >>> from persona_ml.voice.rules import SampleFacts, check_clone_request
    >>> s = SampleFacts(source="a.wav", sha256="ab", format="wav", sample_rate=44100, channels=1,
    ...                 duration_s=40.0, speech_s=36.0)
    >>> check_clone_request({"name": "Ava", "samples": [s]}).settings.stability
    0.55
    >>> [v.code for v in check_clone_request({"name": "", "samples": [s], "style": 2}).violations]
    ['name_missing', 'setting_out_of_range']
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._json import jsonable
from ..config import config_file, load_config
from ..errors import InputError, VoiceRuleError
from ..rules import RuleViolation

RULES_FILE = "voice_rules.yaml"
SETTING_NAMES = ("stability", "similarity_boost", "style", "use_speaker_boost")


# --- config ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Range:
    min: float
    max: float

    def __post_init__(self) -> None:
        if self.min < 0 or self.max < self.min:
            raise ValueError(f"need 0 <= min <= max, got min={self.min}, max={self.max}")


@dataclass(frozen=True)
class UnitSetting:
    min: float
    max: float
    default: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.min <= self.default <= self.max <= 1.0:
            raise ValueError(f"need 0 <= min <= default <= max <= 1, got {self.min}, {self.default}, {self.max}")


@dataclass(frozen=True)
class SampleRules:
    count: Range
    duration_s: Range
    speech_s: Range
    total_speech_s: Range
    formats: tuple[str, ...]
    min_sample_rate: int
    max_channels: int
    refused_warnings: tuple[str, ...] = ()
    refuse_outliers: bool = True


@dataclass(frozen=True)
class NameRules:
    max_length: int
    min_length: int = 0


@dataclass(frozen=True)
class SettingsRules:
    stability: UnitSetting
    similarity_boost: UnitSetting
    style: UnitSetting
    use_speaker_boost: bool


@dataclass(frozen=True)
class VoiceRules:
    """The platform's voice-clone rules (see ``configs/voice_rules.yaml``)."""

    samples: SampleRules
    name: NameRules
    description: NameRules
    settings: SettingsRules


def load_voice_rules(path: str | os.PathLike | None = None) -> VoiceRules:
    """Load the rules strictly from ``path`` (default: ``configs/voice_rules.yaml``)."""
    path = Path(path) if path is not None else config_file(RULES_FILE)
    return _load_cached(str(path.resolve()), path.stat().st_mtime_ns if path.is_file() else 0)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, _mtime: int) -> VoiceRules:
    return load_config(VoiceRules, path)


# --- request and results --------------------------------------------------------------------------

@dataclass(frozen=True)
class SampleFacts:
    """What the rules need to know of one uploaded sample (measured, never trusted from the client)."""

    source: str
    sha256: str
    format: str
    sample_rate: int
    channels: int
    duration_s: float
    speech_s: float
    warnings: tuple[str, ...] = ()
    outlier: bool = False

    def to_dict(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self))


@dataclass(frozen=True)
class VoiceSettings:
    """The API's voice settings (ElevenLabs-style names), each checked against the rules."""

    stability: float
    similarity_boost: float
    style: float
    use_speaker_boost: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class VoiceCloneRequest:
    """A voice-clone request as the service receives it (values are checked, not trusted)."""

    name: Any
    samples: Any
    description: Any = None
    stability: Any = None
    similarity_boost: Any = None
    style: Any = None
    use_speaker_boost: Any = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VoiceCloneRequest:
        """Build from a mapping; the API's ``settings`` object may hold the four settings.

        Raises:
            InputError: not a mapping, an unknown key, or no ``name``/``samples`` key at all.
        """
        if not isinstance(data, Mapping):
            raise InputError(f"a voice-clone request must be a mapping, got {type(data).__name__}", field="request",
                             value=repr(data))
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "settings" and isinstance(value, Mapping):
                for k, v in value.items():
                    if k not in SETTING_NAMES:
                        raise InputError(f"unknown voice setting {k!r} (allowed: {', '.join(SETTING_NAMES)})",
                                         field=f"settings.{k}", value=v)
                    kwargs[k] = v
                continue
            if key not in names:
                raise InputError(f"unknown voice-clone field {key!r} (allowed: {', '.join(sorted(names | {'settings'}))})",
                                 field=str(key), value=value)
            kwargs[key] = value
        missing = [n for n in ("name", "samples") if n not in kwargs]
        if missing:
            raise InputError(f"voice-clone request lacks {', '.join(missing)}", field=missing[0], value=None)
        return cls(**kwargs)


@dataclass(frozen=True)
class VoiceRuleCheckResult:
    """Outcome of ``check_clone_request`` / ``check_voice_settings``."""

    violations: tuple[RuleViolation, ...]
    settings: VoiceSettings | None
    defaults_filled: dict[str, Any] = field(default_factory=dict)
    total_speech_s: float | None = None

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def codes(self) -> list[str]:
        return [v.code for v in self.violations]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "violations": [v.to_dict() for v in self.violations],
                "settings": None if self.settings is None else self.settings.to_dict(),
                "defaults_filled": jsonable(self.defaults_filled, fallback=repr),
                "total_speech_s": None if self.total_speech_s is None else round(self.total_speech_s, 3)}


# --- checks ---------------------------------------------------------------------------------------

def check_voice_settings(values: Mapping[str, Any], rules: VoiceRules | None = None) -> VoiceRuleCheckResult:
    """Check voice settings (any subset of ``stability``, ``similarity_boost``, ``style``,
    ``use_speaker_boost``); missing ones take the configured defaults.

    Raises:
        InputError: ``values`` is not a mapping or has an unknown key.
    """
    if not isinstance(values, Mapping):
        raise InputError(f"voice settings must be a mapping, got {type(values).__name__}", field="settings",
                         value=repr(values))
    unknown = sorted(set(values) - set(SETTING_NAMES))
    if unknown:
        raise InputError(f"unknown voice setting(s) {unknown} (allowed: {', '.join(SETTING_NAMES)})",
                         field=f"settings.{unknown[0]}", value=values[unknown[0]])
    rules = rules or load_voice_rules()
    violations: list[RuleViolation] = []
    defaults: dict[str, Any] = {}
    resolved: dict[str, Any] = {}
    for name in ("stability", "similarity_boost", "style"):
        setting: UnitSetting = getattr(rules.settings, name)
        value = values.get(name)
        if value is None:
            resolved[name] = defaults[name] = setting.default
        elif not _is_number(value):
            violations.append(RuleViolation("invalid_type", name, [setting.min, setting.max], value,
                                            f"{name} must be a number in [{setting.min:g}, {setting.max:g}], got "
                                            f"{type(value).__name__} {value!r}"))
        elif not setting.min <= value <= setting.max:
            violations.append(RuleViolation("setting_out_of_range", name, [setting.min, setting.max], value,
                                            f"{name} {value!r} is outside [{setting.min:g}, {setting.max:g}]"))
        else:
            resolved[name] = float(value)
    boost = values.get("use_speaker_boost")
    if boost is None:
        resolved["use_speaker_boost"] = defaults["use_speaker_boost"] = rules.settings.use_speaker_boost
    elif not isinstance(boost, bool):
        violations.append(RuleViolation("invalid_type", "use_speaker_boost", [True, False], boost,
                                        f"use_speaker_boost must be true or false, got {type(boost).__name__} {boost!r}"))
    else:
        resolved["use_speaker_boost"] = boost
    settings = VoiceSettings(**resolved) if not violations else None
    return VoiceRuleCheckResult(violations=tuple(violations), settings=settings, defaults_filled=defaults)


def check_clone_request(request: VoiceCloneRequest | Mapping[str, Any], rules: VoiceRules | None = None) -> VoiceRuleCheckResult:
    """Check a voice-clone request, reporting every violation at once.

    Args:
        request: a ``VoiceCloneRequest`` or a mapping for ``VoiceCloneRequest.from_dict``;
            ``samples`` is a sequence of ``SampleFacts`` (or their dicts).
        rules: default ``load_voice_rules()``.

    Returns:
        VoiceRuleCheckResult: violations (sample ones name ``samples[i]``), settings with
        defaults filled, total speech seconds.

    Raises:
        InputError: ``request`` is not a request or valid mapping.
    """
    if isinstance(request, Mapping):
        request = VoiceCloneRequest.from_dict(request)
    if not isinstance(request, VoiceCloneRequest):
        raise InputError(f"expected a VoiceCloneRequest or a mapping, got {type(request).__name__}", field="request",
                         value=repr(request))
    rules = rules or load_voice_rules()
    violations: list[RuleViolation] = []

    name = request.name
    if not isinstance(name, str):
        violations.append(RuleViolation("invalid_type", "name", [rules.name.min_length, rules.name.max_length], name,
                                        f"name must be a string, got {type(name).__name__}"))
    elif len(name.strip()) < max(1, rules.name.min_length):
        violations.append(RuleViolation("name_missing", "name", rules.name.min_length, name, "the voice needs a name"))
    elif len(name) > rules.name.max_length:
        violations.append(RuleViolation("name_too_long", "name", rules.name.max_length, len(name),
                                        f"name has {len(name)} characters; at most {rules.name.max_length}"))
    desc = request.description
    if desc is not None:
        if not isinstance(desc, str):
            violations.append(RuleViolation("invalid_type", "description", rules.description.max_length, desc,
                                            f"description must be a string, got {type(desc).__name__}"))
        elif len(desc) > rules.description.max_length:
            violations.append(RuleViolation("description_too_long", "description", rules.description.max_length,
                                            len(desc), f"description has {len(desc)} characters; at most "
                                            f"{rules.description.max_length}"))

    samples, total = _check_samples(request.samples, rules.samples, violations)

    settings_result = check_voice_settings({k: getattr(request, k) for k in SETTING_NAMES
                                            if getattr(request, k) is not None}, rules)
    violations.extend(settings_result.violations)
    return VoiceRuleCheckResult(violations=tuple(violations), settings=settings_result.settings,
                                defaults_filled=settings_result.defaults_filled, total_speech_s=total)


def enforce_clone_request(request: VoiceCloneRequest | Mapping[str, Any],
                          rules: VoiceRules | None = None) -> VoiceRuleCheckResult:
    """Like ``check_clone_request`` but raise ``VoiceRuleError`` (``voice_rules_violation``) when any rule is broken."""
    result = check_clone_request(request, rules)
    if not result.ok:
        raise VoiceRuleError("voice clone request violates the rules: " + "; ".join(v.message for v in result.violations),
                             violations=result.violations, codes=result.codes)
    return result


def _check_samples(raw: Any, r: SampleRules, violations: list[RuleViolation]) -> tuple[list[SampleFacts], float | None]:
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        violations.append(RuleViolation("invalid_type", "samples", [r.count.min, r.count.max], type(raw).__name__,
                                        "samples must be a list of measured samples"))
        return [], None
    samples: list[SampleFacts] = []
    for i, s in enumerate(raw):
        if isinstance(s, Mapping):
            try:
                s = SampleFacts(**{k: (tuple(v) if k == "warnings" else v) for k, v in s.items()})
            except TypeError as exc:
                raise InputError(f"samples[{i}]: {exc}", field=f"samples[{i}]", value=repr(s)) from exc
        if not isinstance(s, SampleFacts):
            raise InputError(f"samples[{i}] is a {type(s).__name__}, not SampleFacts", field=f"samples[{i}]",
                             value=type(s).__name__)
        samples.append(s)
    n = len(samples)
    if n < r.count.min:
        violations.append(RuleViolation("too_few_samples", "samples", int(r.count.min), n,
                                        f"{n} sample(s); at least {int(r.count.min)} needed"))
    elif n > r.count.max:
        violations.append(RuleViolation("too_many_samples", "samples", int(r.count.max), n,
                                        f"{n} samples; at most {int(r.count.max)} allowed"))
    seen: dict[str, int] = {}
    total = 0.0
    for i, s in enumerate(samples):
        f = f"samples[{i}]"
        if s.sha256 in seen:
            violations.append(RuleViolation("duplicate_sample", f, seen[s.sha256], i,
                                            f"{s.source} is the same file as samples[{seen[s.sha256]}]"))
            continue
        seen[s.sha256] = i
        if s.format not in r.formats:
            violations.append(RuleViolation("format_not_allowed", f"{f}.format", list(r.formats), s.format,
                                            f"{s.source}: format {s.format} is not accepted ({', '.join(r.formats)})"))
        if s.sample_rate < r.min_sample_rate:
            violations.append(RuleViolation("sample_rate_too_low", f"{f}.sample_rate", r.min_sample_rate, s.sample_rate,
                                            f"{s.source}: {s.sample_rate} Hz; at least {r.min_sample_rate} Hz"))
        if s.channels > r.max_channels:
            violations.append(RuleViolation("too_many_channels", f"{f}.channels", r.max_channels, s.channels,
                                            f"{s.source}: {s.channels} channels; at most {r.max_channels}"))
        if s.duration_s < r.duration_s.min:
            violations.append(RuleViolation("sample_too_short", f"{f}.duration_s", r.duration_s.min, s.duration_s,
                                            f"{s.source}: {s.duration_s:.2f} s; at least {r.duration_s.min:g} s"))
        elif s.duration_s > r.duration_s.max:
            violations.append(RuleViolation("sample_too_long", f"{f}.duration_s", r.duration_s.max, s.duration_s,
                                            f"{s.source}: {s.duration_s:.1f} s; at most {r.duration_s.max:g} s"))
        if s.speech_s < r.speech_s.min:
            violations.append(RuleViolation("sample_little_speech", f"{f}.speech_s", r.speech_s.min, s.speech_s,
                                            f"{s.source}: {s.speech_s:.2f} s of speech; at least {r.speech_s.min:g} s"))
        for code in s.warnings:
            if code in r.refused_warnings:
                violations.append(RuleViolation(f"sample_{code}", f"{f}.warnings", list(r.refused_warnings), code,
                                                f"{s.source}: {code.replace('_', ' ')} (measured)"))
        if r.refuse_outliers and s.outlier:
            violations.append(RuleViolation("sample_other_speaker", f"{f}.outlier", False, True,
                                            f"{s.source} sounds like another speaker than the other samples"))
        if _is_number(s.speech_s):
            total += float(s.speech_s)
    if samples:
        if total < r.total_speech_s.min:
            violations.append(RuleViolation("total_speech_too_short", "samples", r.total_speech_s.min, round(total, 2),
                                            f"{total:.1f} s of speech in all; an instant clone needs at least "
                                            f"{r.total_speech_s.min:g} s: add {r.total_speech_s.min - total:.0f} s"))
        elif total > r.total_speech_s.max:
            violations.append(RuleViolation("total_speech_too_long", "samples", r.total_speech_s.max, round(total, 2),
                                            f"{total:.1f} s of speech in all; at most {r.total_speech_s.max:g} s"))
    return samples, total


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
