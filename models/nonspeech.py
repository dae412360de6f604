"""Sounds that are not speech, for a student to learn to stay silent where its teacher does.

Each kind is a pure function of a seeded generator and a length: noise of three colours, steady and
swept tones, beeps, chimes, clicks, mains hum, music-like chords, breathing-like noise, near
silence, and mixtures of two. Levels are drawn too, from near silence to loud. The label is not
written here: the teacher's own result on a 30 s window is the target (models/teacher_labels.py).
"""
from __future__ import annotations

import numpy as np

from edge_asr.runtime.audio import SAMPLE_RATE

KINDS = ("white", "pink", "brown", "tone", "sweep", "beeps", "chime", "clicks", "hum", "chords", "breath",
         "silence", "mixture")
DURATION_RANGE_S = (0.5, 30.0)


def nonspeech(rng: np.random.Generator, kind: str | None = None, seconds: float | None = None) -> tuple[np.ndarray, str]:
    """(16 kHz float32 audio, its kind): ``kind`` or one drawn, ``seconds`` or a length drawn (more short
    ones than long, as in live audio)."""
    kind = kind or str(rng.choice(KINDS))
    if seconds is None:
        seconds = float(np.exp(rng.uniform(np.log(DURATION_RANGE_S[0]), np.log(DURATION_RANGE_S[1]))))
    n = max(1, round(seconds * SAMPLE_RATE))
    if kind == "mixture":
        first, second = rng.choice(KINDS[:-2], 2, replace=False)
        audio = _make(str(first), n, rng) + _make(str(second), n, rng) * rng.uniform(0.1, 1.0)
    else:
        audio = _make(kind, n, rng)
    peak_db = rng.uniform(-60.0, -30.0) if kind == "silence" else rng.uniform(-40.0, -1.0)
    return _scaled(audio, peak_db), kind


def _make(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    if kind in ("white", "pink", "brown", "silence"):
        return coloured_noise(n, "white" if kind == "silence" else kind, rng)
    if kind == "tone":
        return np.sin(2 * np.pi * rng.uniform(80, 4000) * t) * _fades(n, rng)
    if kind == "sweep":
        low, high = sorted(rng.uniform(100, 6000, 2))
        phase = 2 * np.pi * np.cumsum(np.geomspace(low, high, n)) / SAMPLE_RATE
        return np.sin(phase if rng.random() < 0.5 else phase[::-1])
    if kind == "beeps":
        return _events(n, rng, lambda m: np.sin(2 * np.pi * rng.uniform(400, 3000) * np.arange(m) / SAMPLE_RATE),
                       length_s=(0.05, 0.4), rate_per_s=(0.5, 4))
    if kind == "chime":
        return _events(n, rng, lambda m: _chime(m, rng), length_s=(0.5, 3.0), rate_per_s=(0.2, 1.5))
    if kind == "clicks":
        return _events(n, rng, lambda m: rng.standard_normal(m) * np.exp(-np.arange(m) / (0.002 * SAMPLE_RATE)),
                       length_s=(0.005, 0.03), rate_per_s=(1, 15))
    if kind == "hum":
        base = float(rng.choice([50.0, 60.0]))
        return sum(np.sin(2 * np.pi * base * h * t + rng.uniform(0, 6.3)) / h for h in range(1, 8)) + \
            0.05 * coloured_noise(n, "white", rng)
    if kind == "chords":
        return _chords(n, rng)
    if kind == "breath":
        envelope = 0.05 + np.maximum(np.sin(2 * np.pi * rng.uniform(0.2, 0.5) * t + rng.uniform(0, 6.3)), 0) ** 2
        return _band(coloured_noise(n, "white", rng), rng.uniform(200, 800), rng.uniform(1500, 5000)) * envelope
    raise ValueError(f"unknown kind of non-speech: {kind}")


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f^2 power) noise of unit power."""
    noise = rng.standard_normal(n)
    if colour != "white":
        spectrum = np.fft.rfft(noise)
        spectrum /= np.maximum(np.arange(len(spectrum)), 1) ** (0.5 if colour == "pink" else 1.0)
        noise = np.fft.irfft(spectrum, n)
    return noise / max(float(np.sqrt(np.mean(np.square(noise)))), 1e-12)


def _events(n: int, rng: np.random.Generator, make, length_s: tuple[float, float], rate_per_s: tuple[float, float]):
    """Sounds made by ``make(samples)`` at random times, at a drawn rate (at least one)."""
    audio = np.zeros(n)
    count = max(1, rng.poisson(rng.uniform(*rate_per_s) * n / SAMPLE_RATE))
    for _ in range(count):
        m = min(n, max(1, round(rng.uniform(*length_s) * SAMPLE_RATE)))
        start = int(rng.integers(0, n - m + 1))
        audio[start : start + m] += make(m) * _fades(m, rng) * rng.uniform(0.3, 1.0)
    return audio


def _chime(m: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(m) / SAMPLE_RATE
    base = rng.uniform(300, 1500)
    partials = sum(np.sin(2 * np.pi * base * ratio * t) / (1 + k) for k, ratio in enumerate((1, 2.0, 2.76, 5.4)))
    return partials * np.exp(-t / rng.uniform(0.2, 1.0))


def _chords(n: int, rng: np.random.Generator) -> np.ndarray:
    """A progression of triads, each note a few decaying harmonics, like a keyboard playing."""
    audio = np.zeros(n)
    length = round(rng.uniform(0.3, 2.0) * SAMPLE_RATE)
    for start in range(0, n, length):
        m = min(length, n - start)
        t = np.arange(m) / SAMPLE_RATE
        root = 110 * 2 ** (rng.integers(0, 24) / 12)
        for step in ((0, 4, 7) if rng.random() < 0.5 else (0, 3, 7)):
            f = root * 2 ** (step / 12)
            audio[start : start + m] += sum(np.sin(2 * np.pi * f * h * t) / h**2 for h in (1, 2, 3)) * np.exp(-t / 0.8)
    return audio


def _band(audio: np.ndarray, low_hz: float, high_hz: float) -> np.ndarray:
    spectrum = np.fft.rfft(audio)
    freqs = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    spectrum[(freqs < low_hz) | (freqs > high_hz)] = 0
    return np.fft.irfft(spectrum, len(audio))


def _fades(n: int, rng: np.random.Generator) -> np.ndarray:
    """A window with short random fade-in and fade-out, so no sound starts with a click of its own."""
    fade = max(1, min(n // 2, round(rng.uniform(0.002, 0.05) * SAMPLE_RATE)))
    window = np.ones(n)
    window[:fade] = np.linspace(0, 1, fade)
    window[n - fade :] = np.linspace(1, 0, fade)
    return window


def _scaled(audio: np.ndarray, peak_db: float) -> np.ndarray:
    peak = float(np.max(np.abs(audio), initial=0.0))
    scaled = audio if peak == 0 else audio * (10 ** (peak_db / 20) / peak)
    return scaled.astype(np.float32)
