"""Streaming recognition on the real tiny.en weights: words as offline, nothing from silence, partials
that only grow, nothing heard lost at the end of a stream, and `edge-asr stream` as a user runs it."""
from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import soxr

from conftest import run_cli
from test_sources import FakeInputStream, mic
from edge_asr.models.clips import JFK, JFK_TEXT, developer_clips
from edge_asr.benchmarks.stream_wer import stream_text
from edge_asr.runtime.engines.timed import TimedEngine
from edge_asr.models.wer import corpus_wer, normalise
from edge_asr.runtime.audio import SAMPLE_RATE, load_audio
from edge_asr.runtime.errors import AudioError, ModelSourceError
from edge_asr.runtime.streaming import stream_command
from edge_asr.runtime.streaming.events import StreamEvent
from edge_asr.runtime.streaming.recognizer import StreamOptions, StreamRecognizer
from edge_asr.runtime.streaming.vad import SileroVad

BLOCK = 512  # samples a push, as `edge-asr stream --input` reads a file
JFK_CUT_S = 6.8  # in the middle of "do", after "country": what the clip holds up to here is known


@pytest.fixture(scope="module")
def transcriber(tiny_bundle):
    from edge_asr.runtime.transcriber import Transcriber

    return Transcriber(tiny_bundle, threads=2)


@pytest.fixture(scope="module")
def new_recognizer(transcriber, vad_model):
    """A fresh recognizer (its own VAD state) on the module's one transcriber."""

    def make(engine=None, **options) -> StreamRecognizer:
        return StreamRecognizer(engine or transcriber.engine, transcriber.tokenizer, SileroVad(vad_model),
                                transcriber.options(), StreamOptions(**options))

    return make


@pytest.fixture(scope="module")
def jfk_audio() -> np.ndarray:
    return load_audio(JFK)


def stream_events(recognizer: StreamRecognizer, audio: np.ndarray) -> tuple[list[StreamEvent], list[StreamEvent]]:
    """(events from the pushes, events from the flush)."""
    pushed = []
    for start in range(0, len(audio), BLOCK):
        pushed += recognizer.push(audio[start : start + BLOCK])
    return pushed, recognizer.flush()


def final_text(events: list[StreamEvent]) -> str:
    return " ".join(e.text for e in events if e.type == "final" and e.text)


def wer(reference: str, hypothesis: str) -> float:
    return corpus_wer([(reference, hypothesis)])


def seconds(s: float) -> int:
    return round(s * SAMPLE_RATE)


# --- words as offline -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_streaming_the_developer_clips_gives_the_offline_words(transcriber, new_recognizer):
    clips = developer_clips()  # JFK alone when the LibriVox clips are not installed
    offline = [transcriber.transcribe(c.path).text for c in clips]
    streamed = [stream_text(new_recognizer(), load_audio(c.path)) for c in clips]
    offline_wer = corpus_wer([(c.reference, t) for c, t in zip(clips, offline)])
    stream_wer = corpus_wer([(c.reference, t) for c, t in zip(clips, streamed)])
    differences = [(c.name, o, s) for c, o, s in zip(clips, offline, streamed) if normalise(o) != normalise(s)]
    assert stream_wer <= offline_wer + 1.0, (
        f"{len(clips)} clips: stream WER {stream_wer:.2f} %, offline WER {offline_wer:.2f} %; {differences}"
    )


# --- no speech, no text, no encoder -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zeros", "white noise", "faint noise"])
def test_silence_and_noise_give_no_events_and_never_run_the_encoder(transcriber, new_recognizer, kind):
    rng = np.random.default_rng(0)
    audio = {
        "zeros": np.zeros(seconds(10)),
        "white noise": 0.05 * rng.normal(size=seconds(10)),
        "faint noise": 10 ** (-60 / 20) * rng.normal(size=seconds(10)),  # -60 dBFS
    }[kind].astype(np.float32)
    engine = TimedEngine(transcriber.engine)
    pushed, flushed = stream_events(new_recognizer(engine), audio)
    assert pushed == [] and flushed == []
    assert engine.encoder_calls == 0


# --- speech -----------------------------------------------------------------------------------------------


def test_speech_after_silence_is_timed_from_the_start_of_the_stream(new_recognizer, jfk_audio):
    audio = np.concatenate([np.zeros(seconds(3), np.float32), jfk_audio, np.zeros(seconds(2), np.float32)])
    pushed, flushed = stream_events(new_recognizer(), audio)
    finals = [e for e in pushed + flushed if e.type == "final"]
    assert finals, pushed + flushed
    assert 2.5 <= finals[0].start <= 3.5, finals
    assert all(0 <= e.start < e.end <= len(audio) / SAMPLE_RATE for e in finals), finals
    assert [e.start for e in finals] == sorted(e.start for e in finals)
    assert wer(JFK_TEXT, final_text(finals)) <= 10, final_text(finals)


