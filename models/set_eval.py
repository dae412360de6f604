"""Named sets of clips transcribed by any engine through the runtime's own long-form decoding (windows,
fallback, silence rules, repetition guard): what a student is tuned on and judged on.

A clip with a reference is speech and scores WER; a clip whose reference is empty is not speech and
counts the words written on it. A window decoded above temperature 0 counts as a fallback: its first
decoding repeated itself, ran past the token-rate cap or was improbable (a loop, rescued). Encoder
seconds are summed per clip, so the cost of short utterances can be read apart. With ``speech_only`` (VAD
settings), each clip is transcribed as `transcribe --vad` does it: its speech alone (runtime/speech_windows.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from edge_asr.models.clips import Clip
from edge_asr.models.wer import corpus_wer
from edge_asr.runtime.audio import load_audio
from edge_asr.runtime.decoding.options import TranscribeOptions
from edge_asr.runtime.decoding.transcribe import transcribe
from edge_asr.runtime.engines.timed import TimedEngine
from edge_asr.runtime.mel import HOP_LENGTH, N_SAMPLES, LogMelFrontend
from edge_asr.runtime.speech_windows import find_speech
from edge_asr.runtime.streaming.segmenter import VadOptions
from edge_asr.runtime.tokenizer import WhisperTokenizer

SHORT_S = 10.0  # utterances this long or shorter: where a length-adaptive encoder must be cheap


@dataclass(frozen=True)
class ClipTranscript:
    name: str
    reference: str
    text: str
    seconds: float
    fallbacks: int  # windows decoded above temperature 0
    encoder_s: float


@dataclass(frozen=True)
class SetResult:
    wer: float | None  # percent over the speech clips; None without any
    words_on_nonspeech: int  # words written on clips whose reference is empty
    nonspeech_clips_with_words: int
    fallbacks: int
    encoder_s: float
    short_encoder_s: float  # of speech clips of SHORT_S or less
    clips: tuple[ClipTranscript, ...]

    def figures(self) -> dict[str, float]:
        figures = {"words_on_nonspeech": float(self.words_on_nonspeech), "fallbacks": float(self.fallbacks)}
        return figures if self.wer is None else {"wer": self.wer, **figures}


class ClipSets:
    """Clip sets with their features computed once (as runtime/transcriber.py computes them)."""

    def __init__(self, sets: dict[str, Sequence[Clip]], n_mels: int = 80, speech_only: VadOptions | None = None):
        frontend = LogMelFrontend(n_mels)
        vad = None
        if speech_only is not None:
            from edge_asr.runtime.streaming.vad import SileroVad

            vad = SileroVad()  # for the features only; the engines judged come later, on their own Threads
        # (clip, features, window ends)
        self.sets = {name: [(clip, *_features(frontend, clip, vad, speech_only)) for clip in clips
                            if clip.reference is not None]
                     for name, clips in sets.items()}

    def evaluate(self, engine, tokenizer: WhisperTokenizer, options: TranscribeOptions) -> dict[str, SetResult]:
        """Every clip transcribed by ``engine`` (any engine; its encoder calls are timed here)."""
        timed = TimedEngine(engine)
        results = {}
        for name, clips in self.sets.items():
            transcripts = []
            for clip, mel, ends in clips:
                timed.reset()
                segments = [s for w in transcribe(timed, tokenizer, mel, options, window_ends=ends) for s in w.segments]
                transcripts.append(ClipTranscript(
                    clip.name, clip.reference, "".join(s.text for s in segments).strip(), mel.shape[1] / 100,
                    len({s.start for s in segments if s.temperature > 0}), timed.encoder_seconds))
            results[name] = _set_result(transcripts)
        return results


def _features(frontend: LogMelFrontend, clip: Clip, vad=None, speech_only: VadOptions | None = None
              ) -> tuple[np.ndarray, list[int]]:
    """The runtime's features of a clip (normalised with 30 s of padding, then cut to the audio) and where its
    windows must end: with a VAD, of the clip's speech regions joined, ending between regions."""
    audio, ends = load_audio(clip.path), []
    if vad is not None:
        vad.reset()
        speech = find_speech([audio], vad, speech_only)
        audio = np.concatenate(list(speech.joined([audio])) or [audio[:0]])
        ends = speech.window_ends(N_SAMPLES // HOP_LENGTH)
    return frontend(audio, padding=N_SAMPLES)[:, : len(audio) // HOP_LENGTH], ends


def _set_result(transcripts: list[ClipTranscript]) -> SetResult:
    speech = [t for t in transcripts if t.reference.strip()]
    silent = [t for t in transcripts if not t.reference.strip()]
    words = [len(t.text.split()) for t in silent]
    return SetResult(
        wer=corpus_wer([(t.reference, t.text) for t in speech]) if speech else None,
        words_on_nonspeech=sum(words), nonspeech_clips_with_words=sum(1 for w in words if w),
        fallbacks=sum(t.fallbacks for t in transcripts), encoder_s=sum(t.encoder_s for t in transcripts),
        short_encoder_s=sum(t.encoder_s for t in speech if t.seconds <= SHORT_S), clips=tuple(transcripts),
    )


def results_table(results: dict[str, dict[str, SetResult]]) -> list[str]:
    """Markdown lines: a row per model; per set its WER (speech) or the words written (non-speech), both where
    a set of speech holds non-speech clips too ("12.01 % + 2 words"); fallbacks."""
    names = list(next(iter(results.values())))
    lines = ["| model | " + " | ".join(names) + " | fallbacks | encoder s, speech <= 10 s |",
             "|---" * (len(names) + 3) + "|"]
    for model, sets in results.items():
        cells = [_cell(r) for r in sets.values()]
        short = sum(r.short_encoder_s for r in sets.values())
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {sum(r.fallbacks for r in sets.values())} | {short:.2f} |")
    return lines


def _cell(result: SetResult) -> str:
    words = f"{result.words_on_nonspeech} words"
    if result.wer is None:
        return words
    silent = any(not clip.reference.strip() for clip in result.clips)
    return f"{result.wer:.2f} % + {words}" if silent else f"{result.wer:.2f} %"


def as_dict(results: dict[str, SetResult]) -> dict:
    return {name: asdict(result) for name, result in results.items()}
