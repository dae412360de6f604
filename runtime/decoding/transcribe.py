"""Long-form transcription: consecutive windows over a whole recording, as openai-whisper and
faster-whisper do it, with a guard against loops and against text invented over silence.

Per window: encode it once; decode at the first temperature, and retry hotter while the result
loops (compression ratio, repetition guard) or is improbable (average logprob), unless the model
says nobody speaks; skip windows judged silent; cut the tokens into segments and move on to the
window's last timestamp. Every window yields a WindowResult, empty or not, so callers can show
progress.
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Generator, Iterator

import numpy as np

from edge_asr.runtime.decoding.calls import Align, Encode, EngineCall, Steps, call_engine
from edge_asr.runtime.decoding.decode import DecodingResult, decode_window_steps
from edge_asr.runtime.decoding.language import detect_language_steps
from edge_asr.runtime.decoding.options import TranscribeOptions
from edge_asr.runtime.decoding.repetition import is_looping, token_cap
from edge_asr.runtime.decoding.segments import SegmentSpan, split_segments
from edge_asr.runtime.engines.base import AudioContext, Engine
from edge_asr.runtime.mel import FRAMES_PER_SECOND
from edge_asr.runtime.recording_mel import ArrayMel, MelSource
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.tokenizer import WhisperTokenizer, language_code
from edge_asr.runtime.transcript import Segment, WindowResult
from edge_asr.runtime.windows import encoder_frames, padding_value
from edge_asr.runtime.word_timing import alignment_tokens, window_words

# Log-Mel values (after Whisper's scaling) that vary less than this across a window carry no sound.
FLAT_MEL_RANGE = 1e-3
# A length-adaptive student may end a full 30 s window's text seconds before its audio ends (the tiny.en student
# wrote JFK's sentence and skipped the 19 s of speech after it); stock Whisper then moves on to the next window.
# For such a model a full window whose text ends EARLY_END_S or more before the window does is resumed where
# its text ended instead: no speech is skipped, at the cost of encoding the rest once more.
EARLY_END_S = 2.0


def transcribe(
    engine: Engine,
    tokenizer: WhisperTokenizer,
    mel: np.ndarray | MelSource,
    options: TranscribeOptions | None = None,
    window_buffer: np.ndarray | None = None,
    window_ends: Sequence[int] = (),
) -> Iterator[WindowResult]:
    """Transcribes ``mel`` (float32 [n_mels, frames]: the audio's frames, no padding frames; an array or a
    recording_mel.MelSource that computes each window when asked) window by window, each of at most
    options.window_frames of audio, encoded as runtime/windows.py decides
    (padded to window_frames for stock Whisper, the audio plus a margin for a model that needs no
    padding). ``window_buffer``, a flat float32 array of at least n_mels * window_frames, is
    reused for every encoder input instead of a new array per window. ``window_ends`` (sorted Mel frames) are
    where a window must end, whatever its length: the joins of speech_windows.py's packed speech."""
    steps = transcribe_steps(engine, tokenizer, mel, options, window_buffer, window_ends)
    reply = None
    while True:
        try:
            item = steps.send(reply)
        except StopIteration:
            return
        if isinstance(item, WindowResult):
            reply = None
            yield item
        else:
            reply = call_engine(engine, item)


def transcribe_windows(
    engine: Engine,
    tokenizer: WhisperTokenizer,
    mel: np.ndarray | MelSource,
    options: TranscribeOptions | None = None,
    window_buffer: np.ndarray | None = None,
) -> Steps[list[WindowResult]]:
    """transcribe as a generator of engine calls (decoding/calls.py) that returns every window at the end."""
    windows, reply = [], None
    steps = transcribe_steps(engine, tokenizer, mel, options, window_buffer)
    while True:
        try:
            item = steps.send(reply)
        except StopIteration:
            return windows
        if isinstance(item, WindowResult):
            windows.append(item)
            reply = None
        else:
            reply = yield item


