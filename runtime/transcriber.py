"""The Python API: a loaded bundle that turns audio into a Transcript."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_asr.runtime.audio import SAMPLE_RATE, AudioFile
from edge_asr.runtime.bundle import Bundle, load_bundle
from edge_asr.runtime.errors import AudioError
from edge_asr.runtime.decoding.options import TranscribeOptions
from edge_asr.runtime.decoding.transcribe import transcribe
from edge_asr.runtime.engines import load_engine
from edge_asr.runtime.mel import LogMelFrontend
from edge_asr.runtime.recording_mel import RecordingMel
from edge_asr.runtime.tokenizer import WhisperTokenizer
from edge_asr.runtime.transcript import Transcript, WindowResult


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Transcriber:
    """Engine, tokenizer and Mel frontend of one bundle, loaded once and used for many files."""

    def __init__(self, bundle: Bundle | Path | str, threads: int | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(Path(bundle))
        dims = self.bundle.dims
        self.engine = load_engine(self.bundle, threads or default_threads())
        self.tokenizer = WhisperTokenizer.from_file(self.bundle.file("tokenizer"), dims.multilingual, dims.num_languages)
        self.frontend = LogMelFrontend(dims.n_mels)

    def options(self, **overrides) -> TranscribeOptions:
        """Options for this bundle: ``overrides`` with the model's own facts where they leave them unset."""
        return self.with_model_facts(TranscribeOptions(**overrides)).validate()

    def with_model_facts(self, options: TranscribeOptions) -> TranscribeOptions:
        """``options`` with what they leave to the model (None) taken from the bundle: its suppressed tokens
        and its window policy, from which each window's length follows (runtime/windows.py). Options made
        without the bundle (``TranscribeOptions(beam_size=5)``) so keep a student's audio-length windows."""
        suppress = self.bundle.suppress_tokens
        return replace(
            options,
            suppress_tokens=options.suppress_tokens if options.suppress_tokens is not None or suppress is None
            else tuple(suppress),
            window_policy=options.window_policy or self.bundle.window_policy,
        )

    def features(self, audio: np.ndarray | AudioFile) -> RecordingMel:
        """The audio's features as openai's log_mel_spectrogram(padding=N_SAMPLES) normalises them (the 30 s of
        zeros after the audio are part of the loudness normalisation the model was trained with; their frames
        are not decoded), computed window by window: a long file costs no more memory than a short one."""
        if isinstance(audio, AudioFile):
            return RecordingMel(self.frontend, audio.chunks)
        return RecordingMel.of_array(self.frontend, _samples(audio))

    def windows(self, audio: np.ndarray | AudioFile | RecordingMel, options: TranscribeOptions) -> Iterator[WindowResult]:
        """Decoded windows (up to 30 s each) as they complete, for progress and for keeping partial work."""
        mel = audio if isinstance(audio, RecordingMel) else self.features(audio)
        yield from transcribe(self.engine, self.tokenizer, mel, self.with_model_facts(options))

    def transcribe(self, source: str | Path | np.ndarray, options: TranscribeOptions | None = None) -> Transcript:
        mel = self.features(source if isinstance(source, np.ndarray) else AudioFile(source))
        options = self.with_model_facts(options or TranscribeOptions())
        name = str(source) if not isinstance(source, np.ndarray) else "<array>"
        transcript = Transcript(file=name, language=options.language or "", duration=mel.samples / SAMPLE_RATE)
        for window in self.windows(mel, options):
            transcript.language = window.language
            transcript.segments.extend(window.segments)
        return transcript


def _samples(array: np.ndarray) -> np.ndarray:
    """An array given directly must already be what load_audio returns: mono float 16 kHz samples."""
    if array.ndim != 1 or array.dtype.kind != "f":
        raise AudioError(f"audio arrays must be 1-D float samples at {SAMPLE_RATE} Hz, not {array.dtype} {array.shape}.")
    if not np.isfinite(array).all():
        raise AudioError("the audio array holds NaN or infinite samples.")
    return array.astype(np.float32, copy=False)
