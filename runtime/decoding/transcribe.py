"""Long-form transcription: consecutive windows over a whole recording, as openai-whisper and
faster-whisper do it, with a guard against loops and against text invented over silence.

Per window: encode it once; decode at the first temperature, and retry hotter while the result
loops (compression ratio, repetition guard) or is improbable (average logprob), unless the model
says nobody speaks; skip windows judged silent; cut the tokens into segments and move on to the
window's last timestamp. Every window yields a WindowResult, empty or not, so callers can show
progress.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np

from edge_asr.runtime.decoding.decode import DecodingResult, decode_window
from edge_asr.runtime.decoding.language import detect_language
from edge_asr.runtime.decoding.options import TranscribeOptions
from edge_asr.runtime.decoding.repetition import is_looping, token_cap
from edge_asr.runtime.decoding.segments import FRAMES_PER_SECOND, split_segments
from edge_asr.runtime.engines.base import AudioContext, Engine
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.tokenizer import WhisperTokenizer, language_code
from edge_asr.runtime.transcript import Segment, WindowResult

# The Mel spectrogram comes with 30 s of zero audio appended (openai's log_mel_spectrogram with
# padding=N_SAMPLES), so that its loudness normalisation matches the model's training.
MEL_PADDING_FRAMES = 3000


def transcribe(
    engine: Engine, tokenizer: WhisperTokenizer, mel: np.ndarray, options: TranscribeOptions = TranscribeOptions()
) -> Iterator[WindowResult]:
    """Transcribes ``mel`` (float32 [n_mels, frames], 30 s of padding included) window by window."""
    options.validate()
    _check_mel(engine, mel, options)
    content_frames = mel.shape[1] - MEL_PADDING_FRAMES
    rng = np.random.default_rng(options.seed)
    history = _PromptHistory(tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else [])
    language = _fixed_language(tokenizer, options)
    seek = 0
    while seek < content_frames:
        audio_frames = min(options.window_frames, content_frames - seek)
        audio = engine.encode(_window_mel(mel, seek, audio_frames, options.window_frames))
        if language is None:
            language = detect_language(engine, tokenizer, audio)[0][0]
        result = decode_with_fallback(
            engine, tokenizer, audio, replace(options, language=language), history.prompt(), rng, audio_frames
        )
        start = seek / FRAMES_PER_SECOND
        if result is not None and not _is_silence(result, options):
            spans, consumed = split_segments(result.tokens, tokenizer.timestamp_begin, audio_frames)
            segments = _segments(tokenizer, spans, result, start, content_frames / FRAMES_PER_SECOND)
            history.extend(segments)
            if not options.condition_on_previous_text or result.temperature > options.prompt_reset_on_temperature:
                history.reset()
        else:
            segments, consumed = [], audio_frames
            if result is None:  # a loop at every temperature: the prompt may be what keeps it looping
                history.reset()
        seek += consumed
        yield WindowResult(start, min(seek, content_frames) / FRAMES_PER_SECOND, language, segments)


def decode_with_fallback(
    engine: Engine,
    tokenizer: WhisperTokenizer,
    audio: AudioContext,
    options: TranscribeOptions,
    prompt: list[int],
    rng: np.random.Generator,
    audio_frames: int,
) -> DecodingResult | None:
    """The first acceptable decoding of one window (holding ``audio_frames`` of audio), trying
    options.temperatures in turn.

    When every temperature fails, the most probable result that does not loop is kept, as
    faster-whisper does; when all of them loop, None: the window's text would be invented."""
    default_len = options.sample_len or engine.dims.n_text_ctx // 2
    cap = token_cap(audio_frames / FRAMES_PER_SECOND, options.max_tokens_per_second)
    capped = cap is not None and cap < default_len
    decoding = replace(options, sample_len=cap) if capped else options
    usable = []
    for temperature in options.temperatures:
        result = decode_window(engine, tokenizer, audio, decoding, temperature=temperature, prompts=[prompt], rng=rng)[0]
        looping = _is_looping(result, tokenizer, options, capped)
        improbable = options.logprob_threshold is not None and result.avg_logprob < options.logprob_threshold
        if _is_silence(result, options) or not (looping or improbable):
            return result
        if not looping:
            usable.append(result)
    if not usable:
        return None
    return replace(max(usable, key=lambda r: r.avg_logprob), temperature=options.temperatures[-1])


