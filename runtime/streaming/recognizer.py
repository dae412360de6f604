"""One audio stream in, partial and final text out: VAD, segmenter, incremental Mel and decoding.

Audio is pushed as it arrives. Every sample goes once through the Mel frontend (into a ring of
frames) and the VAD; the engine runs only while somebody speaks:
- about every ``partial_interval_s`` of speech, a greedy decoding of the utterance so far, whose
  words LocalAgreement turns into a partial that does not flicker;
- at each pause, the final decoding of the utterance so far (the same decoding as offline
  transcription, fallback included), so that when the pause proves long enough to end the
  utterance its text is already there. Speech that resumes discards it.
Each decoding of an utterance after the first is given the previous one's text as its draft
(decoding/draft.py): it mostly repeats it, and the repeated tokens cost one decoder pass, not a step each.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.decoding.calls import Encode, Steps, run_sync
from edge_asr.runtime.decoding.decode import decode_window_steps
from edge_asr.runtime.decoding.options import TranscribeOptions
from edge_asr.runtime.errors import require
from edge_asr.runtime.decoding.repetition import token_cap
from edge_asr.runtime.decoding.transcribe import has_words, transcribe_windows, window_mel
from edge_asr.runtime.engines.base import Engine
from edge_asr.runtime.host_memory import host_buffer
from edge_asr.runtime.mel import FRAMES_PER_SECOND, HOP_LENGTH, N_FFT, N_FRAMES, LogMelFrontend
from edge_asr.runtime.recording_mel import ArrayMel
from edge_asr.runtime.streaming.agreement import LocalAgreement
from edge_asr.runtime.streaming.events import StreamEvent
from edge_asr.runtime.streaming.mel_stream import StreamingLogMel
from edge_asr.runtime.streaming.segmenter import UtteranceEvent, VadOptions, VadSegmenter
from edge_asr.runtime.tokenizer import WhisperTokenizer
from edge_asr.runtime.transcript import Word
from edge_asr.runtime.windows import ENCODER_CONTEXTS, encoder_frames, padding_value

RING_FRAMES = N_FRAMES + 1500  # a 30 s utterance plus the padding and VAD delay before it is cut
PROMPT_CHARACTERS = 600  # previous finals that prompt the next utterance (about 150 tokens)


@dataclass(frozen=True)
class StreamOptions:
    vad: VadOptions = field(default_factory=VadOptions)
    partial_interval_s: float = 1.0  # seconds of speech between partials; 0: finals only
    # "utterance": the encoder sees the utterance plus the model's margin (at least min_context_s), not 30 s.
    encoder_context: Literal["full", "utterance"] = "utterance"
    # None: the model's floor (runtime/windows.py): 15 s for stock Whisper, none for a model that needs no padding.
    min_context_s: float | None = None

    def validate(self) -> "StreamOptions":
        self.vad.validate()
        require(self.partial_interval_s >= 0, f"partial_interval_s must not be negative, not {self.partial_interval_s}.")
        require(
            self.encoder_context in ENCODER_CONTEXTS,
            f"encoder_context must be one of {', '.join(ENCODER_CONTEXTS)}, not {self.encoder_context!r}.",
        )
        require(
            self.min_context_s is None or 0 <= self.min_context_s <= 30,
            f"min_context_s must be None or in [0, 30], not {self.min_context_s}.",
        )
        return self


@dataclass
class _Candidate:
    """The final decoding of [start, end), made at a pause before the utterance is known to end."""

    start: int
    end: int
    text: str
    words: tuple[Word, ...] | None = None


class StreamRecognizer:
    def __init__(
        self,
        engine: Engine,
        tokenizer: WhisperTokenizer,
        vad,
        transcribe_options: TranscribeOptions | None = None,
        options: StreamOptions | None = None,
    ):
        self.engine, self.tokenizer = engine, tokenizer
        self.options = (options or StreamOptions()).validate()
        self.transcribe_options = (transcribe_options or TranscribeOptions()).validate()
        n_mels = engine.dims.n_mels
        pinned = getattr(engine, "device", "cpu") == "cuda"  # the engine copies its input to a GPU
        self.mel = StreamingLogMel(LogMelFrontend(n_mels), RING_FRAMES, pinned=pinned)
        self.segmenter = VadSegmenter(vad, self.options.vad)
        self.agreement = LocalAgreement()
        self._content = np.empty((n_mels, N_FRAMES), np.float32)
        self._window = host_buffer((n_mels * N_FRAMES,), np.float32, pinned=pinned)
        self._set_prompt(self.transcribe_options.initial_prompt)
        self._candidate: _Candidate | None = None
        self._next_partial = 0  # stream sample at which the next partial is due
        self._partials_shown = False
        self._draft: tuple[int, ...] = ()  # the text tokens of the utterance's latest decoding

    def push(self, samples: np.ndarray, partials: bool = True) -> list[StreamEvent]:
        """Takes the next samples of the stream (float32, 16 kHz); returns the events they complete.
        partials=False leaves a partial that falls due for ``partial()`` (a server computes finals first)."""
        return run_sync(self.push_steps(samples, partials), self.engine)

    @property
    def partial_due(self) -> bool:
        """Whether a partial is due: the utterance has gone on a partial interval since the last, speech still on."""
        start, now = self.segmenter.utterance_start, self.segmenter.samples_seen
        return start is not None and self.segmenter.silent_for == 0 and now >= self._next_partial

    def partial(self) -> list[StreamEvent]:
        """The partial of the utterance so far, if one is due (else no event)."""
        return run_sync(self.partial_steps(), self.engine)

    def partial_steps(self) -> Steps[list[StreamEvent]]:
        """partial as a generator of engine calls."""
        return (yield from self._partial())

    def flush(self) -> list[StreamEvent]:
        """End of the stream: what is buffered becomes final; nothing heard is lost."""
        return run_sync(self.flush_steps(), self.engine)

    def push_steps(self, samples: np.ndarray, partials: bool = True) -> Steps[list[StreamEvent]]:
        """push as a generator of engine calls (decoding/calls.py), for a loop that batches many streams."""
        self.mel.push(samples)
        events = yield from self._handle(self.segmenter.push(samples))
        if partials:
            events.extend((yield from self._partial()))
        return events

    def flush_steps(self) -> Steps[list[StreamEvent]]:
        """flush as a generator of engine calls."""
        self.mel.flush(padding=N_FFT)  # the last frames see zeros after the audio, as offline
        return (yield from self._handle(self.segmenter.flush()))

    def _handle(self, utterance_events: list[UtteranceEvent]) -> Steps[list[StreamEvent]]:
        events = []
        for event in utterance_events:
            if event.kind == "start":
                self.agreement.reset()
                self._candidate, self._partials_shown, self._draft = None, False, ()
                self._next_partial = event.start + self._partial_samples()
            elif event.kind == "pause":
                self._candidate = _Candidate(event.start, event.end, *(yield from self._final_text(event.start, event.end)))
            else:
                events.extend((yield from self._final(event)))
        return events

    def _final(self, event: UtteranceEvent) -> Steps[list[StreamEvent]]:
        candidate = self._candidate
        if candidate is not None and (candidate.start, candidate.end) == (event.start, event.end):
            text, words = candidate.text, candidate.words
        else:
            text, words = yield from self._final_text(event.start, event.end)
        self._candidate = None
        if not text and not self._partials_shown:
            return []  # noise the VAD took for speech: nothing was shown, nothing to close
        if text and self.transcribe_options.condition_on_previous_text:
            self._set_prompt((self._prompt_text or "") + " " + text)
        return [StreamEvent("final", event.start / SAMPLE_RATE, event.end / SAMPLE_RATE, text,
                            voiced_end=event.voiced_end / SAMPLE_RATE, words=words)]

    def _partial_samples(self) -> int:
        interval = self.options.partial_interval_s
        return round(interval * SAMPLE_RATE) if interval > 0 else np.iinfo(np.int64).max

    def _partial(self) -> Steps[list[StreamEvent]]:
        # Not once speech has stopped: the decoding at the pause is due soon, and a partial would delay it.
        if not self.partial_due:
            return []
        start, now = self.segmenter.utterance_start, self.segmenter.samples_seen
        self._next_partial = now + self._partial_samples()
        stable, unstable = self.agreement.update((yield from self._partial_text(start, now)))
        self._partials_shown = True
        return [StreamEvent("partial", start / SAMPLE_RATE, now / SAMPLE_RATE, stable, unstable)]

    def _frames(self, start: int, end: int) -> tuple[np.ndarray, int]:
        """The utterance's normalised Mel frames and the encoder window they go in."""
        first = start // HOP_LENGTH
        stop = min(-(-end // HOP_LENGTH), self.mel.frames_done, first + N_FRAMES)
        content = self.mel.window(first, stop, out=self._content[:, : stop - first])
        window = encoder_frames(stop - first, self.transcribe_options.policy, self.options.encoder_context,
                                N_FRAMES, self.options.min_context_s)
        return content, window

    def _set_prompt(self, text: str | None) -> None:
        """The text that primes the next decodings: the user's initial prompt, then the last finals.
        Tokenized here, once per final, not once per partial."""
        kept = text[-PROMPT_CHARACTERS:].strip() if text else ""
        self._prompt_text = kept or None
        self._prompt_tokens = self.tokenizer.encode(" " + self._prompt_text) if self._prompt_text else []

    def _final_text(self, start: int, end: int) -> Steps[tuple[str, tuple[Word, ...] | None]]:
        """The offline decoding (fallback, silence and loop checks) of one utterance: its text, and its words in
        stream time when the options ask for word timestamps."""
        content, window_frames = self._frames(start, end)
        # The window is decided above: the utterance fills it, padded to its length ("full").
        options = replace(self.transcribe_options, window_frames=window_frames, encoder_context="full",
                          initial_prompt=self._prompt_text, draft=self._draft)
        windows = yield from transcribe_windows(self.engine, self.tokenizer, content, options, window_buffer=self._window)
        segments = [segment for window in windows for segment in window.segments]
        self._draft = tuple(int(t) for segment in segments for t in segment.tokens if t < self.tokenizer.eot)
        text = " ".join(segment.text.strip() for segment in segments).strip()
        if not options.word_timestamps:
            return text, None
        offset = (start // HOP_LENGTH) / FRAMES_PER_SECOND  # where the utterance's first Mel frame lies
        return text, tuple(replace(w, start=w.start + offset, end=w.end + offset) for s in segments for w in s.words)

    def _partial_text(self, start: int, end: int) -> Steps[str]:
        """A quick guess: one greedy pass without timestamps, no fallback."""
        content, window_frames = self._frames(start, end)
        options = self.transcribe_options
        cap = token_cap(content.shape[1] / FRAMES_PER_SECOND, options.max_tokens_per_second)
        guess = replace(options, without_timestamps=True, beam_size=1, sample_len=cap)
        padding = padding_value(options.policy, ArrayMel(content).peak)  # the window is normalised over its own peak
        audio = yield Encode(window_mel(content, window_frames, self._window, padding))
        (result,) = yield from decode_window_steps(self.engine, self.tokenizer, audio, guess, prompts=[self._prompt_tokens],
                                                   draft=self._draft)
        self._draft = tuple(int(t) for t in result.tokens if t < self.tokenizer.eot)
        return result.text if has_words(result.text) else ""
