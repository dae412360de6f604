"""Utterances from a stream of VAD probabilities: where speech starts, pauses and ends.

Hysteresis as in Silero's VADIterator: speech starts at ``threshold`` and then counts as speech down
to ``threshold - 0.15``; a run shorter than ``min_speech_ms`` (a click, a cough) is dropped; an
utterance ends after ``min_silence_ms`` without speech. It keeps ``pad_before_ms`` of audio before
the speech (Whisper misses the first word of an utterance that starts right on it) and
``pad_after_ms`` after (short: the final text waits for it).
A ``pause`` event comes as soon as the padded end is in hand, so a caller can decode the
utterance while waiting to learn whether the pause is long enough to end it. An utterance longer
than the model's 30 s window is cut at the quietest pause near the limit, or at the quietest
window when the speaker never pauses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.errors import require
from edge_asr.runtime.streaming.vad import WINDOW_SAMPLES

HYSTERESIS = 0.15  # Silero's gap between the start and the continue threshold
MAX_UTTERANCE_S = 30.0  # one Whisper window


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5  # speech probability at which speech starts
    min_speech_ms: int = 250  # shorter runs of speech are noise
    min_silence_ms: int = 250  # a pause this long ends the utterance
    # Chosen on the developer clips (benchmarks/stream_wer.py): with less before, Whisper misheard first
    # words ("ask" as "as"); each ms after is a ms more of latency, and 150 gave offline's WER.
    pad_before_ms: int = 400  # audio kept before the start of speech
    pad_after_ms: int = 150  # audio kept after the end of speech
    max_utterance_s: float = MAX_UTTERANCE_S  # longer utterances are cut at a pause near this length
    split_search_s: float = 5.0  # how far back from the limit to look for a pause to cut at

    def validate(self) -> "VadOptions":
        require(0 < self.threshold < 1, f"the VAD threshold must be between 0 and 1, not {self.threshold}.")
        require(self.min_speech_ms >= 0, f"min_speech_ms must not be negative, not {self.min_speech_ms}.")
        require(self.min_silence_ms > 0, f"min_silence_ms must be positive, not {self.min_silence_ms}.")
        require(self.pad_before_ms >= 0, f"pad_before_ms must not be negative, not {self.pad_before_ms}.")
        require(
            0 <= self.pad_after_ms <= self.min_silence_ms,
            f"pad_after_ms must be between 0 and min_silence_ms ({self.min_silence_ms}), not {self.pad_after_ms}.",
        )
        room_ms = round((min(self.max_utterance_s, MAX_UTTERANCE_S) - self.split_search_s) * 1000)
        require(
            self.pad_before_ms + self.pad_after_ms < room_ms or room_ms <= 0,
            f"pad_before_ms plus pad_after_ms must be under {room_ms} ms (an utterance's longest, less the span "
            f"searched for a pause to cut at), not {self.pad_before_ms + self.pad_after_ms}.",
        )
        require(
            self.split_search_s + (self.pad_before_ms + self.pad_after_ms) / 1000 < self.max_utterance_s <= MAX_UTTERANCE_S,
            f"max_utterance_s must exceed split_search_s plus the padding and be at most {MAX_UTTERANCE_S}, "
            f"not {self.max_utterance_s}.",
        )
        return self

    @property
    def neg_threshold(self) -> float:
        return max(self.threshold - HYSTERESIS, 0.01)


def _samples(ms: float) -> int:
    return int(ms * SAMPLE_RATE / 1000)


@dataclass(frozen=True)
class UtteranceEvent:
    """``start``: speech began at sample ``start``. ``pause``: the utterance so far is
    [start, end) and speech has stopped. ``end``: the utterance is [start, end), final."""

    kind: Literal["start", "pause", "end"]
    start: int  # stream samples
    end: int
    voiced_end: int  # where the last speech window ended (``end`` less the padding)


class VadSegmenter:
    """Feeds audio through a VAD window by window and says where utterances start, pause and end."""

    def __init__(self, vad: Callable[[np.ndarray], float], options: VadOptions | None = None):
        self.vad = vad
        self.options = (options or VadOptions()).validate()
        self._pending = np.zeros(WINDOW_SAMPLES, np.float32)
        self._pending_fill = 0
        self.reset()

    def reset(self) -> None:
        self.samples_seen = 0  # samples judged so far (whole windows)
        self._pending_fill = 0
        self._last_end = 0  # end of the previous utterance: the next one's padding stops there
        self._first_voiced: int | None = None  # a run of speech not yet long enough to count
        self._utterance: int | None = None  # start of the utterance in progress
        self._voiced_end = 0
        self._paused = False
        self._windows: list[tuple[int, float, float]] = []  # (end sample, probability, energy) this utterance

    @property
    def utterance_start(self) -> int | None:
        return self._utterance

    @property
    def silent_for(self) -> int:
        """Samples since the last window judged speech (0 while speech goes on)."""
        return self.samples_seen - self._voiced_end if self._utterance is not None else 0

    def push(self, samples: np.ndarray) -> list[UtteranceEvent]:
        """Judges every whole window now available; returns the events they cause, in order."""
        events: list[UtteranceEvent] = []
        offset = 0
        while offset < len(samples):
            take = min(WINDOW_SAMPLES - self._pending_fill, len(samples) - offset)
            self._pending[self._pending_fill : self._pending_fill + take] = samples[offset : offset + take]
            self._pending_fill += take
            offset += take
            if self._pending_fill == WINDOW_SAMPLES:
                events.extend(self._judge(self._pending))
                self._pending_fill = 0
        return events

    def flush(self) -> list[UtteranceEvent]:
        """End of input: the last partial window is judged as if followed by silence, and an
        utterance in progress ends at the last sample heard."""
        heard = self.samples_seen + self._pending_fill
        events: list[UtteranceEvent] = []
        if self._pending_fill:
            self._pending[self._pending_fill :] = 0
            events.extend(self._judge(self._pending))
            self._pending_fill = 0
        if self._utterance is not None:
            end = min(self._voiced_end + _samples(self.options.pad_after_ms), heard)
            events.append(self._end(min(self._voiced_end, end), end))
        return events

    def _judge(self, window: np.ndarray) -> list[UtteranceEvent]:
        probability = self.vad(window)
        start, end = self.samples_seen, self.samples_seen + WINDOW_SAMPLES
        self.samples_seen = end
        if self._utterance is None:
            return self._while_silent(probability, start, end)
        self._windows.append((end, probability, float(np.dot(window, window))))
        voiced = probability >= (self.options.threshold if self._paused else self.options.neg_threshold)
        if voiced:
            self._voiced_end, self._paused = end, False
        events = self._while_speaking(end)
        if self._utterance is not None and end - self._utterance >= _samples(self.options.max_utterance_s * 1000):
            events.extend(self._split())
        return events

    def _while_silent(self, probability: float, start: int, end: int) -> list[UtteranceEvent]:
        options = self.options
        if self._first_voiced is None:
            if probability >= options.threshold:
                self._first_voiced, self._voiced_end = start, end
            return []
        if probability >= options.neg_threshold:
            self._voiced_end = end
        if end - self._voiced_end >= _samples(options.min_silence_ms):
            self._first_voiced = None  # too short to be speech
        elif self._voiced_end - self._first_voiced >= _samples(options.min_speech_ms):
            self._utterance = max(self._first_voiced - _samples(options.pad_before_ms), self._last_end)
            self._first_voiced = None
            return [UtteranceEvent("start", self._utterance, self._utterance, self._utterance)]
        return []

    def _while_speaking(self, now: int) -> list[UtteranceEvent]:
        silence = now - self._voiced_end
        pad = _samples(self.options.pad_after_ms)
        if silence >= _samples(self.options.min_silence_ms):
            return [self._end(self._voiced_end, self._voiced_end + pad)]
        if silence >= pad and silence > 0 and not self._paused:
            self._paused = True
            return [UtteranceEvent("pause", self._utterance, self._voiced_end + pad, self._voiced_end)]
        return []

    def _end(self, voiced_end: int, end: int) -> UtteranceEvent:
        event = UtteranceEvent("end", self._utterance, end, voiced_end)
        self._last_end = end
        self._utterance, self._paused, self._windows = None, False, []
        return event

    def _split(self) -> list[UtteranceEvent]:
        """Cut an over-long utterance at the quietest window of the last split_search_s seconds,
        preferring windows the VAD calls silent; the rest goes on as a new utterance."""
        search_from = self.samples_seen - _samples(self.options.split_search_s * 1000)
        candidates = [w for w in self._windows if w[0] - WINDOW_SAMPLES >= search_from]
        pauses = [w for w in candidates if w[1] < self.options.neg_threshold]
        cut_end = min(pauses or candidates, key=lambda w: w[2])[0]
        cut = cut_end - WINDOW_SAMPLES // 2  # the middle of the quiet window
        start, remaining = self._utterance, [w for w in self._windows if w[0] > cut_end]
        voiced_end = min(self._voiced_end, cut)
        first = UtteranceEvent("end", start, cut, voiced_end)
        self._last_end = cut
        self._utterance, self._windows = cut, remaining
        return [first, UtteranceEvent("start", cut, cut, cut)]