def test_partials_come_before_each_final_and_their_stable_text_only_grows(new_recognizer, jfk_audio):
    pushed, flushed = stream_events(new_recognizer(partial_interval_s=1.0), jfk_audio)
    partials: list[StreamEvent] = []
    finals = 0
    for event in pushed + flushed:
        if event.type == "partial":
            assert not partials or event.start == partials[0].start, "a partial of another utterance"
            partials.append(event)
            continue
        finals += 1
        assert partials, f"no partial before the final {event}"
        assert all(p.start == event.start for p in partials), (partials, event)
        for before, after in zip(partials, partials[1:]):
            assert after.text.startswith(before.text), f"stable text withdrawn: {before.text!r} -> {after.text!r}"
        partials = []
    assert finals >= 1 and partials == []


def test_a_partial_left_by_push_is_the_one_push_would_have_given(new_recognizer, jfk_audio):
    """A server pushes without partials and computes the due ones in turns of their own (serving/scheduler.py)."""
    inline, deferred = new_recognizer(partial_interval_s=1.0), new_recognizer(partial_interval_s=1.0)
    events, later, dues = [], [], 0
    for start in range(0, len(jfk_audio), BLOCK):
        block = jfk_audio[start : start + BLOCK]
        events += inline.push(block)
        later += deferred.push(block, partials=False)
        if deferred.partial_due:
            dues += 1
            later += deferred.partial()
            assert not deferred.partial_due and deferred.partial() == []
    assert later == events and dues == sum(e.type == "partial" for e in events) >= 5


def test_flush_turns_speech_cut_mid_word_into_a_final(new_recognizer, jfk_audio):
    audio = jfk_audio[: seconds(JFK_CUT_S)]  # no silence after: the VAD never hears the end of speech
    pushed, flushed = stream_events(new_recognizer(), audio)
    last = [e for e in flushed if e.type == "final"]
    assert len(last) == 1, flushed
    assert "country" in normalise(last[0].text), last[0]
    assert last[0].end == pytest.approx(JFK_CUT_S, abs=0.05)
    assert "country" not in normalise(final_text(pushed))  # that utterance was still open at the cut


# --- stream_command.run: how a stream ends ----------------------------------------------------------------