def _is_looping(result: DecodingResult, tokenizer: WhisperTokenizer, options: TranscribeOptions, capped: bool) -> bool:
    """Repetitive by compression ratio, by a repeated n-gram, or cut off at the token-rate cap."""
    if options.compression_ratio_threshold is not None and result.compression_ratio > options.compression_ratio_threshold:
        return True
    text_tokens = [t for t in result.tokens if t < tokenizer.eot]
    return is_looping(text_tokens, options.loop_min_repeats, options.loop_min_tokens) or (capped and not result.finished)


def _is_silence(result: DecodingResult, options: TranscribeOptions) -> bool:
    """openai's silence rule: the model says nobody speaks, and what it wrote is not probable
    enough to overrule it. Such a window is neither retried nor transcribed."""
    if options.no_speech_threshold is None or result.no_speech_prob <= options.no_speech_threshold:
        return False
    return options.logprob_threshold is None or result.avg_logprob <= options.logprob_threshold


def _segments(
    tokenizer: WhisperTokenizer, spans, result: DecodingResult, window_start: float, duration: float
) -> list[Segment]:
    """Segments with text, in absolute time. Text placed in the zero padding after the end of the
    audio cannot have been spoken, so it is dropped, and ends are clipped to the audio."""
    segments = []
    for span in spans:
        start, end = window_start + span.start, min(window_start + span.end, duration)
        text = tokenizer.decode(span.tokens)
        if start >= end or not text.strip():
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
class _PromptHistory:
    """Tokens of the text so far; the prompt is what came after the last reset."""

    tokens: list[int]
    reset_at: int = field(default=0)

    def prompt(self) -> list[int]:
        return self.tokens[self.reset_at :]

    def extend(self, segments: list[Segment]) -> None:
        for segment in segments:
            self.tokens.extend(segment.tokens)

    def reset(self) -> None:
        self.reset_at = len(self.tokens)


def _fixed_language(tokenizer: WhisperTokenizer, options: TranscribeOptions) -> str | None:
    """The language every window uses, or None when it must be detected on the first window."""
    if not tokenizer.multilingual:
        return "en"
    return language_code(options.language) if options.language is not None else None


def _window_mel(mel: np.ndarray, seek: int, frames: int, window_frames: int) -> np.ndarray:
    """float32 [1, n_mels, window_frames]: ``frames`` of content from ``seek``, zeros after (as openai's pad_or_trim)."""
    window = np.zeros((1, mel.shape[0], window_frames), dtype=np.float32)
    window[0, :, :frames] = mel[:, seek : seek + frames]
    return window


def _check_mel(engine: Engine, mel: np.ndarray, options: TranscribeOptions) -> None:
    dims = engine.dims
    if mel.ndim != 2 or mel.shape[0] != dims.n_mels:
        raise EdgeAsrError(f"The Mel spectrogram must be [{dims.n_mels}, frames] for this model, not {list(mel.shape)}.")
    if mel.shape[1] < MEL_PADDING_FRAMES:
        raise EdgeAsrError(
            f"The Mel spectrogram has {mel.shape[1]} frames; it must end with the {MEL_PADDING_FRAMES} frames of 30 s of padding."
        )
    if options.window_frames > 2 * dims.n_audio_ctx:
        raise EdgeAsrError(
            f"window_frames {options.window_frames} exceeds this model's audio context of {2 * dims.n_audio_ctx} frames."
        )
