"""Augmentation of synthetic speech toward real rooms and devices, every draw from the example's own
seeded generator.

In order: speed perturbation the Kaldi way (resampling, which moves tempo and pitch together), the
silence a TTS leaves around the speech trimmed to a short random pad, room reverberation (a synthetic
impulse response), a device's band (a telephone's 300-3400 Hz, or a cheap microphone's), a lossy codec
round trip (MP3 or Ogg Vorbis at a low bitrate), background sound at 0-30 dB SNR (noise of three
colours, or non-speech such as hum, clicks, chords or breathing), and a random level.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from edge_asr.models.nonspeech import coloured_noise, nonspeech
from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.errors import EdgeAsrError

BACKGROUNDS = ("white", "pink", "brown", "hum", "clicks", "chords", "breath", "beeps")
CODECS = (("MP3", "MPEG_LAYER_III"), ("OGG", "VORBIS"))

FRAME = SAMPLE_RATE // 100  # 10 ms frames for finding where the speech starts and ends
SILENCE_DB = -40.0  # a frame this far below the loudest frame is silence


@dataclass(frozen=True)
class AugmentOptions:
    speed_range: tuple[float, float] = (0.9, 1.1)
    noise_probability: float = 0.6  # background sound at snr_range_db
    snr_range_db: tuple[float, float] = (0.0, 30.0)
    reverb_probability: float = 0.3
    rt60_range_s: tuple[float, float] = (0.15, 0.9)  # how long the room's echo takes to fall by 60 dB
    band_probability: float = 0.2  # a telephone's or a cheap microphone's band
    codec_probability: float = 0.15
    peak_range_db: tuple[float, float] = (-30.0, -1.0)  # the loudest sample, dB below full scale
    pad_range_s: tuple[float, float] = (0.1, 0.3)  # silence kept before and after the speech

    def validate(self) -> None:
        for name in ("speed_range", "snr_range_db", "rt60_range_s", "peak_range_db", "pad_range_s"):
            low, high = getattr(self, name)
            if low > high:
                raise EdgeAsrError(f"{name} must be (low, high) with low <= high, not {(low, high)}.")
        if not 0 < self.speed_range[0] or not 0 < self.rt60_range_s[0]:
            raise EdgeAsrError(f"speed factors and reverberation times must be positive, not {self.speed_range} "
                               f"and {self.rt60_range_s}.")
        if self.peak_range_db[1] > 0 or self.pad_range_s[0] < 0:
            raise EdgeAsrError("peak levels must be at most 0 dB and pads at least 0 s.")
        for name in ("noise_probability", "reverb_probability", "band_probability", "codec_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise EdgeAsrError(f"{name} must be between 0 and 1, not {getattr(self, name)}.")


@dataclass(frozen=True)
class Augmented:
    audio: np.ndarray  # float32, 16 kHz
    speed: float
    snr_db: float | None  # None: clean
    effects: tuple[str, ...] = ()  # what else was done, e.g. ("reverb", "telephone", "mp3", "hum")


def augment(audio: np.ndarray, rng: np.random.Generator, options: AugmentOptions) -> Augmented:
    speed = float(rng.uniform(*options.speed_range))
    audio = trim_silence(speed_perturb(audio, speed), *rng.uniform(*options.pad_range_s, size=2))
    effects = []
    if rng.random() < options.reverb_probability:
        audio = reverberate(audio, float(rng.uniform(*options.rt60_range_s)), rng)
        effects.append("reverb")
    if rng.random() < options.band_probability:
        band = "telephone" if rng.random() < 0.5 else "cheap-mic"
        audio = band_limit(audio, band, rng)
        effects.append(band)
    if rng.random() < options.codec_probability:
        codec = CODECS[int(rng.integers(len(CODECS)))]
        audio = codec_round_trip(audio, codec, float(rng.uniform(0.5, 0.95)))
        effects.append(codec[1].lower().replace("mpeg_layer_iii", "mp3"))
    snr_db = float(rng.uniform(*options.snr_range_db)) if rng.random() < options.noise_probability else None
    if snr_db is not None:
        background = str(rng.choice(BACKGROUNDS))
        audio = add_noise(audio, snr_db, background, rng)
        effects.append(background)
    return Augmented(set_peak(audio, float(rng.uniform(*options.peak_range_db))), speed, snr_db, tuple(effects))


def reverberate(audio: np.ndarray, rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """The audio in a room: convolved with a direct path plus exponentially decaying noise (the late
    reverberation of a room whose RT60 is ``rt60_s``), at a drawn direct-to-reverberant ratio."""
    n = round(rt60_s * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * 10 ** (-3 * t / rt60_s)  # -60 dB at rt60_s
    delay = round(rng.uniform(0.002, 0.02) * SAMPLE_RATE)  # the first reflection comes after the direct sound
    tail[:delay] = 0
    tail *= 10 ** (-rng.uniform(0, 12) / 20) / max(float(np.sqrt(np.sum(np.square(tail)))), 1e-12)
    response = np.concatenate([[1.0], tail[1:]])
    wet = np.fft.irfft(np.fft.rfft(audio, len(audio) + n) * np.fft.rfft(response, len(audio) + n))[: len(audio)]
    return wet.astype(np.float32)


def band_limit(audio: np.ndarray, band: str, rng: np.random.Generator) -> np.ndarray:
    """A telephone's band (8 kHz sampling, 300-3400 Hz) or a cheap microphone's (weak lows, highs cut at 4-7 kHz)."""
    if band == "telephone":
        narrow = soxr.resample(audio, SAMPLE_RATE, 8000, quality="HQ")
        audio = soxr.resample(narrow, 8000, SAMPLE_RATE, quality="HQ")[: len(audio)]
        low, high = 300.0, 3400.0
    else:
        low, high = rng.uniform(100, 400), rng.uniform(4000, 7000)
    spectrum = np.fft.rfft(audio)
    freqs = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    gain = 1 / np.sqrt(1 + (low / np.maximum(freqs, 1)) ** 4) / np.sqrt(1 + (freqs / high) ** 8)  # 2nd/4th-order slopes
    return np.fft.irfft(spectrum * gain, len(audio)).astype(np.float32)


def codec_round_trip(audio: np.ndarray, codec: tuple[str, str], quality: float) -> np.ndarray:
    """The audio encoded with a lossy codec at low quality (``quality`` 0-1 of libsndfile's compression
    level, 1 the most compressed) and decoded again, cut or padded to its length."""
    buffer = io.BytesIO()
    peak = float(np.max(np.abs(audio), initial=0.0))
    scaled = audio / peak * 0.9 if peak > 0.9 else audio  # the codec clips what the level change fixes later
    sf.write(buffer, scaled, SAMPLE_RATE, format=codec[0], subtype=codec[1], compression_level=quality)
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    decoded = decoded[: len(audio)]
    return np.concatenate([decoded, np.zeros(len(audio) - len(decoded), np.float32)])


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


def add_noise(audio: np.ndarray, snr_db: float, background: str, rng: np.random.Generator) -> np.ndarray:
    """The audio plus a background (white, pink or brown noise, or a kind of non-speech), scaled so the
    whole clip has the given SNR."""
    if background in ("white", "pink", "brown"):
        noise = coloured_noise(len(audio), background, rng)
    else:
        noise = nonspeech(rng, background, len(audio) / SAMPLE_RATE)[0].astype(np.float64)
    signal_power = np.mean(np.square(audio, dtype=np.float64))
    noise *= np.sqrt(signal_power / 10 ** (snr_db / 10) / max(np.mean(np.square(noise)), 1e-30))
    return (audio + noise).astype(np.float32)


def set_peak(audio: np.ndarray, peak_db: float) -> np.ndarray:
    peak = float(np.max(np.abs(audio), initial=0.0))
    return audio if peak == 0 else (audio * (10 ** (peak_db / 20) / peak)).astype(np.float32)
