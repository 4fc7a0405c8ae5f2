"""Entry points that pick a model by name."""

from __future__ import annotations

from .embedder import VoiceEmbedder

EMBEDDERS = ("ge2e",)


def load_voice_embedder(name: str = "ge2e", **kwargs) -> VoiceEmbedder:
    """The speaker embedder named ``name`` (``"ge2e"``: Resemblyzer's GE2E, weights in its wheel).

    Args:
        name: a key of ``embedders`` in ``configs/voice_models.yaml``.
        **kwargs: passed to the embedder (``device``, ``vad``, ``limits``, ``batch_size``...).

    Raises:
        ConfigError: unknown name.
        ModelNotFoundError: the package that ships the weights is not installed.
    """
    from ..errors import ConfigError

    if name == "ge2e":
        from .ge2e import GE2EEmbedder

        return GE2EEmbedder(**kwargs)
    raise ConfigError(f"unknown voice embedder {name!r} (known: {', '.join(EMBEDDERS)})", field="embedder", value=name)


AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".oga", ".m4a", ".mp4", ".aac", ".webm", ".mka", ".mkv")


def list_audio(folder) -> list:
    """Audio-like files directly in ``folder``, sorted by name (hidden files skipped)."""
    from pathlib import Path

    from ..errors import InputError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}", field="folder", value=str(folder))
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in AUDIO_SUFFIXES)


def sample_facts(embeddings, profile=None) -> list:
    """``SampleFacts`` for the clone rules from samples' embeddings (and the profile's outlier flags)."""
    from .rules import SampleFacts

    outliers = set(profile.outliers) if profile is not None else set()
    facts = []
    for i, e in enumerate(embeddings):
        a = e.audio
        facts.append(SampleFacts(source=e.source, sha256=e.sha256, format=str(a.get("format")),
                                 sample_rate=int(a.get("original_sample_rate") or 0),
                                 channels=int(a.get("original_channels") or 0), duration_s=float(e.duration_s),
                                 speech_s=float(e.speech_s), warnings=tuple(e.warning_codes), outlier=i in outliers))
    return facts


def check_clone_samples(sources, *, name, description=None, settings=None, embedder=None, rules=None):
    """Measure clone samples and check the request against the clone rules.

    Each source goes through the audio intake and the embedder; a source the intake refuses
    becomes a ``sample_refused`` violation carrying its error code (the others are still
    measured). The samples that pass build a ``VoiceProfile`` whose outliers become
    ``sample_other_speaker`` violations.

    Returns:
        ``(result, profile, embeddings)``: the ``VoiceRuleCheckResult``, the profile (``None``
        when no sample could be embedded) and one ``VoiceEmbedding`` or ``PersonaMLError`` per source.
    """
    import dataclasses

    from ..errors import AudioError
    from ..rules import RuleViolation
    from .profile import VoiceProfile
    from .rules import check_clone_request

    embedder = embedder or load_voice_embedder()
    results: list = []
    for src in sources:
        try:
            results.append(embedder.embed(src))
        except AudioError as exc:
            results.append(exc)
    good = [r for r in results if not isinstance(r, Exception)]
    profile = VoiceProfile.build(good) if good else None
    facts = sample_facts(good, profile)
    request = {"name": name, "samples": facts, "description": description, **dict(settings or {})}
    result = check_clone_request(request, rules)
    refused = [RuleViolation("sample_refused", f"samples[{i}]", "a readable audio file", r.code, r.message)
               for i, r in enumerate(results) if isinstance(r, Exception)]
    good_index = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
    remapped = tuple(_renumber(v, good_index) for v in result.violations)
    result = dataclasses.replace(result, violations=tuple(refused) + remapped)
    return result, profile, results


def _renumber(violation, index):
    """``samples[j]`` of the measured samples -> ``samples[i]`` of the caller's sources."""
    import dataclasses
    import re

    def fix(text):
        return re.sub(r"samples\[(\d+)\]", lambda m: f"samples[{index[int(m.group(1))]}]", text)

    changes = {"field": fix(violation.field)}
    if violation.code == "duplicate_sample":
        changes.update(limit=index[violation.limit], actual=index[violation.actual])
    return dataclasses.replace(violation, **changes)
