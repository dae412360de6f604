"""LogMelFrontend against openai-whisper's log_mel_spectrogram, recomputed here with torch.stft."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from edge_asr.runtime.mel import (
    HOP_LENGTH,
    N_FFT,
    N_SAMPLES,
    LogMelFrontend,
    hann_window,
    mel_filters,
)

DATA = Path(__file__).parent / "data"
RATE = 16000
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def openai_filters() -> dict[int, np.ndarray]:
    with np.load(DATA / "mel_filters.npz") as f:
        return {80: f["mel_80"], 128: f["mel_128"]}


def reference(audio: np.ndarray, filters: np.ndarray, padding: int = 0) -> np.ndarray:
    """openai-whisper 20250625, whisper/audio.py:log_mel_spectrogram, step for step."""
    audio = torch.from_numpy(audio)
    if padding > 0:
        audio = F.pad(audio, (0, padding))
    window = torch.hann_window(N_FFT)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    mel_spec = torch.from_numpy(filters) @ magnitudes
    log_spec = torch.clamp(mel_spec, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).numpy()


def noise(seconds: float = 30.0) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(int(seconds * RATE))).astype(np.float32)


def sine() -> np.ndarray:
    t = np.arange(10 * RATE) / RATE
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def speech_like() -> np.ndarray:
    """Harmonics of a gliding pitch, in syllable-rate bursts with pauses, over faint noise."""
    t = np.arange(8 * RATE) / RATE
    phase = 2 * np.pi * np.cumsum(120 + 40 * np.sin(2 * np.pi * 0.5 * t)) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 20))
    syllables = np.maximum(0, np.sin(2 * np.pi * 3 * t)) * (np.sin(2 * np.pi * 0.25 * t) > -0.5)
    audio = 0.2 * voice * syllables + 0.002 * np.random.default_rng(1).standard_normal(len(t))
    return audio.astype(np.float32)


def jfk() -> np.ndarray:
    return sf.read(DATA / "jfk.wav", dtype="float32")[0]


SIGNALS = {"noise": noise, "sine": sine, "speech_like": speech_like, "jfk": jfk}


@pytest.mark.parametrize("n_mels", [80, 128])
def test_filterbank_is_openai_whisper_s(n_mels, openai_filters):
    np.testing.assert_allclose(mel_filters(n_mels), openai_filters[n_mels], rtol=1e-5, atol=1e-8)


def test_window_is_torch_periodic_hann():
    np.testing.assert_allclose(hann_window(), torch.hann_window(N_FFT).numpy(), atol=1e-6)


@pytest.mark.parametrize("signal", SIGNALS)
@pytest.mark.parametrize("n_mels", [80, 128])
def test_matches_openai_whisper(signal, n_mels, openai_filters):
    audio = SIGNALS[signal]()
    ours = LogMelFrontend(n_mels)(audio)
    expected = reference(audio, openai_filters[n_mels])
    assert ours.dtype == np.float32
    assert ours.shape == expected.shape == (n_mels, len(audio) // HOP_LENGTH)
    assert np.abs(ours - expected).max() < TOLERANCE


def test_long_input_spans_several_blocks(openai_filters):
    audio = noise(seconds=65.3)  # 6530 frames: three transform blocks, the last one partial
    ours = LogMelFrontend(80)(audio)
    assert np.abs(ours - reference(audio, openai_filters[80])).max() < TOLERANCE


@pytest.mark.parametrize("padding", [1, 159, 160, N_SAMPLES])
def test_padding_appends_zero_samples_first(padding, openai_filters):
    audio = speech_like()[: 3 * RATE + 77]
    frontend = LogMelFrontend(80)
    ours = frontend(audio, padding=padding)
    assert ours.shape == (80, (len(audio) + padding) // HOP_LENGTH)
    assert np.abs(ours - reference(audio, openai_filters[80], padding)).max() < TOLERANCE
    padded = np.concatenate([audio, np.zeros(padding, np.float32)])
    np.testing.assert_array_equal(ours, frontend(padded))


@pytest.mark.parametrize("length", [201, 320, 399])
def test_short_input_matches_openai_whisper(length, openai_filters):
    audio = noise()[:length]
    ours = LogMelFrontend(80)(audio)
    assert ours.shape == (80, length // HOP_LENGTH)
    assert np.abs(ours - reference(audio, openai_filters[80])).max() < TOLERANCE


@pytest.mark.parametrize("length", [0, 1, 159])
def test_input_shorter_than_a_hop_has_no_frames(length):
    assert LogMelFrontend(128)(noise()[:length]).shape == (128, 0)


@pytest.mark.parametrize("length", [160, 200])
def test_input_too_short_for_torch_reflect_padding_still_gives_a_frame(length):
    # torch.stft refuses a reflect pad of 200 on <= 200 samples; numpy reflects repeatedly.
    mel = LogMelFrontend(80)(noise()[:length])
    assert mel.shape == (80, 1)
    assert np.isfinite(mel).all()
