"""Live microphone capture: PortAudio's callback only copies into a ring, the consumer thread does the rest."""
from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import soxr

from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.errors import AudioError

POLL_SECONDS = 0.1  # longest wait without audio: Ctrl-C is only noticed between waits
LIST_HINT = "see `edge-asr stream --list-devices`"


class SampleRing:
    """Single-producer single-consumer float32 ring between PortAudio's thread and the consumer.

    write() never blocks and never waits for the reader: when the reader is a whole ring behind,
    the oldest samples are overwritten and counted as dropped. Positions are running sample counts,
    each advanced by one side only, so no lock is needed.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._buffer = np.zeros(capacity, np.float32)
        self._claimed = 0  # samples the writer has begun to copy in
        self._written = 0  # samples completely copied in
        self._read = 0  # samples the reader has returned or skipped
        self._skipped = 0  # samples the reader found overwritten
        self._ready = threading.Event()

    @property
    def dropped(self) -> int:
        """Samples overwritten before they were read, including those a read has yet to skip."""
        return self._skipped + max(0, self._written - self.capacity - self._read)

    def write(self, samples: np.ndarray) -> None:
        """The producer's call: copy in place, no allocation; only the last `capacity` samples fit."""
        skip = max(0, len(samples) - self.capacity)
        end = self._written + len(samples)
        self._claimed = end  # before the copy: a reader checks it to learn what it may have lost
        pos = (self._written + skip) % self.capacity
        first = min(len(samples) - skip, self.capacity - pos)
        self._buffer[pos : pos + first] = samples[skip : skip + first]
        self._buffer[: len(samples) - skip - first] = samples[skip + first :]
        self._written = end
        self._ready.set()

    def read(self, max_samples: int | None = None) -> np.ndarray:
        """The consumer's call: the oldest available samples (at most max_samples), as a new array."""
        end = self._written
        start = max(self._read, end - self.capacity)
        if max_samples is not None:
            end = min(end, start + max_samples)
        pos = start % self.capacity
        first = min(end - start, self.capacity - pos)
        out = np.concatenate((self._buffer[pos : pos + first], self._buffer[: end - start - first]))
        valid_from = min(end, max(start, self._claimed - self.capacity))  # the writer lapped us while copying
        self._skipped += valid_from - self._read
        self._read = end
        return out[valid_from - start :]

    def wait(self, timeout: float) -> bool:
        """Block until a write() since the last wait(), at most timeout seconds; True if one came."""
        written = self._ready.wait(timeout)
        self._ready.clear()  # before the caller's read(): a later write sets it again
        return written


