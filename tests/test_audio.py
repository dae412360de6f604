"""load_audio: any rate and channel count in, 16 kHz mono float32 out; bad files: AudioError."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from edge_asr.runtime.audio import BLOCK_FRAMES, SAMPLE_RATE, load_audio
from edge_asr.runtime.errors import AudioError

JFK = Path(__file__).parent / "data" / "jfk.wav"


def stereo_sine(rate: int, seconds: float, hz: float = 1000.0) -> np.ndarray:
    """One tone in both channels, at amplitudes 0.6 and 0.2: their mean has amplitude 0.4."""
    tone = np.sin(2 * np.pi * hz * np.arange(round(seconds * rate)) / rate)
    return np.stack([0.6 * tone, 0.2 * tone], axis=1).astype(np.float32)


def dominant_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.argmax(spectrum) * SAMPLE_RATE / len(audio)


def amplitude(audio: np.ndarray) -> float:
    middle = audio[len(audio) // 4 : -len(audio) // 4]  # away from the resampler's edges
    return float(np.sqrt(2 * np.mean(middle.astype(np.float64) ** 2)))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resamples_and_mixes_down(tmp_path, rate):
    path = tmp_path / "tone.wav"
    sf.write(path, stereo_sine(rate, 2.5), rate, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == 2.5 * SAMPLE_RATE
    assert dominant_hz(audio) == pytest.approx(1000, abs=1)
    assert amplitude(audio) == pytest.approx(0.4, abs=1e-3)


def test_16khz_mono_comes_back_unchanged():
    expected, rate = sf.read(JFK, dtype="float32")
    assert rate == SAMPLE_RATE
    np.testing.assert_array_equal(load_audio(str(JFK)), expected)


def test_blockwise_reading_equals_one_shot_resampling(tmp_path):
    noise = 0.1 * np.random.default_rng(0).standard_normal((3 * BLOCK_FRAMES + 1234, 2))
    noise = noise.astype(np.float32)
    path = tmp_path / "noise.wav"
    sf.write(path, noise, 44100, subtype="FLOAT")
    expected = soxr.resample(noise.mean(axis=1), 44100, SAMPLE_RATE, quality="HQ")
    np.testing.assert_allclose(load_audio(path), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("ext", "subtype"), [("flac", "PCM_16"), ("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III")]
)
def test_compressed_formats(tmp_path, ext, subtype):
    path = tmp_path / f"tone.{ext}"
    sf.write(path, stereo_sine(48000, 2.0, hz=440), 48000, subtype=subtype)
    audio = load_audio(path)
    assert len(audio) == pytest.approx(2 * SAMPLE_RATE, abs=1200)  # lossy codecs pad a little
    assert dominant_hz(audio) == pytest.approx(440, abs=1)
    assert amplitude(audio) == pytest.approx(0.4, abs=0.02)


def encoded(tmp_path, ext: str) -> bytes:
    path = tmp_path / f"good.{ext}"
    sf.write(path, stereo_sine(16000, 0.5), 16000)
    return path.read_bytes()


def first_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD_FILES = {  # name: (its content, made in tmp_path; what the message must say)
    "empty.wav": (lambda tmp: b"", "is empty"),
    "notes.txt": (lambda tmp: b"hello, world\n" * 20, "not an audio file"),
    "notes.wav": (lambda tmp: b"hello, world\n" * 20, "not an audio file"),
    "header.wav": (lambda tmp: encoded(tmp, "wav")[:30], "corrupt or truncated"),
    "half.flac": (lambda tmp: first_half(encoded(tmp, "flac")), "corrupt or truncated"),
    "samples.raw": (lambda tmp: encoded(tmp, "wav"), "RAW audio is not supported"),
}


@pytest.mark.parametrize("filename", BAD_FILES)
def test_bad_file_raises_one_sentence_naming_it(tmp_path, filename):
    content, reason = BAD_FILES[filename]
    path = tmp_path / filename
    path.write_bytes(content(tmp_path))
    with pytest.raises(AudioError) as caught:
        load_audio(path)
    message = str(caught.value)
    assert f"'{path}'" in message and reason in message
    assert message.endswith(".") and "\n" not in message


def test_zero_samples(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((0, 2), np.float32), 16000)
    with pytest.raises(AudioError, match="holds no audio samples") as caught:
        load_audio(path)
    assert str(path) in str(caught.value)


def test_missing_file_and_directory(tmp_path):
    for path, says in ((tmp_path / "nowhere.wav", "there is no such file"), (tmp_path, "it is a directory")):
        with pytest.raises(AudioError, match=says) as caught:
            load_audio(path)
        assert f"'{path}'" in str(caught.value)


def test_non_finite_samples_are_refused(tmp_path):
    path = tmp_path / "nan.wav"
    audio = np.zeros(16000, np.float32)
    audio[100] = np.nan
    sf.write(path, audio, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(path)
