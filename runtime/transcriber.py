"""The Python API: a loaded bundle that turns audio into a Transcript."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_asr.runtime.audio import SAMPLE_RATE, AudioFile
from edge_asr.runtime.bundle import Bundle, load_bundle
from edge_asr.runtime.errors import AudioError, EdgeAsrError
from edge_asr.runtime.decoding.options import TranscribeOptions
from edge_asr.runtime.decoding.transcribe import transcribe
from edge_asr.runtime.engines import load_engine
from edge_asr.runtime.mel import LogMelFrontend
from edge_asr.runtime.recording_mel import RecordingMel
from edge_asr.runtime.speech_windows import OFFLINE_VAD, SpeechMap, find_speech
from edge_asr.runtime.streaming.segmenter import VadOptions
from edge_asr.runtime.threads import Threads
from edge_asr.runtime.tokenizer import WhisperTokenizer
from edge_asr.runtime.transcript import Transcript, WindowResult


class Transcriber:
    """Engine, tokenizer and Mel frontend of one bundle, loaded once and used for many files."""

    def __init__(self, bundle: Bundle | Path | str, threads: int | Threads | None = None, vad=None):
        """``threads``: the entry point's Threads (runtime/threads.py) or a number (None: every core). ``vad``: a
        streaming.vad.SileroVad for speech-only transcription, made before this with the same Threads: it then
        runs on a thread of its own, 0.12 ms a 32 ms window here against 0.30 ms on the engine's pool. Without
        one, speech() makes one on first use, on the engine's pool."""
        self._vad = vad
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(Path(bundle))
        dims = self.bundle.dims
        self.threads = Threads.of(threads)
        self.engine = load_engine(self.bundle, self.threads)
        # Read after the engine, not beside it: tokenizers holds the GIL for the whole 60-65 ms of parsing, so a
        # thread of its own overlapped nothing (the sessions and the tokenizer: 0.17-0.22 s either way).
        self.tokenizer = WhisperTokenizer.from_file(self.bundle.file("tokenizer"), dims.multilingual, dims.num_languages)
        self.frontend = LogMelFrontend(dims.n_mels)

    def options(self, **overrides) -> TranscribeOptions:
        """Options for this bundle: ``overrides`` with the model's own facts where they leave them unset."""
        return self.with_model_facts(TranscribeOptions(**overrides)).validate()

    def with_model_facts(self, options: TranscribeOptions) -> TranscribeOptions:
        """``options`` with what they leave to the model (None) taken from the bundle: its suppressed tokens
        and its window policy, from which each window's length follows (runtime/windows.py). Options made
        without the bundle (``TranscribeOptions(beam_size=5)``) so keep a student's audio-length windows."""
        if options.word_timestamps and "alignment" not in self.bundle.manifest["files"]:
            raise EdgeAsrError(f"bundle {self.bundle.path} has no alignment graph for word timestamps (only "
                               "onnxruntime bundles compiled by this edge-asr have one): compile it again with "
                               "`edge-asr compile`.")
        suppress = self.bundle.suppress_tokens
        return replace(
            options,
            suppress_tokens=options.suppress_tokens if options.suppress_tokens is not None or suppress is None
            else tuple(suppress),
            window_policy=options.window_policy or self.bundle.window_policy,
        )

    def speech(self, audio: np.ndarray | AudioFile, vad: VadOptions = OFFLINE_VAD) -> SpeechMap:
        """Where the audio's speech is, by the Silero VAD (one pass over the audio; speech_windows.py)."""
        from edge_asr.runtime.streaming.vad import SileroVad

        if self._vad is None:
            self._vad = SileroVad()
        self._vad.reset()
        chunks = audio.chunks() if isinstance(audio, AudioFile) else iter([_samples(audio)])
        return find_speech(chunks, self._vad, vad)

    def features(self, audio: np.ndarray | AudioFile, speech: SpeechMap | None = None) -> RecordingMel:
        """The audio's features as openai's log_mel_spectrogram(padding=N_SAMPLES) normalises them (the 30 s of
        zeros after the audio are part of the loudness normalisation the model was trained with; their frames
        are not decoded), computed window by window: a long file costs no more memory than a short one.
        With ``speech``, the features of its regions joined end to end: the silence between is never read."""
        if isinstance(audio, AudioFile):
            chunks = audio.chunks
        else:
            samples = _samples(audio)
            chunks = RecordingMel.array_chunks(samples)
        return RecordingMel(self.frontend, chunks if speech is None else lambda: speech.joined(chunks()))

    def windows(self, audio: np.ndarray | AudioFile | RecordingMel, options: TranscribeOptions,
                speech: SpeechMap | None = None) -> Iterator[WindowResult]:
        """Decoded windows (up to 30 s each) as they complete, for progress and for keeping partial work. With
        ``speech`` (the map ``audio`` or its features were made with), windows end where speech regions do, and
        their times are the file's."""
        mel = audio if isinstance(audio, RecordingMel) else self.features(audio, speech)
        options = self.with_model_facts(options)
        if speech is None:
            yield from transcribe(self.engine, self.tokenizer, mel, options)
            return
        ends = speech.window_ends(options.window_frames)
        for window in transcribe(self.engine, self.tokenizer, mel, options, window_ends=ends):
            yield speech.to_file(window)

    def transcribe(self, source: str | Path | np.ndarray, options: TranscribeOptions | None = None,
                   vad: VadOptions | None = None) -> Transcript:
        """The transcript of a file or an array; with ``vad`` (e.g. speech_windows.OFFLINE_VAD), of its speech only."""
        audio = source if isinstance(source, np.ndarray) else AudioFile(source)
        speech = self.speech(audio, vad) if vad is not None else None
        mel = self.features(audio, speech)
        options = self.with_model_facts(options or TranscribeOptions())
        name = str(source) if not isinstance(source, np.ndarray) else "<array>"
        samples = speech.file_samples if speech is not None else mel.samples
        transcript = Transcript(file=name, language=options.language or "", duration=samples / SAMPLE_RATE)
        for window in self.windows(mel, options, speech):
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
