"""Whisper's log-Mel features in numpy, equal to openai-whisper's ``log_mel_spectrogram``.

The pieces stay separable for streaming: ``hann_window`` and ``mel_filters`` are computed once per
frontend, and ``LogMelFrontend.mel_power`` turns any run of STFT frames into Mel power, so frames
can be computed incrementally into a reused buffer. ``log_power`` and ``normalize`` are the two
halves of ``__call__``: a stream keeps the first per frame and applies the second per window.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edge_asr.runtime.audio import SAMPLE_RATE

N_FFT = 400
HOP_LENGTH = 160
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 Mel frames a second, one per 10 ms hop
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30 s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 frames in a 30 s window
BLOCK_FRAMES = 3000  # STFT frames transformed at a time, so a long clip needs no huge spectrum


def hann_window(n: int = N_FFT) -> np.ndarray:
    """The periodic Hann window, as torch.hann_window(n)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    linear = hz * 3 / 200
    return np.where(hz >= 1000, 15 + np.log(np.maximum(hz, 1000) / 1000) * 27 / np.log(6.4), linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    linear = mel * 200 / 3
    return np.where(mel >= 15, 1000 * np.exp(np.log(6.4) / 27 * (mel - 15)), linear)


def mel_filters(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Triangular filters ``float32 [n_mels, n_fft // 2 + 1]`` with Slaney area normalisation.

    The same matrix as ``librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)``, which
    openai-whisper ships precomputed.
    """
    fft_hz = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    edges_hz = _mel_to_hz(np.linspace(0, _hz_to_mel(np.float64(sample_rate / 2)), n_mels + 2))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling))
    weights *= (2 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.astype(np.float32)


class LogMelFrontend:
    """Turns 16 kHz float32 audio into whisper's log-Mel features ``float32 [n_mels, frames]``."""

    def __init__(self, n_mels: int = 80):
        self.n_mels = n_mels
        self.window = hann_window()
        self.filters = mel_filters(n_mels)

    def mel_power(self, frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Mel power ``[n_mels, n]`` of ``n`` raw (unwindowed) signal frames ``[n, N_FFT]``."""
        spectrum = np.fft.rfft(frames * self.window)
        power = spectrum.real**2 + spectrum.imag**2
        return np.matmul(self.filters, power.T, out=out)

    def log_power(self, audio: np.ndarray, padding: int = 0) -> np.ndarray:
        """``log10`` Mel power of ``audio`` followed by ``padding`` zero samples: ``(len + padding)
        // HOP_LENGTH`` frames, the last frame of the centred STFT dropped, as openai-whisper does.

        Not yet normalised: that step needs the peak of the whole clip, which a stream lacks."""
        n_frames = (len(audio) + padding) // HOP_LENGTH
        mel = np.empty((self.n_mels, n_frames), np.float32)
        if n_frames == 0:
            return mel
        signal = np.pad(np.asarray(audio, np.float32), (0, padding))
        signal = np.pad(signal, N_FFT // 2, mode="reflect")  # torch.stft(center=True)
        frames = sliding_window_view(signal, N_FFT)[::HOP_LENGTH][:n_frames]
        for start in range(0, n_frames, BLOCK_FRAMES):
            block = slice(start, start + BLOCK_FRAMES)
            self.mel_power(frames[block], out=mel[:, block])
        return np.log10(np.maximum(mel, 1e-10, out=mel), out=mel)

    @staticmethod
    def normalize(log_mel: np.ndarray, out: np.ndarray | None = None, peak: float | None = None) -> np.ndarray:
        """Whisper's normalisation of ``log10`` Mel power: floored 8 below its peak (80 dB), then
        scaled to about [-1, 1]. ``peak``: the whole recording's, when ``log_mel`` is a part of it
        (None: the peak of ``log_mel``). In place when ``out`` is ``log_mel``."""
        out = np.empty_like(log_mel) if out is None else out
        if log_mel.size == 0:
            return out
        np.maximum(log_mel, (log_mel.max() if peak is None else peak) - 8.0, out=out)
        out += 4.0
        out /= 4.0
        return out

    @staticmethod
    def silence_level(normalized_peak: float) -> float:
        """The value digital silence takes in features normalised as ``normalize`` does, given their
        normalised peak: the floor, 8 below the log peak, which is 2 below the normalised peak. Whisper
        trained on 30 s windows whose padding is silent audio, so this, not 0, is what a window is
        padded with after the audio."""
        return normalized_peak - 2.0

    def __call__(self, audio: np.ndarray, padding: int = 0) -> np.ndarray:
        """Whisper's features of ``audio`` and ``padding`` zeros, normalised over the clip."""
        log_mel = self.log_power(audio, padding)
        return self.normalize(log_mel, out=log_mel)