class ListSink:
    def __init__(self):
        self.events: list[StreamEvent] = []
        self.closed = False

    def write(self, event: StreamEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        self.closed = True


class BrokenSource:
    """Yields the audio block by block, then raises ``error``; ``held_back`` is what drain() gives."""

    def __init__(self, audio: np.ndarray, error: BaseException, held_back: np.ndarray | None = None):
        self.audio, self.error = audio, error
        self.held_back = np.zeros(0, np.float32) if held_back is None else held_back
        self.started_at = None
        self.stopped = False

    def blocks(self):
        self.started_at = time.monotonic()
        for start in range(0, len(self.audio), BLOCK):
            yield self.audio[start : start + BLOCK]
        raise self.error

    def stop(self) -> None:
        self.stopped = True

    def drain(self) -> np.ndarray:
        assert self.stopped, "drain() before stop()"
        held_back, self.held_back = self.held_back, np.zeros(0, np.float32)
        return held_back


JFK_TO_FOR_YOU = "And so my fellow Americans, ask not what your country can do for you"  # JFK up to 7.6 s


def test_ctrl_c_still_turns_everything_heard_into_final_text(new_recognizer, jfk_audio, capsys):
    # Ctrl-C mid-"do"; the source still holds the rest of "for you" (a microphone's ring): drain() gives it
    source = BrokenSource(jfk_audio[: seconds(JFK_CUT_S)], KeyboardInterrupt(),
                          held_back=jfk_audio[seconds(JFK_CUT_S) : seconds(7.6)])
    sink = ListSink()
    assert stream_command.run(source, new_recognizer(), sink) == 0
    assert source.stopped and sink.closed
    text = final_text(sink.events)
    assert wer(JFK_TO_FOR_YOU, text) <= 10, text
    assert normalise(text).endswith("for you"), text
    assert capsys.readouterr().err == ""


def test_an_audio_error_keeps_the_finals_before_it_and_is_one_sentence(new_recognizer, jfk_audio, capsys):
    error = AudioError("Cannot read audio from stdin: Input/output error.")
    source = BrokenSource(jfk_audio[: seconds(7.6)], error)
    sink = ListSink()
    assert stream_command.run(source, new_recognizer(), sink) == 1
    assert source.stopped and sink.closed
    text = final_text(sink.events)
    assert wer(JFK_TO_FOR_YOU, text) <= 10, text
    assert capsys.readouterr().err == "edge-asr: Cannot read audio from stdin: Input/output error.\n"


# --- the microphone path, with a fake PortAudio stream ----------------------------------------------------


def test_microphone_audio_becomes_final_text(new_recognizer, jfk_audio, capsys):
    rate = 48000
    audio = soxr.resample(jfk_audio, SAMPLE_RATE, rate, quality="HQ").astype(np.float32)
    fake = FakeInputStream(audio, frames=1024, pause=0.2 * 1024 / rate, then=lambda: source.stop())
    source = mic(fake)
    sink = ListSink()
    assert stream_command.run(source, new_recognizer(), sink) == 0
    fake.thread.join(5)
    assert fake.closed and sink.closed
    assert source.dropped_samples == 0 and capsys.readouterr().err == ""
    text = final_text(sink.events)
    assert wer(JFK_TEXT, text) <= 10, text


# --- `edge-asr stream` in a child process -----------------------------------------------------------------


def one_sentence(out: subprocess.CompletedProcess) -> str:
    assert out.returncode != 0, out
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-asr: "), out.stderr
    return lines[0]


def test_jsonl_has_partials_and_finals_with_the_promised_keys(tiny_bundle, vad_model, jfk_wav):
    out = run_cli("stream", "--input", jfk_wav, "--bundle", tiny_bundle, "--format", "jsonl")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert events
    for event in events:
        assert event["type"] in ("partial", "final"), event
        keys = {"type", "start", "end", "text"} | ({"unstable"} if event["type"] == "partial" else {"speech_end"})
        assert set(event) == keys, event
        assert 0 <= event["start"] <= event["end"] <= 11.0, event
        assert event["type"] == "partial" or event["start"] < event["speech_end"] <= event["end"], event
    finals = [e["text"] for e in events if e["type"] == "final"]
    assert finals and wer(JFK_TEXT, " ".join(finals)) <= 10, finals


def test_stdin_pcm_is_transcribed(tiny_bundle, vad_model, jfk_audio):
    pcm = np.round(jfk_audio * 32767).astype("<i2").tobytes()
    out = subprocess.run([sys.executable, "-m", "edge_asr.runtime.cli", "stream", "--stdin", "--bundle",
                          str(tiny_bundle)], input=pcm, capture_output=True, env=dict(os.environ), timeout=600)
    stdout, stderr = out.stdout.decode(), out.stderr.decode()
    assert out.returncode == 0, stderr
    assert wer(JFK_TEXT, stdout) <= 10, stdout


def test_mic_without_portaudio_is_one_sentence(tiny_bundle, vad_model):
    if ctypes.util.find_library("portaudio"):
        pytest.skip("PortAudio is installed here: a real microphone may answer")
    out = run_cli("--mic", "--bundle", tiny_bundle)
    assert "PortAudio" in one_sentence(out)


def test_missing_input_file_is_one_sentence(tiny_bundle, vad_model, tmp_path):
    missing = tmp_path / "missing.wav"
    out = run_cli("stream", "--input", missing, "--bundle", tiny_bundle)
    assert str(missing) in one_sentence(out)


def test_bad_vad_threshold_is_one_sentence(tiny_bundle, jfk_wav):
    out = run_cli("stream", "--vad-threshold", "2", "--input", jfk_wav, "--bundle", tiny_bundle)
    assert "threshold" in one_sentence(out)


def test_missing_vad_model_is_one_sentence(tiny_bundle, jfk_wav):
    out = run_cli("stream", "--vad-model", "/nonexistent.onnx", "--input", jfk_wav, "--bundle", tiny_bundle)
    assert "/nonexistent.onnx" in one_sentence(out)


def test_streams_share_one_vad_session_and_keep_their_own_state(vad_model, jfk_audio):
    """A server reserves one VAD session, not one per --max-streams slot (10 MB each, before); each stream's
    recurrent state is its own: a detector that heard speech changes nothing for its twins."""
    vads = SileroVad.for_streams(3, vad_model)
    assert len(vads) == 3 and all(vad.session is vads[0].session for vad in vads)
    speech = jfk_audio[: 40 * 512].reshape(40, 512)
    lone = SileroVad(vad_model)
    alone = [lone(window) for window in speech]
    for window in speech[:20]:
        vads[0](window)  # another stream's audio, heard first
    assert [vads[1](window) for window in speech] == pytest.approx(alone, abs=1e-6)
    assert max(alone) > 0.5  # the clip holds speech: the check can fail


def test_a_vad_that_cannot_be_allocated_says_out_of_memory(vad_model, monkeypatch):
    """Running out of memory while loading the VAD was reported as "not a valid ONNX file"."""
    import onnxruntime

    def no_memory(*args, **kwargs):
        raise RuntimeError("onnxruntime::BFCArena: Failed to allocate memory for requested buffer of size 4194304")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_memory)
    with pytest.raises(ModelSourceError, match="out of memory"):
        SileroVad(vad_model)


def test_the_public_api_transcribes_a_file_and_a_stream(tiny_bundle, vad_model, jfk_wav, jfk_audio):
    """The README's Python examples, as written there: the names come from the package's door."""
    from edge_asr.runtime import SileroVad as Vad, StreamOptions as Options, StreamRecognizer as Recognizer
    from edge_asr.runtime import Transcriber, TranscribeOptions

    vad = Vad(vad_model)  # before the engine: it then gets a thread of its own
    transcriber = Transcriber(tiny_bundle, threads=2)
    offline = transcriber.transcribe(jfk_wav, TranscribeOptions(beam_size=2)).text
    recognizer = Recognizer(transcriber.engine, transcriber.tokenizer, vad, transcriber.options(), Options())
    events = [e for at in range(0, len(jfk_audio), 1600) for e in recognizer.push(jfk_audio[at : at + 1600])]
    live = final_text(events + recognizer.flush())
    assert wer(JFK_TEXT, offline) == 0 and wer(JFK_TEXT, live) == 0
