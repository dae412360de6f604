"""A recording's features window by window (runtime/recording_mel.py): openai's values, at flat memory."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from edge_asr.runtime.audio import SAMPLE_RATE, AudioFile, load_audio
from edge_asr.runtime.mel import HOP_LENGTH, N_SAMPLES, LogMelFrontend
from edge_asr.runtime.recording_mel import RecordingMel
from edge_asr.runtime.transcriber import Transcriber

FRONTEND = LogMelFrontend(80)


@pytest.mark.parametrize("samples", [100, 170, 199, 201, 1234, 3 * SAMPLE_RATE + 77, 70 * SAMPLE_RATE + 5])
def test_windows_equal_the_whole_recordings_features(samples):
    """Every window, and the peak, as openai's log_mel_spectrogram(padding=N_SAMPLES) of the whole clip: also
    clips under one STFT frame (reflected), lengths off the hop, and windows that go back."""
    rng = np.random.default_rng(samples)
    audio = (rng.standard_normal(samples) * np.linspace(0.01, 0.5, samples)).astype(np.float32)
    whole = FRONTEND(audio, padding=N_SAMPLES)[:, : samples // HOP_LENGTH]
    mel = RecordingMel.of_array(FRONTEND, audio)
    assert (mel.samples, mel.frames) == (samples, whole.shape[1])
    if not mel.frames:
        assert mel.peak is None
        return
    assert mel.peak == pytest.approx(float(whole.max()), abs=1e-6)
    frames = mel.frames
    for start, stop in [(0, min(frames, 3000)), (frames // 2, frames), (max(0, frames - 3000), frames), (0, min(frames, 7))]:
        np.testing.assert_allclose(mel.window(start, stop), whole[:, start:stop], atol=1e-5)


def test_a_long_file_is_transcribed_at_flat_memory(tiny_bundle, jfk_wav, tmp_path):
    """20 minutes with JFK at 10 minutes: the words at their time, while Python's allocations stay far below the
    file's 77 MB of samples (before: the samples, the whole Mel and its padded copies, 0.66 GB an hour)."""
    path = tmp_path / "long.wav"
    jfk = load_audio(jfk_wav)
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16") as out:
        silence = np.zeros(60 * SAMPLE_RATE, np.float32)
        for minute in range(20):
            out.write(jfk if minute == 10 else silence)
    transcriber = Transcriber(tiny_bundle, threads=2)
    tracemalloc.start()
    try:
        segments = [s for w in transcriber.windows(AudioFile(path), transcriber.options()) for s in w.segments]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    text = " ".join(s.text for s in segments).lower()
    assert "ask not what your country can do for you" in text
    assert 599.0 <= segments[0].start <= 601.5
    assert peak < 20e6, f"{peak / 1e6:.0f} MB allocated at the peak"