def transcribe_steps(
    engine: Engine,
    tokenizer: WhisperTokenizer,
    mel: np.ndarray | MelSource,
    options: TranscribeOptions | None = None,
    window_buffer: np.ndarray | None = None,
    window_ends: Sequence[int] = (),
) -> Generator[EngineCall | WindowResult, object, None]:
    """transcribe as a generator: engine calls (whose results it is sent) and each window's result (sent None)."""
    options = (options or TranscribeOptions()).validate()
    mel = ArrayMel(mel) if isinstance(mel, np.ndarray) else mel
    _check_mel(engine, mel, options, window_buffer)
    content_frames = mel.frames
    state = _RecordingState(
        duration=content_frames / FRAMES_PER_SECOND,
        rng=np.random.default_rng(options.seed),
        tokens=tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else [],
    )
    language = _fixed_language(tokenizer, options)
    padding = padding_value(options.policy, mel.peak)
    seek = 0
    while seek < content_frames:
        cut = bisect.bisect_right(window_ends, seek)
        limit = window_ends[cut] if cut < len(window_ends) else content_frames
        audio_frames = min(options.window_frames, limit - seek, content_frames - seek)
        content = mel.window(seek, seek + audio_frames)
        start = seek / FRAMES_PER_SECOND
        if _is_flat(content):
            segments, consumed = [], audio_frames
        else:
            frames = encoder_frames(audio_frames, options.policy, options.encoder_context, options.window_frames)
            audio = yield Encode(window_mel(content, frames, window_buffer, padding))
            if language is None:
                language = (yield from detect_language_steps(engine, tokenizer, audio))[0][0]
            segments, consumed = yield from _transcribe_window(
                engine, tokenizer, audio, replace(options, language=language), state, start, audio_frames
            )
        seek += consumed
        if options.draft:
            options = replace(options, draft=())  # a draft is the first window's
        yield WindowResult(start, min(seek, content_frames) / FRAMES_PER_SECOND, language or "", segments)


def _transcribe_window(
    engine: Engine,
    tokenizer: WhisperTokenizer,
    audio: AudioContext,
    options: TranscribeOptions,
    state: "_RecordingState",
    start: float,
    audio_frames: int,
) -> Steps[tuple[list[Segment], int]]:
    """One encoded window's segments and the Mel frames it consumed; updates the prompt."""
    result = yield from decode_with_fallback_steps(engine, tokenizer, audio, options, state.prompt(), state.rng,
                                                   audio_frames)
    if result is None:  # a loop at every temperature: the prompt may be what keeps it looping
        state.reset_prompt()
        return [], audio_frames
    if _is_silence(result, options):
        return [], audio_frames
    spans, consumed = split_segments(result.tokens, tokenizer.timestamp_begin, audio_frames)
    consumed = _resume_point(spans, consumed, audio_frames, options)
    segments = _segments(tokenizer, spans, result, start, state.duration)
    if options.word_timestamps and segments:
        sot = tokenizer.sot_sequence(options.language, options.task)
        text = [t for segment in segments for t in segment.tokens if t < tokenizer.eot]
        logits, scores = yield Align(alignment_tokens(tokenizer, sot, text), audio)
        state.last_speech = window_words(tokenizer, segments, logits, scores, len(sot), audio_frames, start,
                                         state.last_speech, options.language or "en")
    state.extend(segments)
    if not options.condition_on_previous_text or result.temperature > options.prompt_reset_on_temperature:
        state.reset_prompt()
    return segments, consumed


def _resume_point(spans: list[SegmentSpan], consumed: int, audio_frames: int, options: TranscribeOptions) -> int:
    """Where the next window starts: where this one's text ended, for a length-adaptive model whose full window
    ended its text early (EARLY_END_S); else what openai's rule consumed."""
    if options.policy.reads_30s or audio_frames < options.window_frames or consumed < audio_frames or not spans:
        return consumed
    ended = round(spans[-1].end * FRAMES_PER_SECOND)
    return ended if 0 < ended <= audio_frames - EARLY_END_S * FRAMES_PER_SECOND else consumed


def decode_with_fallback_steps(
    engine: Engine,
    tokenizer: WhisperTokenizer,
    audio: AudioContext,
    options: TranscribeOptions,
    prompt: list[int],
    rng: np.random.Generator,
    audio_frames: int,
) -> Steps[DecodingResult | None]:
    """The first acceptable decoding of one window (holding ``audio_frames`` of audio), trying
    options.temperatures in turn, as a generator of engine calls (decoding/calls.py).

    When every temperature fails, the most probable result that does not loop is kept, as
    faster-whisper does; when all of them loop, None: the window's text would be invented."""
    default_len = options.sample_len or engine.dims.n_text_ctx // 2
    cap = token_cap(audio_frames / FRAMES_PER_SECOND, options.max_tokens_per_second)
    capped = cap is not None and cap < default_len
    decoding = replace(options, sample_len=cap) if capped else options
    usable = []
    for temperature in options.temperatures:
        (result,) = yield from decode_window_steps(
            engine, tokenizer, audio, decoding, temperature=temperature, prompts=[prompt], rng=rng, draft=options.draft
        )
        looping = _is_looping(result, tokenizer, options, capped)
        improbable = options.logprob_threshold is not None and result.avg_logprob < options.logprob_threshold
        # Silence and wordless output ("...", a lone "-") are never retried: they become no text.
        if _is_silence(result, options) or not has_words(result.text) or not (looping or improbable):
            return result
        if not looping:
            usable.append(result)
    if not usable:
        return None
    return replace(max(usable, key=lambda r: r.avg_logprob), temperature=options.temperatures[-1])


