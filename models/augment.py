"""Augmentation of synthetic speech, every draw from the example's own seeded generator.

Speed perturbation the Kaldi way (resampling, which moves tempo and pitch together), the silence a
TTS leaves around the speech trimmed to a short random pad, white or pink noise at a random SNR (or
none), and a random level.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.errors import EdgeAsrError

FRAME = SAMPLE_RATE // 100  # 10 ms frames for finding where the speech starts and ends
SILENCE_DB = -40.0  # a frame this far below the loudest frame is silence


@dataclass(frozen=True)
class AugmentOptions:
    speed_range: tuple[float, float] = (0.9, 1.1)
    noise_probability: float = 0.7
    snr_range_db: tuple[float, float] = (10.0, 30.0)
    pink_probability: float = 0.5  # of the noisy examples, those with pink rather than white noise
    peak_range_db: tuple[float, float] = (-20.0, -1.0)  # the loudest sample, dB below full scale
    pad_range_s: tuple[float, float] = (0.1, 0.3)  # silence kept before and after the speech

    def validate(self) -> None:
        for name in ("speed_range", "snr_range_db", "peak_range_db", "pad_range_s"):
            low, high = getattr(self, name)
            if low > high:
                raise EdgeAsrError(f"{name} must be (low, high) with low <= high, not {(low, high)}.")
        if not 0 < self.speed_range[0]:
            raise EdgeAsrError(f"speed factors must be positive, not {self.speed_range}.")
        if self.peak_range_db[1] > 0 or self.pad_range_s[0] < 0:
            raise EdgeAsrError("peak levels must be at most 0 dB and pads at least 0 s.")
        for name in ("noise_probability", "pink_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise EdgeAsrError(f"{name} must be between 0 and 1, not {getattr(self, name)}.")


@dataclass(frozen=True)
class Augmented:
    audio: np.ndarray  # float32, 16 kHz
    speed: float
    snr_db: float | None  # None: clean


def augment(audio: np.ndarray, rng: np.random.Generator, options: AugmentOptions) -> Augmented:
    speed = float(rng.uniform(*options.speed_range))
    audio = trim_silence(speed_perturb(audio, speed), *rng.uniform(*options.pad_range_s, size=2))
    snr_db = float(rng.uniform(*options.snr_range_db)) if rng.random() < options.noise_probability else None
    if snr_db is not None:
        colour = "pink" if rng.random() < options.pink_probability else "white"
        audio = add_noise(audio, snr_db, colour, rng)
    return Augmented(set_peak(audio, float(rng.uniform(*options.peak_range_db))), speed, snr_db)


def speed_perturb(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play `factor` times as fast: the samples read as if recorded at SAMPLE_RATE * factor."""
    return soxr.resample(audio, SAMPLE_RATE * factor, SAMPLE_RATE, quality="HQ").astype(np.float32)


def trim_silence(audio: np.ndarray, pad_before_s: float, pad_after_s: float) -> np.ndarray:
    """The speech with exactly the given silence before and after it (zeros added where the TTS left less)."""
    frames = len(audio) // FRAME
    if frames == 0:
        return audio
    energy = np.square(audio[: frames * FRAME].reshape(frames, FRAME)).mean(axis=1)
    if energy.max() == 0:
        return audio[:0]
    loud = np.flatnonzero(energy > energy.max() * 10 ** (SILENCE_DB / 10))
    start, end = loud[0] * FRAME, (loud[-1] + 1) * FRAME
    before, after = round(pad_before_s * SAMPLE_RATE), round(pad_after_s * SAMPLE_RATE)
    head = audio[max(0, start - before) : start]
    tail = audio[end : end + after]
    return np.concatenate([np.zeros(before - len(head), np.float32), head, audio[start:end], tail,
                           np.zeros(after - len(tail), np.float32)]).astype(np.float32)


def add_noise(audio: np.ndarray, snr_db: float, colour: str, rng: np.random.Generator) -> np.ndarray:
    """The audio plus white or pink (1/f power) noise, scaled so the whole clip has the given SNR."""
    noise = rng.standard_normal(len(audio))
    if colour == "pink":
        spectrum = np.fft.rfft(noise)
        spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
        noise = np.fft.irfft(spectrum, len(audio))
    signal_power = np.mean(np.square(audio, dtype=np.float64))
    noise *= np.sqrt(signal_power / 10 ** (snr_db / 10) / max(np.mean(np.square(noise)), 1e-30))
    return (audio + noise).astype(np.float32)


def set_peak(audio: np.ndarray, peak_db: float) -> np.ndarray:
    peak = float(np.max(np.abs(audio), initial=0.0))
    return audio if peak == 0 else (audio * (10 ** (peak_db / 20) / peak)).astype(np.float32)
