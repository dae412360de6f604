"""`transcribe --vad`: speech found, joined and packed into windows cut at pauses, times back in the file's."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from conftest import run_cli
from edge_asr.runtime.audio import SAMPLE_RATE, load_audio
from edge_asr.runtime.decoding.transcribe import transcribe
from edge_asr.runtime.engines.timed import TimedEngine
from edge_asr.runtime.mel import FRAMES_PER_SECOND
from edge_asr.runtime.speech_windows import OFFLINE_VAD, SpeechMap, find_speech
from edge_asr.runtime.transcript import Segment, WindowResult

S = SAMPLE_RATE


def test_joined_speech_is_the_regions_samples_whatever_the_chunks():
    audio = np.arange(10 * S, dtype=np.float32)
    speech = SpeechMap(((S, 2 * S), (int(2.5 * S), 4 * S), (9 * S, 10 * S)), len(audio))
    expected = np.concatenate([audio[S : 2 * S], audio[int(2.5 * S) : 4 * S], audio[9 * S :]])
    for size in (1000, S, 3 * S + 17, len(audio)):
        chunks = (audio[at : at + size] for at in range(0, len(audio), size))
        assert np.array_equal(np.concatenate(list(speech.joined(chunks))), expected)
    assert speech.samples == len(expected)


def test_regions_are_packed_into_windows_that_end_between_regions():
    # regions of 12, 12, 10, 35 and 3 s (joined: 0-12, 12-24, 24-34, 34-69, 69-72)
    lengths = (12, 12, 10, 35, 3)
    regions, at = [], 0
    for length in lengths:
        regions.append((at * S, (at + length) * S))
        at += length + 5  # 5 s of silence between
    speech = SpeechMap(tuple(regions), at * S)
    ends = speech.window_ends(30 * FRAMES_PER_SECOND)
    # 12 + 12 fit in 30 s, + 10 does not; 10 alone; the 35 s region alone (decoded in parts); then 3 s
    assert ends == [24 * FRAMES_PER_SECOND, 34 * FRAMES_PER_SECOND, 69 * FRAMES_PER_SECOND]


def test_joined_times_map_back_to_the_file():
    speech = SpeechMap(((2 * S, 5 * S), (10 * S, 12 * S)), 20 * S)
    assert speech.file_time(0.0) == 2.0
    assert speech.file_time(1.5) == 3.5
    assert speech.file_time(3.0) == 10.0  # where the regions meet: the later one's start...
    assert speech.file_time(3.0, end=True) == 5.0  # ...or, for an end, the earlier one's end
    assert speech.file_time(4.0, end=True) == 11.0
    window = WindowResult(0.0, 5.0, "en", [Segment(start=1.0, end=3.0, text=" a", tokens=[1]),
                                           Segment(start=3.0, end=4.5, text=" b", tokens=[2])])
    moved = speech.to_file(window)
    assert (moved.start, moved.end) == (2.0, 12.0)
    assert [(s.start, s.end) for s in moved.segments] == [(3.0, 5.0), (10.0, 11.5)]


def loud_is_speech(window: np.ndarray) -> float:
    """A stand-in VAD: a window with sound is speech."""
    return 1.0 if np.abs(window).max() > 0.1 else 0.0


def test_speech_is_found_with_its_padding_and_short_pauses_kept_inside():
    audio = np.zeros(20 * S, np.float32)
    tone = 0.5 * np.sin(np.arange(S) * 2 * np.pi * 440 / S).astype(np.float32)
    for start in (3, 4.5, 12):  # a 0.5 s pause (kept inside), then 6.5 s of silence
        audio[int(start * S) : int(start * S) + S] = tone
    speech = find_speech((audio[at : at + 4000] for at in range(0, len(audio), 4000)), loud_is_speech)
    assert speech.file_samples == len(audio)
    pad_before, pad_after = OFFLINE_VAD.pad_before_ms / 1000, OFFLINE_VAD.pad_after_ms / 1000
    assert [(round(a / S, 1), round(b / S, 1)) for a, b in speech.regions] == [
        (3 - pad_before, 5.5 + pad_after), (12 - pad_before, 13 + pad_after)]


def test_windows_never_cross_a_window_end(transcriber, jfk_wav):
    """The decoding loop cuts windows at the given ends, even where 30 s would fit."""
    engine = TimedEngine(transcriber.engine)
    mel = transcriber.features(np.tile(load_audio(jfk_wav), 3))  # 33 s of speech
    ends = [int(4.0 * FRAMES_PER_SECOND), int(15.0 * FRAMES_PER_SECOND)]
    windows = list(transcribe(engine, transcriber.tokenizer, mel, transcriber.options(), window_ends=ends))
    assert windows[0].end <= 4.0 and any(w.end == 15.0 for w in windows)
    assert all(not (w.start < 4.0 < w.end or w.start < 15.0 < w.end) for w in windows)


@pytest.fixture(scope="module")
def transcriber(tiny_bundle):
    from edge_asr.runtime.transcriber import Transcriber

    return Transcriber(tiny_bundle, threads=2)


def speech_in_silence(jfk_wav, tmp_path, before_s=40.0, after_s=25.0):
    rng = np.random.default_rng(0)
    speech = load_audio(jfk_wav)
    quiet = lambda seconds: (1e-3 * rng.standard_normal(int(seconds * S))).astype(np.float32)  # noqa: E731
    path = tmp_path / "jfk-in-silence.wav"
    sf.write(path, np.concatenate([quiet(before_s), speech, quiet(after_s)]), S)
    return path, before_s, before_s + len(speech) / S


def test_vad_keeps_the_words_encodes_only_the_speech_and_keeps_the_files_times(transcriber, vad_model, jfk_wav,
                                                                                tmp_path):
    path, speech_start, speech_end = speech_in_silence(jfk_wav, tmp_path)
    timed = transcriber.engine = TimedEngine(transcriber.engine)
    try:
        whole = transcriber.transcribe(path)
        whole_frames = timed.encoder_frames
        timed.reset()
        speech_only = transcriber.transcribe(path, vad=OFFLINE_VAD)
        vad_frames = timed.encoder_frames
    finally:
        transcriber.engine = timed.engine
    words = lambda t: t.text.lower().replace(",", "").replace(".", "").split()  # noqa: E731
    assert words(speech_only) == words(transcriber.transcribe(jfk_wav))
    assert speech_only.duration == whole.duration
    assert vad_frames == 3000 and whole_frames >= 3 * 3000  # one 30 s window against every window of the file
    starts = [s.start for s in speech_only.segments]
    assert speech_start - 0.5 <= starts[0] <= speech_start + 1.0
    assert speech_start <= speech_only.segments[-1].end <= speech_end + 0.5


def test_transcribe_vad_on_the_command_line(tiny_bundle, vad_model, jfk_wav, tmp_path):
    path, speech_start, _ = speech_in_silence(jfk_wav, tmp_path, before_s=12.0, after_s=3.0)
    out = run_cli("transcribe", "--vad", "--format", "json", "--no-progress", "--bundle", tiny_bundle, path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert "ask not what your country can do for you" in doc["text"].lower().replace(",", "")
    assert doc["segments"][0]["start"] >= speech_start - 0.5
    silent = tmp_path / "silence.wav"
    sf.write(silent, np.zeros(5 * S, np.float32), S)
    out = run_cli("transcribe", "--vad", "--no-progress", "--bundle", tiny_bundle, silent)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stderr


def test_transcribe_vad_with_a_missing_vad_model_is_one_sentence(tiny_bundle, jfk_wav):
    out = run_cli("transcribe", "--vad", "--vad-model", "/nonexistent.onnx", "--bundle", tiny_bundle, jfk_wav)
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1 and "/nonexistent.onnx" in lines[0], out.stderr
