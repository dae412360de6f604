"""The segmenter and LocalAgreement on scripted VAD probabilities: no model needed."""
from __future__ import annotations

import numpy as np
import pytest

from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.streaming.agreement import LocalAgreement
from edge_asr.runtime.streaming.segmenter import UtteranceEvent, VadOptions, VadSegmenter
from edge_asr.runtime.streaming.vad import WINDOW_SAMPLES

W = WINDOW_SAMPLES  # 32 ms


class ScriptedVad:
    """Speech probability per window from a list; the window's loudness is its first sample."""

    def __init__(self, probabilities):
        self.probabilities = list(probabilities)
        self.calls = 0

    def __call__(self, window):
        assert window.shape == (W,)
        p = self.probabilities[self.calls] if self.calls < len(self.probabilities) else 0.0
        self.calls += 1
        return p


def windows(*runs):
    """("s", n) n speech windows, ("-", n) n silent ones."""
    return [p for kind, n in runs for p in ([0.9] * n if kind == "s" else [0.05] * n)]


def segment(probabilities, options=VadOptions(), chunk=1000, audio=None):
    vad = ScriptedVad(probabilities)
    segmenter = VadSegmenter(vad, options)
    audio = np.zeros(len(probabilities) * W, np.float32) if audio is None else audio
    events = []
    for i in range(0, len(audio), chunk):
        events += segmenter.push(audio[i : i + chunk])
    return events + segmenter.flush()


OPTIONS = VadOptions(min_speech_ms=250, min_silence_ms=320, pad_before_ms=192, pad_after_ms=96)
PAD, PAD_BEFORE = 96 * 16, 192 * 16


def test_one_utterance_with_padding_and_a_pause_before_its_end():
    events = segment(windows(("-", 20), ("s", 30), ("-", 30)), OPTIONS)
    speech_start, speech_end = 20 * W, 50 * W
    assert events == [
        UtteranceEvent("start", speech_start - PAD_BEFORE, speech_start - PAD_BEFORE, speech_start - PAD_BEFORE),
        UtteranceEvent("pause", speech_start - PAD_BEFORE, speech_end + PAD, speech_end),
        UtteranceEvent("end", speech_start - PAD_BEFORE, speech_end + PAD, speech_end),
    ]


def test_short_sounds_and_silence_make_no_utterance():
    assert segment(windows(("-", 20), ("s", 5), ("-", 40), ("s", 3), ("-", 10)), OPTIONS) == []
    assert segment(windows(("-", 100)), OPTIONS) == []


def test_a_short_pause_keeps_one_utterance_and_a_long_one_splits():
    short = segment(windows(("s", 20), ("-", 8), ("s", 20), ("-", 20)), OPTIONS)
    assert [e.kind for e in short] == ["start", "pause", "pause", "end"]
    long = segment(windows(("s", 20), ("-", 12), ("s", 20), ("-", 20)), OPTIONS)
    assert [e.kind for e in long] == ["start", "pause", "end", "start", "pause", "end"]
    assert long[3].start >= long[2].end  # the padding of the next never reaches back into the last


def test_hysteresis_keeps_speech_going_between_the_thresholds():
    probabilities = [0.9] * 20 + [0.4] * 20 + [0.0] * 20  # 0.4 is above 0.5 - 0.15
    events = segment(probabilities, OPTIONS)
    assert events[-1] == UtteranceEvent("end", 0, 40 * W + PAD, 40 * W)


def test_end_of_input_ends_the_utterance_at_the_last_sample():
    events = segment(windows(("-", 5), ("s", 30)), OPTIONS, audio=np.zeros(35 * W - 100, np.float32))
    assert events[-1].kind == "end" and events[-1].end == 35 * W - 100


def test_long_speech_is_cut_at_the_quietest_pause_near_the_limit():
    n = int(40 * 16000 / W)
    probabilities = [0.9] * n
    probabilities[800] = probabilities[801] = 0.2  # a pause at about 25.6 s, inside the last 5 s before 30 s
    audio = np.full(n * W, 0.5, np.float32)
    audio[800 * W : 801 * W] = 0.01  # the quieter of the two pause windows
    audio[801 * W : 802 * W] = 0.02
    events = segment(probabilities, VadOptions(), audio=audio)
    kinds = [e.kind for e in events]
    assert kinds[:3] == ["start", "end", "start"]
    cut = 800 * W + W // 2
    assert events[1].end == cut and events[2].start == cut
    assert events[1].end - events[1].start <= 30 * 16000


def test_speech_without_a_pause_is_cut_at_the_quietest_window():
    n = int(70 * 16000 / W)
    audio = np.full(n * W, 0.5, np.float32)
    audio[850 * W : 851 * W] = 0.1
    events = segment([0.9] * n, VadOptions(), audio=audio)
    ends = [e for e in events if e.kind == "end"]
    assert ends[0].end == 850 * W + W // 2
    assert all(e.end - e.start <= 30 * 16000 for e in ends) and len(ends) == 3


def test_options_explain_what_is_wrong():
    with pytest.raises(EdgeAsrError, match="threshold must be between 0 and 1"):
        VadOptions(threshold=1.5).validate()
    with pytest.raises(EdgeAsrError, match="pad_after_ms must be between 0 and min_silence_ms"):
        VadOptions(min_silence_ms=100, pad_after_ms=200).validate()


def test_local_agreement_commits_what_two_hypotheses_share():
    agreement = LocalAgreement()
    assert agreement.update("hello world how") == ("", "hello world how")
    assert agreement.update("Hello world, how are") == ("Hello world, how", "are")
    # A later hypothesis that disagrees cannot withdraw stable words, nor respell them.
    assert agreement.update("hello word how are you") == ("Hello world, how", "are you")
    assert agreement.update("hello world how are you doing") == ("Hello world, how", "are you doing")
    assert agreement.update("hello world how are you doing today") == ("Hello world, how are you doing", "today")
    agreement.reset()
    assert agreement.update("new") == ("", "new")