class CaptureStream(Protocol):
    """The part of sounddevice.InputStream that MicSource uses."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


class MicSource:
    """An input device at its own default rate (no device refuses it), resampled to 16 kHz by the consumer."""

    def __init__(
        self,
        device: int | str | None = None,
        block_samples: int = 512,
        buffer_seconds: float = 30.0,
        stream_factory: Callable[..., CaptureStream] | None = None,
        device_info: Callable[[int | str | None], Mapping[str, Any]] | None = None,
    ):
        info = (device_info or _input_device)(device)
        self.device_name: str = info["name"]
        self.samplerate = float(info["default_samplerate"])
        self.buffer_seconds = buffer_seconds
        self.started_at: float | None = None
        self.input_overflows = 0  # callbacks PortAudio flagged: it lost audio before we saw it
        self._device = info["index"]
        self._blocksize = max(1, round(block_samples * self.samplerate / SAMPLE_RATE))
        self._ring = SampleRing(math.ceil(buffer_seconds * self.samplerate))
        self._stream_factory = stream_factory or _portaudio_stream
        self._stream: CaptureStream | None = None
        self._resampler: soxr.ResampleStream | None = None
        self._stopped = False

    @property
    def dropped_samples(self) -> int:
        """Device-rate samples overwritten in the ring because the consumer fell behind."""
        return self._ring.dropped

    def blocks(self) -> Iterator[np.ndarray]:
        """16 kHz audio as it arrives, until stop(); what is still in the ring then is drain()'s."""
        self._resampler = soxr.ResampleStream(self.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        try:
            self._start()
            while not self._stopped:
                captured = self._ring.read()
                if not len(captured):
                    self._ring.wait(POLL_SECONDS)
                elif len(audio := self._resampler.resample_chunk(captured)):
                    yield audio
        finally:  # Ctrl-C while waiting, or a consumer that walked away: the device is released either way
            self.stop()

    def stop(self) -> None:
        """Stop and close the stream; say once, on stderr, if audio was lost."""
        if self._stopped:
            return
        self._stopped = True
        if self._stream is not None:
            try:
                self._stream.stop()  # unlike close() alone, lets PortAudio deliver the buffers it holds
            except _portaudio_errors():
                pass  # a device unplugged mid-stream cannot be stopped; close() still releases it
            self._stream.close()
        if loss := self._loss():
            print(f"edge-asr: warning: {loss}", file=sys.stderr)

    def drain(self) -> np.ndarray:
        """After stop(): the ring's rest and the resampler's held-back tail, so nothing heard is lost."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        audio = self._resampler.resample_chunk(self._ring.read(), last=True)
        self._resampler = None
        return audio

    def _start(self) -> None:
        try:
            self._stream = self._stream_factory(device=self._device, channels=1, samplerate=self.samplerate,
                                                dtype="float32", blocksize=self._blocksize, callback=self._capture)
            self.started_at = time.monotonic()
            self._stream.start()
        except _portaudio_errors() as err:
            raise AudioError(f"Cannot record from '{self.device_name}': {str(err).rstrip('.')}.") from err

    def _capture(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's thread: copy and signal only; anything slower here makes the device overflow."""
        if status.input_overflow:
            self.input_overflows += 1
        self._ring.write(indata[:, 0])

    def _loss(self) -> str:
        losses = []
        if self.input_overflows:
            losses.append(f"the audio device overflowed {_count(self.input_overflows, 'time')}")
        if self.dropped_samples:
            losses.append(f"{self.dropped_samples / self.samplerate:.1f} s were overwritten because recognition "
                          f"fell more than {self.buffer_seconds:g} s behind")
        return f"audio was lost: {' and '.join(losses)}." if losses else ""


def list_input_devices() -> list[str]:
    """One line per device that can record, for `edge-asr stream --list-devices`."""
    sd = _sounddevice()
    default = sd.default.device[0]
    return [
        f"{d['index']}: {d['name']} ({_count(d['max_input_channels'], 'input channel')}, {d['default_samplerate']:g} Hz"
        f"{', default' if d['index'] == default else ''})"
        for d in sd.query_devices()
        if d["max_input_channels"] > 0
    ]


def check_microphone(device: int | str | None = None) -> None:
    """Fail before a model loads, in one sentence, when the device cannot record mono float32."""
    sd = _sounddevice()
    info = _input_device(device)
    try:
        sd.check_input_settings(device=info["index"], channels=1, dtype="float32",
                                samplerate=info["default_samplerate"])
    except (sd.PortAudioError, ValueError) as err:
        raise AudioError(f"Cannot record from '{info['name']}': {str(err).rstrip('.')}.") from err


def _input_device(device: int | str | None) -> Mapping[str, Any]:
    """sounddevice's description of the device to record from (a digit string is an index)."""
    sd = _sounddevice()
    if isinstance(device, str) and device.isdigit():
        device = int(device)
    try:
        # By index, any device is found and then checked here; by name, sounddevice matches input devices only.
        info = sd.query_devices(device, kind=None if isinstance(device, int) else "input")
    except sd.PortAudioError:
        reason = "there is no default input device" if device is None else f"there is no audio device {device}"
    except ValueError as err:  # no input device's name matches, or several do
        first_line = str(err).splitlines()[0].rstrip(":")
        reason = first_line[:1].lower() + first_line[1:]
    else:
        if info["max_input_channels"] > 0:
            return info
        reason = f"audio device {device} ({info['name']}) has no input channels"
    raise AudioError(f"No audio input: {reason} ({LIST_HINT}).")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _sounddevice() -> ModuleType:
    """sounddevice, imported on first use: importing it loads PortAudio, which a files-only machine may lack."""
    try:
        import sounddevice
    except OSError as err:  # sounddevice's "PortAudio library not found"
        raise AudioError(
            "No audio input: the PortAudio library is not installed (apt-get install libportaudio2)."
        ) from err
    return sounddevice


def _portaudio_stream(**settings: Any) -> CaptureStream:
    return _sounddevice().InputStream(**settings)


def _portaudio_errors() -> tuple[type[Exception], ...]:
    """PortAudioError once sounddevice is loaded; an injected stream that never loaded it raises none."""
    sd = sys.modules.get("sounddevice")
    return (sd.PortAudioError,) if sd is not None else ()
