"""Whisper's log-Mel features computed as audio arrives, each frame once, equal to the offline path.

Frame ``i`` of the centred STFT covers samples ``[i * 160 - 200, i * 160 + 200)``, reflected at both
ends of the clip as ``torch.stft(center=True)`` does. ``StreamingLogMel.push`` computes every frame
as soon as its window is complete, into a ring of ``log10`` Mel power; ``window`` normalises a run
of those frames as ``LogMelFrontend`` normalises a whole clip, so a decoder window gets the features
the offline frontend gives the same samples, without recomputing the frames it shares with the last.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edge_asr.runtime.host_memory import host_buffer
from edge_asr.runtime.mel import HOP_LENGTH, N_FFT, N_FRAMES, LogMelFrontend

EDGE = N_FFT // 2  # samples reflected at each end of the clip, as torch.stft(center=True) does
MIN_CAPACITY = N_FRAMES + 100  # a whole 30 s window, plus 1 s that may arrive before it is copied
WORK_FRAMES = 500  # frames transformed at once: bounds the work buffer and mel_power's temporaries


class StreamingLogMel:
    """Incremental ``LogMelFrontend.log_power`` into a preallocated ring of ``capacity_frames``.

    Between pushes only the samples of the next, incomplete frame (< N_FFT) are kept; the work
    buffer, the ring and the frontend's filters are reused for the life of the stream.
    """

    def __init__(self, frontend: LogMelFrontend, capacity_frames: int = 4500, pinned: bool = False):
        if capacity_frames < MIN_CAPACITY:
            raise ValueError(
                f"capacity_frames={capacity_frames} is too small: a stream needs at least "
                f"{MIN_CAPACITY} frames, one 30 s window plus 1 s of margin."
            )
        self.frontend = frontend
        self.capacity_frames = capacity_frames
        self._ring = host_buffer((frontend.n_mels, capacity_frames), np.float32, pinned=pinned)
        self._signal = np.zeros(N_FFT + (WORK_FRAMES - 1) * HOP_LENGTH, np.float32)
        self.reset()

    def reset(self) -> None:
        """Back to an empty stream; the buffers are kept for the next one."""
        self.frames_done = 0  # frames computed so far: frame i is centred on sample i * HOP_LENGTH
        self.samples_seen = 0  # samples pushed so far
        self._filled = EDGE  # _signal[:_filled] is the padded signal from frame frames_done's start
        self._started = False  # whether _signal[:EDGE] holds the reflection of the clip's start
        self._flushed = False

    def push(self, samples: np.ndarray) -> int:
        """Append 16 kHz float32 samples; returns how many frames they completed."""
        if self._flushed:
            raise RuntimeError("This stream was flushed: call reset() before pushing new audio.")
        samples = np.asarray(samples, np.float32)
        if samples.ndim != 1:
            raise ValueError(f"push() takes mono samples [n], not shape {samples.shape}")
        before = self.frames_done
        self._append(samples)
        self.samples_seen += len(samples)
        return self.frames_done - before

    def flush(self, padding: int = 0) -> int:
        """End of input: ``padding`` zero samples, then the frames left up to ``(samples_seen +
        padding) // HOP_LENGTH``, as ``LogMelFrontend.log_power(audio, padding)`` computes them."""
        if self._flushed:
            raise RuntimeError("This stream was flushed already: call reset() to start another.")
        before = self.frames_done
        self._append(np.broadcast_to(np.float32(0), (padding,)))  # zeros without allocating them
        self._flushed = True
        remaining = (self.samples_seen + padding) // HOP_LENGTH - self.frames_done
        if remaining == 0:  # also a clip under one hop, which the offline frontend never pads
            return 0
        if self._started:
            end = self._filled
            self._signal[end : end + EDGE] = self._signal[end - 2 : end - 2 - EDGE : -1]
            self._filled += EDGE
        else:  # 160..200 samples: numpy reflects them repeatedly, just as the offline path does
            clip = np.pad(self._signal[EDGE : self._filled], EDGE, mode="reflect")
            self._signal[: len(clip)] = clip
            self._filled = len(clip)
        self._compute(remaining)
        return self.frames_done - before

    def window(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Normalised features ``float32 [n_mels, stop - start]`` of frames ``[start, stop)``, over
        their own peak as for a clip of just these frames; written into ``out`` when given."""
        out = self.log_power(start, stop, out)
        return self.frontend.normalize(out, out=out)

    def log_power(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """The ``log10`` Mel power of frames ``[start, stop)``, not normalised; written into ``out`` when given."""
        oldest = max(0, self.frames_done - self.capacity_frames)
        if not 0 <= start <= stop:
            raise ValueError(f"Frames [{start}, {stop}) are not a window: need 0 <= start <= stop.")
        if stop > self.frames_done:
            raise ValueError(
                f"Frames [{start}, {stop}) are not computed yet: the stream has {self.frames_done}."
            )
        if start < oldest:
            raise ValueError(
                f"Frames [{start}, {stop}) were overwritten: the ring holds frames [{oldest}, "
                f"{self.frames_done}) now."
            )
        shape = (self.frontend.n_mels, stop - start)
        if out is None:
            out = np.empty(shape, np.float32)
        elif out.shape != shape:
            raise ValueError(f"out has shape {out.shape}; frames [{start}, {stop}) need {shape}.")
        for columns, part in self._ring_parts(start, stop):
            out[:, part] = self._ring[:, columns]
        return out

    def _append(self, samples: np.ndarray) -> None:
        """Copy ``samples`` into the work buffer piece by piece, computing each completed frame."""
        taken = 0
        while taken < len(samples):
            n = min(len(samples) - taken, len(self._signal) - self._filled)
            self._signal[self._filled : self._filled + n] = samples[taken : taken + n]
            self._filled += n
            taken += n
            if not self._started and self._filled > 2 * EDGE:  # samples 1..200 are here to reflect
                self._signal[:EDGE] = self._signal[2 * EDGE : EDGE : -1]
                self._started = True
            if self._started and self._filled >= N_FFT:
                self._compute((self._filled - N_FFT) // HOP_LENGTH + 1)

    def _compute(self, count: int) -> None:
        """Frames ``[frames_done, frames_done + count)`` of the work buffer into the ring, then drop
        the samples that no later frame needs."""
        frames = sliding_window_view(self._signal[: self._filled], N_FFT)[::HOP_LENGTH]
        for columns, part in self._ring_parts(self.frames_done, self.frames_done + count):
            ring = self._ring[:, columns]
            self.frontend.mel_power(frames[part], out=ring)
            np.log10(np.maximum(ring, 1e-10, out=ring), out=ring)
        self.frames_done += count
        used = count * HOP_LENGTH
        self._filled -= used
        self._signal[: self._filled] = self._signal[used : used + self._filled]

    def _ring_parts(self, start: int, stop: int) -> Iterator[tuple[slice, slice]]:
        """(ring columns, positions in the run) of frames ``[start, stop)``, split at the wrap."""
        first = start % self.capacity_frames
        size = min(stop - start, self.capacity_frames - first)
        yield slice(first, first + size), slice(0, size)
        if size < stop - start:
            yield slice(0, stop - start - size), slice(size, stop - start)
