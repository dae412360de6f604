"""Whisper's features of a whole recording, handed to decoding window by window.

openai-whisper normalises a recording's log-Mel over its whole peak (computed with 30 s of zeros after the
audio), so the features of any window depend on the loudest moment of the file. ``RecordingMel`` gives the
same values at flat memory: a first pass over the audio finds the peak and discards the frames, and a second
pass computes each window's frames when decoding asks for them (forward; asking to go back starts the pass
again). Nothing of size proportional to the recording is kept: 1 h of audio would be 230 MB of samples and
115 MB of features. ``ArrayMel`` is the same interface over features already in memory (a clip, a stream's
utterance).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import numpy as np

from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.mel import HOP_LENGTH, N_FFT, N_FRAMES, LogMelFrontend
from edge_asr.runtime.streaming.mel_stream import StreamingLogMel

PIECE_SAMPLES = 1 << 14  # samples pushed at a time: about 100 frames, far below the ring's spare room
SILENT_LOG_POWER = -10.0  # log10 of the Mel floor: the frames of the 30 s of zeros openai pads with
CAPACITY_FRAMES = N_FRAMES + 1500  # a whole window and the frames one push or the flush may add past it


class MelSource(Protocol):
    """Normalised log-Mel features of one recording, read a window at a time."""

    n_mels: int
    frames: int  # frames of audio (one per 10 ms), no padding frames

    @property
    def peak(self) -> float | None:
        """The largest normalised value over the audio's frames; None when there are none."""

    def window(self, start: int, stop: int) -> np.ndarray:
        """float32 [n_mels, stop - start]: frames [start, stop), 0 <= start <= stop <= frames."""


class ArrayMel:
    """Features already computed, as an array [n_mels, frames]."""

    def __init__(self, features: np.ndarray):
        if features.ndim != 2:
            raise EdgeAsrError(f"The Mel spectrogram must be [n_mels, frames], not {list(features.shape)}.")
        self.features = features
        self.n_mels, self.frames = features.shape

    @property
    def peak(self) -> float | None:
        return float(self.features.max()) if self.features.size else None

    def window(self, start: int, stop: int) -> np.ndarray:
        return self.features[:, start:stop]


class RecordingMel:
    """The features ``frontend(audio, padding=N_SAMPLES)[:, : len(audio) // HOP_LENGTH]`` of audio that
    ``chunks()`` yields afresh on each call (float32 16 kHz pieces of any size), computed window by window.

    Made, it has read the audio once: ``samples``, ``frames`` and the peak are known."""

    def __init__(self, frontend: LogMelFrontend, chunks: Callable[[], Iterable[np.ndarray]]):
        self.frontend = frontend
        self.n_mels = frontend.n_mels
        self._chunks = chunks
        self._stream = StreamingLogMel(frontend, CAPACITY_FRAMES)
        self._pieces: Iterator[np.ndarray] | None = None
        self._flushed = False
        self.samples, self.log_peak, self._audio_log_peak = self._first_pass()
        self.frames = self.samples // HOP_LENGTH

    @classmethod
    def of_array(cls, frontend: LogMelFrontend, audio: np.ndarray) -> RecordingMel:
        return cls(frontend, cls.array_chunks(audio))

    @staticmethod
    def array_chunks(audio: np.ndarray) -> Callable[[], Iterator[np.ndarray]]:
        """What ``chunks`` is for audio already in memory: its pieces, afresh on each call."""
        return lambda: (audio[at : at + PIECE_SAMPLES] for at in range(0, len(audio), PIECE_SAMPLES))

    @property
    def peak(self) -> float | None:
        if self.frames == 0:
            return None
        return (max(self._audio_log_peak, self.log_peak - 8.0) + 4.0) / 4.0

    def window(self, start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= self.frames:
            raise ValueError(f"Frames [{start}, {stop}) are not a window of a recording of {self.frames} frames.")
        if self._pieces is None or start < self._stream.frames_done - self._stream.capacity_frames:
            self._restart()  # going back: compute the frames again from the start
        while self._stream.frames_done < stop:
            piece = next(self._pieces, None)
            if piece is not None:
                self._stream.push(piece)
            elif not self._flushed:
                self._stream.flush(N_FFT)
                self._flushed = True
            else:
                raise EdgeAsrError("The audio changed while it was being transcribed: it now ends earlier.")
        log_mel = self._stream.log_power(start, stop)
        return self.frontend.normalize(log_mel, out=log_mel, peak=self.log_peak)

    def _first_pass(self) -> tuple[int, float, float]:
        """(samples, log peak with openai's 30 s of zero padding, log peak over the audio's own frames).

        Frames that push() completes are all audio frames (their windows end inside the audio); of those
        flush() adds, the ones from samples // HOP_LENGTH on overlap the padding. N_FFT zeros of padding give
        every frame that touches the audio; the rest of the 30 s gives frames at SILENT_LOG_POWER."""
        stream = self._stream
        stream.reset()
        samples, log_peak = 0, SILENT_LOG_POWER
        audio_log_peak = -np.inf
        for piece in _pieces(self._chunks()):
            if completed := stream.push(piece):
                newest = stream.log_power(stream.frames_done - completed, stream.frames_done)
                audio_log_peak = max(audio_log_peak, float(newest.max()))
            samples += len(piece)
        first = stream.frames_done
        stream.flush(N_FFT)
        audio_frames = samples // HOP_LENGTH
        if audio_frames > first:
            audio_log_peak = max(audio_log_peak, float(stream.log_power(first, audio_frames).max()))
        if stream.frames_done > max(first, audio_frames):
            tail = stream.log_power(max(first, audio_frames), stream.frames_done)
            log_peak = max(log_peak, float(tail.max()))
        return samples, max(log_peak, audio_log_peak), audio_log_peak

    def _restart(self) -> None:
        self._stream.reset()
        self._pieces = _pieces(self._chunks())
        self._flushed = False


def _pieces(chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """The chunks cut to at most PIECE_SAMPLES, so no push computes more frames than the ring has room for."""
    for chunk in chunks:
        for at in range(0, len(chunk), PIECE_SAMPLES):
            yield chunk[at : at + PIECE_SAMPLES]
