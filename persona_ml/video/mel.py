"""Speech -> log-mel spectrogram for LTX-2's audio VAE, without torchaudio.

LTX-2 computes its audio VAE's input with ``torchaudio.transforms.MelSpectrogram`` (16 kHz,
``n_fft`` = window = 1024, hop 160, 64 mel bins from 0 Hz to Nyquist, periodic Hann window,
centred frames with reflect padding, magnitude (power 1), Slaney mel scale and Slaney area
normalisation), then ``log(clamp(mel, 1e-5))``, laid out ``(batch, channels, time, mel)`` with two
(stereo) channels. torchaudio's PyPI wheel does not load beside the pinned torch, so the same
transform is written here on ``torch.stft`` with the filterbank built in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class MelSettings:
    """The audio VAE's preprocessing (LTX-2's values by default)."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float | None = None  # Nyquist
    channels: int = 2

    @classmethod
    def from_audio_vae(cls, audio_vae, n_fft: int = 1024) -> MelSettings:
        """Read rate, hop, mel bins and input channels off an ``AutoencoderKLLTX2Audio`` config."""
        cfg = audio_vae.config
        return cls(sample_rate=int(cfg.sample_rate), n_fft=n_fft, hop_length=int(cfg.mel_hop_length),
                   n_mels=int(cfg.mel_bins), channels=int(cfg.in_channels))


def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(settings: MelSettings = MelSettings()) -> np.ndarray:
    """``(n_fft // 2 + 1, n_mels)`` triangular Slaney filters with Slaney (area) normalisation."""
    n_freqs = settings.n_fft // 2 + 1
    f_max = settings.f_max if settings.f_max is not None else settings.sample_rate / 2.0
    all_freqs = np.linspace(0, settings.sample_rate // 2, n_freqs)
    m_pts = np.linspace(_hz_to_mel_slaney(settings.f_min), _hz_to_mel_slaney(f_max), settings.n_mels + 2)
    f_pts = _mel_to_hz_slaney(m_pts)
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    fb *= (2.0 / (f_pts[2:settings.n_mels + 2] - f_pts[:settings.n_mels]))[None, :]
    return fb.astype(np.float32)


def log_mel(samples: np.ndarray, settings: MelSettings = MelSettings()):
    """Log-mel spectrogram of mono speech, as the audio VAE's encoder takes it.

    Args:
        samples: float32 mono samples at ``settings.sample_rate``.
        settings: the VAE's preprocessing.

    Returns:
        ``torch.Tensor`` ``(1, channels, 1 + len // hop, n_mels)`` float32 (mono copied to every channel).

    Raises:
        InputError: fewer samples than one window.
    """
    import torch

    x = np.asarray(samples, np.float32).reshape(-1)
    if len(x) <= settings.n_fft // 2:
        raise InputError(f"{len(x)} samples is shorter than half a {settings.n_fft}-sample window", field="speech",
                         value=len(x))
    wave = torch.from_numpy(x)[None, :]
    spec = torch.stft(wave, n_fft=settings.n_fft, hop_length=settings.hop_length, win_length=settings.n_fft,
                      window=torch.hann_window(settings.n_fft), center=True, pad_mode="reflect", normalized=False,
                      onesided=True, return_complex=True).abs()  # (1, freqs, frames), power 1
    fb = torch.from_numpy(mel_filterbank(settings))
    mel = torch.matmul(spec.transpose(1, 2), fb)  # (1, frames, mels)
    mel = torch.log(torch.clamp(mel, min=1e-5))
    return mel[:, None].expand(1, settings.channels, *mel.shape[1:]).contiguous()