def _is_looping(result: DecodingResult, tokenizer: WhisperTokenizer, options: TranscribeOptions, capped: bool) -> bool:
    """Repetitive by compression ratio, by a repeated n-gram, or cut off at the token-rate cap."""
    threshold = options.compression_ratio_threshold
    if threshold is not None and result.compression_ratio > threshold:
        return True
    if capped and not result.finished:
        return True
    text_tokens = [t for t in result.tokens if t < tokenizer.eot]
    return is_looping(text_tokens, options.loop_min_repeats, options.loop_min_tokens)


def _is_silence(result: DecodingResult, options: TranscribeOptions) -> bool:
    """openai's silence rule: the model says nobody speaks, and what it wrote is not probable
    enough to overrule it (the model's own gate, WindowPolicy.silence_logprob, else openai's). Such a window is
    neither retried nor transcribed."""
    if options.no_speech_threshold is None or result.no_speech_prob <= options.no_speech_threshold:
        return False
    gate = options.policy.silence_logprob  # the model's own gate, where it has one
    gate = options.logprob_threshold if gate is None else gate
    return gate is None or result.avg_logprob <= gate


def has_words(text: str) -> bool:
    """Whether the text holds a letter or a digit: on noise Whisper writes runs of bare punctuation."""
    return any(char.isalnum() for char in text)


def _segments(
    tokenizer: WhisperTokenizer, spans: list[SegmentSpan], result: DecodingResult, window_start: float, duration: float
) -> list[Segment]:
    """Segments with words, in absolute time. Text placed in the zero padding after the end of the
    audio cannot have been spoken, so it is dropped, and ends are clipped to the audio."""
    segments = []
    for span in spans:
        start, end = window_start + span.start, min(window_start + span.end, duration)
        text = tokenizer.decode(span.tokens)
        if start >= end or not has_words(text):
            continue
        segments.append(
            Segment(
                start=start,
                end=end,
                text=text,
                tokens=span.tokens,
                avg_logprob=result.avg_logprob,
                no_speech_prob=result.no_speech_prob,
                compression_ratio=result.compression_ratio,
                temperature=result.temperature,
            )
        )
    return segments


@dataclass
class _RecordingState:
    """What carries over from window to window: the text so far, of which the prompt is the part
    after the last reset, and the sampling generator."""

    duration: float  # seconds of audio in the recording
    rng: np.random.Generator
    tokens: list[int]
    reset_at: int = field(default=0)
    last_speech: float = 0.0  # where the last word ended (word timestamps)

    def prompt(self) -> list[int]:
        return self.tokens[self.reset_at :]

    def extend(self, segments: list[Segment]) -> None:
        for segment in segments:
            self.tokens.extend(segment.tokens)

    def reset_prompt(self) -> None:
        self.reset_at = len(self.tokens)


def _fixed_language(tokenizer: WhisperTokenizer, options: TranscribeOptions) -> str | None:
    """The language every window uses, or None when it must be detected on the first window."""
    if not tokenizer.multilingual:
        tokenizer.sot_sequence(options.language, options.task)  # refuses other languages and translation
        return "en"
    return language_code(options.language) if options.language is not None else None


def window_mel(content: np.ndarray, window_frames: int, buffer: np.ndarray | None, padding: float) -> np.ndarray:
    """float32 [1, n_mels, window_frames]: the content, then ``padding`` (``windows.padding_value``)."""
    n_mels, frames = content.shape
    if buffer is None:
        window = np.empty((1, n_mels, window_frames), dtype=np.float32)
    else:
        window = buffer[: n_mels * window_frames].reshape(1, n_mels, window_frames)
    window[0, :, :frames] = content
    window[0, :, frames:] = padding
    return window


def _is_flat(content: np.ndarray) -> bool:
    """No signal at all: digital silence, or audio 80 dB below the recording's peak, which the Mel
    frontend clamps to one floor value. Whisper invents text ("you") for such windows."""
    return float(content.max() - content.min()) < FLAT_MEL_RANGE


def _check_mel(engine: Engine, mel: MelSource, options: TranscribeOptions, buffer: np.ndarray | None) -> None:
    dims = engine.dims
    if mel.n_mels != dims.n_mels:
        raise EdgeAsrError(f"The Mel spectrogram must be [{dims.n_mels}, frames] not [{mel.n_mels}, {mel.frames}].")
    if buffer is not None and (buffer.dtype != np.float32 or buffer.size < dims.n_mels * options.window_frames):
        raise EdgeAsrError(f"The window buffer must be float32 with room for {dims.n_mels} x {options.window_frames}.")
    if options.window_frames > 2 * dims.n_audio_ctx:
        raise EdgeAsrError(
            f"window_frames {options.window_frames} exceeds the model's audio context of {2 * dims.n_audio_ctx} frames."
        )
