"""Where `edge-asr stream` hears audio: a file, a pipe of raw PCM, or a microphone; all as 16 kHz blocks."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, Protocol

import numpy as np
import soxr

from edge_asr.runtime.audio import SAMPLE_RATE, AudioFile, damage_report, pcm16_to_float32
from edge_asr.runtime.errors import AudioError


class AudioSource(Protocol):
    """What the streaming recognizer reads; started_at ties sample 0 to time.monotonic() for latency."""

    started_at: float | None

    def blocks(self) -> Iterator[np.ndarray]:
        """float32 mono 16 kHz blocks (never empty) until the input ends or stop() is called."""

    def stop(self) -> None:
        """Stop capturing; idempotent."""

    def drain(self) -> np.ndarray:
        """After stop(): audio captured but not yet yielded (maybe empty)."""


class FileSource:
    """An audio file, as fast as the consumer takes it, or paced like a live capture to test latency."""

    def __init__(
        self,
        path: str | os.PathLike,
        realtime: bool = False,
        block_samples: int = 512,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.name = os.fspath(path)
        self.audio = AudioFile(path)  # here, not in blocks(): a file that is not audio fails before a model loads
        self.realtime = realtime
        self.block_samples = block_samples
        self.started_at: float | None = None
        self._clock = clock
        self._sleep = sleep
        self._stopped = False

    def blocks(self) -> Iterator[np.ndarray]:
        """In realtime mode a block comes when its last sample would have been captured, never earlier;
        a late consumer gets it at once, so lateness shows up as latency, not as lost audio. The file is
        decoded as it is read: a long one is never held whole."""
        self.started_at = self._clock()
        end = 0
        for block in _cut(self.audio.chunks(), self.block_samples):
            end += len(block)
            if self.realtime and (wait := self.started_at + end / SAMPLE_RATE - self._clock()) > 0:
                self._sleep(wait)
            if self._stopped:
                return
            yield block
        if self.audio.damage:  # after all that decoded: the stream makes its text, then exits non-zero
            raise AudioError(damage_report(self.audio))

    def stop(self) -> None:
        self._stopped = True

    def drain(self) -> np.ndarray:
        """Nothing: a file holds no audio that was captured and not yielded."""
        return np.zeros(0, np.float32)


class StdinSource:
    """Raw signed 16-bit little-endian mono PCM from a pipe (`arecord -f S16_LE -r 16000 -c 1`)."""

    def __init__(self, stream: BinaryIO | None = None, sample_rate: int = SAMPLE_RATE, block_samples: int = 512):
        if sample_rate <= 0:
            raise AudioError(f"Cannot read PCM from stdin at {sample_rate} Hz: the sample rate must be positive.")
        self.stream = _stdin() if stream is None else stream
        if self.stream.closed:
            raise AudioError("Cannot read audio from stdin: it is closed.")
        if self.stream.isatty():  # a forgotten pipe would read keystrokes as audio
            raise AudioError("Cannot read audio from stdin: it is a terminal; pipe raw 16-bit PCM into it "
                             "(e.g. from `arecord -f S16_LE -r 16000 -c 1`).")
        self.sample_rate = sample_rate
        self.started_at: float | None = None
        # Sized so a block comes out near block_samples at 16 kHz; read1 returns what the pipe has, not more.
        self._read_bytes = 2 * max(1, round(block_samples * sample_rate / SAMPLE_RATE))
        self._read = getattr(self.stream, "read1", self.stream.read)
        self._resampler: soxr.ResampleStream | None = None
        self._stopped = False

    def blocks(self) -> Iterator[np.ndarray]:
        """16 kHz blocks as bytes arrive; at end of input, the resampler's held-back tail too."""
        self.started_at = time.monotonic()
        self._resampler = soxr.ResampleStream(self.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        odd = b""  # a sample split across two reads
        while not self._stopped and (chunk := self._read_chunk()):
            data = odd + chunk
            whole = len(data) & ~1
            odd = data[whole:]
            pcm = pcm16_to_float32(data[:whole])
            if len(audio := self._resampler.resample_chunk(pcm)):
                yield audio
        if not self._stopped and len(tail := self.drain()):
            yield tail
        if odd:
            print("edge-asr: warning: the input ended inside a 16-bit sample; its last byte was dropped.", file=sys.stderr)

    def stop(self) -> None:
        self._stopped = True

    def drain(self) -> np.ndarray:
        """The resampler's held-back tail (once): the bytes already read are otherwise all yielded."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        self._resampler = None
        return tail

    def _read_chunk(self) -> bytes:
        try:
            return self._read(self._read_bytes)
        except (OSError, ValueError) as err:  # ValueError: the stream was closed under us
            reason = getattr(err, "strerror", None) or str(err).rstrip(".")
            raise AudioError(f"Cannot read audio from stdin: {reason}.") from err


def _stdin() -> BinaryIO:
    if sys.stdin is None:  # started with stdin closed (`<&-`)
        raise AudioError("Cannot read audio from stdin: it is closed.")
    return sys.stdin.buffer


def _cut(chunks: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """The samples of ``chunks`` again, in blocks of ``size`` (the last one shorter)."""
    pending = np.zeros(0, np.float32)
    for chunk in chunks:
        pending = np.concatenate([pending, chunk]) if len(pending) else chunk
        whole = len(pending) - len(pending) % size
        for at in range(0, whole, size):
            yield pending[at : at + size]
        pending = pending[whole:]
    if len(pending):
        yield pending
