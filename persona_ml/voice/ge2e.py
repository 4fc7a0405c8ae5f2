"""Resemblyzer's GE2E speaker encoder behind ``VoiceEmbedder``.

The weights (``resemblyzer/pretrained.pt``, 17 MB, Apache-2.0) ship in the Resemblyzer wheel; we
locate the file without importing the package, check its sha256 and load it into the same
network (3-layer LSTM 40 -> 256, linear 256 -> 256, ReLU, L2 norm). The front end is ours:
speech selected by silero-vad instead of webrtcvad, the 40-band mel power spectrogram
(25 ms Hann window, 10 ms hop, Slaney mel scale, as librosa computes it) by ``torch.stft``, and
the 1.6 s windows of many clips batched through one LSTM call.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from ..errors import BackendUnavailableError, PersonaMLError
from ..faces.types import ModelProvenance
from .embedder import VoiceEmbedder
from .models import EmbedderSpec, embedder_spec, locate_package_file

MEL_BANDS = 40
N_FFT = 400          # 25 ms at 16 kHz
HOP = 160            # 10 ms
PARTIAL_FRAMES = 160  # 1.6 s windows
TARGET_DBFS = -30.0  # speech is raised to this level (never lowered), as Resemblyzer does


def _network():
    import torch
    from torch import nn

    class GE2ENetwork(nn.Module):
        def __init__(self, hidden: int = 256, dim: int = 256, layers: int = 3) -> None:
            super().__init__()
            self.lstm = nn.LSTM(MEL_BANDS, hidden, layers, batch_first=True)
            self.linear = nn.Linear(hidden, dim)

        def forward(self, mels: torch.Tensor) -> torch.Tensor:
            _, (hidden, _) = self.lstm(mels)
            raw = torch.relu(self.linear(hidden[-1]))
            return raw / torch.clamp(torch.norm(raw, dim=1, keepdim=True), min=1e-12)

    return GE2ENetwork


def mel_filters(sample_rate: int = 16000) -> np.ndarray:
    """``(40, 201)`` Slaney-scale, Slaney-normalised triangular filters (librosa's default mel)."""
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=MEL_BANDS, min_frequency=0.0,
                         max_frequency=sample_rate / 2.0, sampling_rate=sample_rate, norm="slaney", mel_scale="slaney")
    return np.ascontiguousarray(fb.T, dtype=np.float32)


class GE2EEmbedder(VoiceEmbedder):
    """Resemblyzer GE2E (256-d) speaker embeddings.

    Args:
        spec: the model spec (default ``voice_models.yaml`` ``embedders.ge2e``).
        device: torch device for the LSTM.
        **kwargs: ``VoiceEmbedder`` arguments (``vad``, ``limits``, ``checks``, ``batch_size``).

    Raises:
        ModelNotFoundError: Resemblyzer is not installed (``pip install 'persona-ml[voice]'``).
        PersonaMLError: ``model_checksum_mismatch`` when its weight file is not the one configured.
    """

    def __init__(self, spec: EmbedderSpec | None = None, *, device: str = "cpu", **kwargs) -> None:
        super().__init__(**kwargs)
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError("GE2E needs torch", code="backend_unavailable", backend="torch") from exc
        self.spec = spec or embedder_spec("ge2e")
        self.sample_rate = self.spec.sample_rate
        self.path = locate_package_file(self.spec.package, self.spec.file, self.spec.sha256, what="GE2E speaker encoder")
        try:
            checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in checkpoint["model_state"].items() if not k.startswith("similarity_")}
            net = _network()(dim=self.spec.dim)
            net.load_state_dict(state, strict=True)
        except (KeyError, RuntimeError, OSError, ValueError) as exc:
            raise PersonaMLError(f"{self.path}: not a GE2E checkpoint this encoder can load: {exc}",
                                 code="model_load_failed", field="path", value=str(self.path)) from exc
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self._window = torch.hann_window(N_FFT, periodic=True)
        self._filters = torch.from_numpy(mel_filters(self.sample_rate))
        self._lock = threading.Lock()
        self._provenance = ModelProvenance(backend="resemblyzer", model_name="ge2e", files={self.path.name: self.spec.sha256},
                                           dim=self.spec.dim, license=self.spec.license, commercial_use=True)

    @property
    def provenance(self) -> ModelProvenance:
        return self._provenance

    def mel(self, wav: np.ndarray) -> np.ndarray:
        """``(frames, 40)`` mel power spectrogram (not log: what GE2E was trained on)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
        spec = torch.stft(x, n_fft=N_FFT, hop_length=HOP, win_length=N_FFT, window=self._window, center=True,
                          pad_mode="constant", return_complex=True)
        power = spec.real.square() + spec.imag.square()
        return (self._filters @ power).T.contiguous().numpy()

    def windows(self, speech: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """1.6 s mel windows at ``partial_rate`` per second; the last is kept (zero-padded) when it is
        at least ``min_coverage`` full, and a clip shorter than one window gives one padded window."""
        wav = np.asarray(speech, dtype=np.float32)
        if len(wav):
            rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
            gain_db = TARGET_DBFS - 20.0 * math.log10(max(rms, 1e-9))
            if gain_db > 0:
                wav = wav * np.float32(min(10 ** (gain_db / 20.0), 1e4))
        n = len(wav)
        n_frames = int(math.ceil((n + 1) / HOP))
        step = max(1, int(round((self.sample_rate / self.spec.partial_rate) / HOP)))
        starts = list(range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step))
        if len(starts) > 1:
            last = starts[-1] * HOP
            coverage = (n - last) / float(PARTIAL_FRAMES * HOP)
            if coverage < self.spec.min_coverage:
                starts = starts[:-1]
        stop = (starts[-1] + PARTIAL_FRAMES) * HOP
        if stop > n:
            wav = np.pad(wav, (0, stop - n))
        mel = self.mel(wav)
        windows = np.stack([mel[s:s + PARTIAL_FRAMES] for s in starts]).astype(np.float32)
        ranges = [(s * HOP, min(n, (s + PARTIAL_FRAMES) * HOP)) for s in starts]
        return windows, ranges

    def forward(self, windows: np.ndarray) -> np.ndarray:
        import torch

        with self._lock, torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(self.device)
            return self.net(x).float().cpu().numpy()
