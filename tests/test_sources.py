"""Audio sources of `edge-asr stream`: file, stdin PCM and microphone (a fake stream: no PortAudio needed)."""
from __future__ import annotations

import _thread
import builtins
import io
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import soxr

from edge_asr.runtime.audio import SAMPLE_RATE, load_audio
from edge_asr.runtime.errors import AudioError
from edge_asr.runtime.streaming import microphone
from edge_asr.runtime.streaming.microphone import MicSource, SampleRing, check_microphone, list_input_devices
from edge_asr.runtime.streaming.sources import FileSource, StdinSource

from conftest import DATA

JFK = DATA / "jfk.wav"
MIC_48K = {"name": "Fake USB mic", "index": 3, "max_input_channels": 1, "default_samplerate": 48000.0}


def sine(hz: float, rate: int, seconds: float) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(round(rate * seconds)) / rate)).astype(np.float32)


def dominant_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.argmax(spectrum) * SAMPLE_RATE / len(audio)


# --- FileSource -------------------------------------------------------------------------------------------


class FakeClock:
    """time.monotonic and time.sleep in one: sleeping moves the clock, and so does a slow consumer."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_file_fast_mode_yields_the_loaded_samples():
    source = FileSource(JFK, block_samples=1000)
    blocks = list(source.blocks())
    assert source.started_at is not None
    assert all(0 < len(b) <= 1000 and b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(JFK))


def test_file_realtime_mode_yields_no_block_before_its_capture_time():
    clock = FakeClock()
    source = FileSource(JFK, realtime=True, block_samples=1600, clock=clock, sleep=clock.sleep)
    end = 0
    for block in source.blocks():
        end += len(block)
        assert clock.now >= source.started_at + end / SAMPLE_RATE - 1e-9
        assert clock.now <= source.started_at + end / SAMPLE_RATE + 1e-9  # and not later, for a prompt consumer
    assert end == source.audio.samples == len(load_audio(JFK))


def test_file_realtime_mode_lets_a_late_consumer_catch_up_without_sleeping_or_dropping():
    clock = FakeClock()
    source = FileSource(JFK, realtime=True, block_samples=1600, clock=clock, sleep=clock.sleep)  # 0.1 s blocks
    blocks = []
    for block in source.blocks():
        blocks.append(block)
        if len(blocks) == 3:
            clock.now += 1.0  # the consumer stalls for ten blocks' worth
            sleeps_when_late = len(clock.sleeps)
        if len(blocks) == 12:
            assert len(clock.sleeps) == sleeps_when_late  # blocks 4..12 were already due: no sleep
    assert len(clock.sleeps) > sleeps_when_late  # once caught up, it is paced again
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(JFK))  # every sample, in order


def test_file_stop_ends_the_blocks():
    source = FileSource(JFK, block_samples=1000)
    blocks = source.blocks()
    next(blocks)
    source.stop()
    assert list(blocks) == [] and len(source.drain()) == 0


def test_bad_file_is_an_audio_error(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio\n" * 50)
    with pytest.raises(AudioError, match="not an audio file"):
        FileSource(bad)


# --- StdinSource ------------------------------------------------------------------------------------------


class Trickle(io.RawIOBase):
    """A pipe that hands out odd-sized pieces, so samples are split between reads (no read1)."""

    def __init__(self, data: bytes, sizes=(7, 1, 3, 1001, 5)):
        self._data = io.BytesIO(data)
        self._sizes = sizes
        self._reads = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self._reads += 1
        return self._data.read(min(n, self._sizes[self._reads % len(self._sizes)]))


def pcm(samples: np.ndarray) -> bytes:
    return (samples * 32767).astype("<i2").tobytes()


@pytest.mark.parametrize("make_stream", [io.BytesIO, Trickle], ids=["read1", "odd-reads"])
def test_stdin_16khz_pcm_is_scaled_not_changed(make_stream):
    ints = np.random.default_rng(0).integers(-32768, 32768, 20001).astype("<i2")
    blocks = list(StdinSource(make_stream(ints.tobytes()), block_samples=512).blocks())
    assert all(len(b) > 0 and b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), ints / np.float32(32768))


def test_stdin_drops_a_dangling_odd_byte_at_the_end():
    ints = np.arange(-50, 50, dtype="<i2")
    audio = np.concatenate(list(StdinSource(io.BytesIO(ints.tobytes() + b"\x01")).blocks()))
    np.testing.assert_array_equal(audio, ints / np.float32(32768))


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_stdin_other_rates_are_resampled_to_16khz(rate):
    source = StdinSource(Trickle(pcm(sine(1000, rate, 2.0))), sample_rate=rate)
    audio = np.concatenate(list(source.blocks()))
    assert abs(len(audio) - 2 * SAMPLE_RATE) <= 2
    assert dominant_hz(audio) == pytest.approx(1000, abs=1)


def test_stdin_stop_leaves_the_resampler_tail_to_drain():
    source = StdinSource(io.BytesIO(pcm(sine(440, 48000, 1.0))), sample_rate=48000)
    blocks = source.blocks()
    first = next(blocks)
    source.stop()
    rest = list(blocks)
    tail = source.drain()
    assert len(tail) > 0 and len(source.drain()) == 0
    assert 0 < len(first) + sum(map(len, rest)) + len(tail) < SAMPLE_RATE


def test_stdin_errors_are_audio_errors(monkeypatch):
    with pytest.raises(AudioError, match="sample rate must be positive"):
        StdinSource(io.BytesIO(b""), sample_rate=0)
    closed = io.BytesIO(b"\0\0")
    closed.close()
    with pytest.raises(AudioError, match="stdin: it is closed"):
        StdinSource(closed)
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(AudioError, match="stdin: it is closed"):
        StdinSource()

    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            raise OSError(5, "Input/output error")

    with pytest.raises(AudioError, match=r"^Cannot read audio from stdin: Input/output error\.$"):
        list(StdinSource(Broken()).blocks())


# --- SampleRing -------------------------------------------------------------------------------------------


def test_ring_wraps_around_in_order():
    ring = SampleRing(8)
    ring.write(np.arange(5, dtype=np.float32))
    np.testing.assert_array_equal(ring.read(3), [0, 1, 2])
    ring.write(np.arange(5, 11, dtype=np.float32))  # crosses the end of the buffer
    np.testing.assert_array_equal(ring.read(), np.arange(3, 11))
    assert len(ring.read()) == 0 and ring.dropped == 0


def test_ring_overrun_keeps_the_newest_and_counts_the_rest():
    ring = SampleRing(8)
    for start in range(0, 20, 3):
        ring.write(np.arange(start, min(start + 3, 20), dtype=np.float32))
    assert ring.dropped == 12  # known before the reader looks
    np.testing.assert_array_equal(ring.read(), np.arange(12, 20))
    assert ring.dropped == 12
    ring.write(np.arange(100, 130, dtype=np.float32))  # more than the whole ring at once
    np.testing.assert_array_equal(ring.read(5), np.arange(122, 127))
    np.testing.assert_array_equal(ring.read(), np.arange(127, 130))
    assert ring.dropped == 12 + 22


def test_ring_wait_reports_writes():
    ring = SampleRing(4)
    assert not ring.wait(0.01)
    threading.Timer(0.02, ring.write, [np.ones(2, np.float32)]).start()
    assert ring.wait(2.0)
    assert not ring.wait(0.01)  # that write was already reported


# --- MicSource with a fake stream -------------------------------------------------------------------------


class FakeInputStream:
    """Stands in for sounddevice.InputStream: start() plays audio through the callback from another thread."""

    def __init__(self, audio: np.ndarray, frames: int = 4800, overflow_blocks=(), pause: float = 0.0, then=None):
        self.audio, self.frames, self.pause, self.then = audio, frames, pause, then
        self.overflow_blocks = overflow_blocks
        self.first_block_taken = threading.Event()  # set by a test to let the capture go on after one block
        self.first_block_taken.set()
        self.settings: dict = {}
        self.closed = False
        self.thread = threading.Thread(target=self._play, daemon=True)

    def __call__(self, *, device, channels, samplerate, dtype, blocksize, callback):
        self.settings = dict(device=device, channels=channels, samplerate=samplerate, dtype=dtype, blocksize=blocksize)
        self.callback = callback
        return self

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def _play(self) -> None:
        for i, start in enumerate(range(0, len(self.audio), self.frames)):
            block = self.audio[start : start + self.frames, None].copy()  # PortAudio reuses its buffer
            self.callback(block, len(block), None, SimpleNamespace(input_overflow=i in self.overflow_blocks))
            block[:] = np.nan
            self.first_block_taken.wait()
            time.sleep(self.pause)
        if self.then:
            self.then()


def mic(fake: FakeInputStream, **kwargs) -> MicSource:
    return MicSource(stream_factory=fake, device_info=lambda device: MIC_48K, **kwargs)


def test_mic_yields_16khz_audio_until_stopped_and_drain_keeps_the_rest(capsys):
    jfk = load_audio(JFK)
    captured = soxr.resample(jfk, SAMPLE_RATE, 48000, quality="HQ")
    fake = FakeInputStream(captured, pause=0.001)
    source = mic(fake)
    fake.then = source.stop  # the capture ends as a Ctrl-C handler would end it: from outside the consumer
    heard = np.concatenate([*source.blocks(), source.drain()])
    assert fake.settings == dict(device=3, channels=1, samplerate=48000.0, dtype="float32", blocksize=1536)
    assert fake.closed and source.started_at is not None
    np.testing.assert_allclose(heard, soxr.resample(captured, 48000, SAMPLE_RATE, quality="HQ"), atol=1e-6)
    assert abs(len(heard) - len(jfk)) <= 2
    assert np.corrcoef(heard[: len(jfk)], jfk[: len(heard)])[0, 1] > 0.99
    assert source.input_overflows == 0 and source.dropped_samples == 0 and capsys.readouterr().err == ""


def test_mic_stop_then_drain_loses_nothing_the_consumer_did_not_take():
    captured = sine(1000, 48000, 2.0)
    fake = FakeInputStream(captured)
    source = mic(fake)
    fake.first_block_taken.clear()
    blocks = source.blocks()
    first = next(blocks)
    fake.first_block_taken.set()
    fake.thread.join()  # the consumer is busy while the rest is captured
    source.stop()
    rest = source.drain()
    heard = np.concatenate([first, rest])
    assert abs(len(heard) - 2 * SAMPLE_RATE) <= 2
    assert dominant_hz(heard) == pytest.approx(1000, abs=1)
    assert len(source.drain()) == 0
    blocks.close()


def test_mic_counts_device_overflows_and_warns_once(capsys):
    fake = FakeInputStream(sine(440, 48000, 0.5), overflow_blocks=(1, 3))
    source = mic(fake)
    blocks = source.blocks()
    next(blocks)
    fake.thread.join()
    source.stop()
    source.stop()
    assert source.input_overflows == 2
    assert capsys.readouterr().err == "edge-asr: warning: audio was lost: the audio device overflowed 2 times.\n"
    blocks.close()


def test_mic_ring_overrun_overwrites_the_oldest_audio_and_warns(capsys):
    captured = sine(440, 48000, 2.0)
    fake = FakeInputStream(captured)
    fake.first_block_taken.clear()
    source = mic(fake, buffer_seconds=0.5)
    blocks = source.blocks()
    first = next(blocks)
    fake.first_block_taken.set()
    fake.thread.join()  # the consumer falls 1.9 s behind a 0.5 s ring
    source.stop()
    rest = source.drain()
    assert source.dropped_samples == 96000 - 4800 - 24000
    np.testing.assert_allclose(rest[-7000:], soxr.resample(captured[-24000:], 48000, SAMPLE_RATE)[-7000:], atol=1e-6)
    assert abs(len(first) + len(rest) - (4800 + 24000) / 3) <= 2  # what was not overwritten was all heard
    err = capsys.readouterr().err
    assert err.startswith("edge-asr: warning: audio was lost: ") and "fell more than 0.5 s behind" in err
    assert err.count("\n") == 1
    blocks.close()


def test_ctrl_c_interrupts_a_consumer_waiting_for_audio():
    # A silent device: no callback ever comes. Ctrl-C is sent from the capture thread 0.2 s after the capture
    # started, so it always lands inside blocks() (a timer started before it once landed before the consumer
    # was under pytest.raises, on a loaded machine).
    fake = FakeInputStream(np.zeros(0, np.float32), then=lambda: (time.sleep(0.2), _thread.interrupt_main()))
    source = mic(fake)
    # Ends the wait, failing the test, if Ctrl-C were not seen.
    safety = threading.Timer(10.0, source.stop)
    safety.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        for _ in source.blocks():
            pass
    safety.cancel()
    assert time.monotonic() - started < 5.0  # seen on its own, not only when the safety timer stopped the source
    assert fake.closed and len(source.drain()) == 0


def test_portaudio_errors_while_opening_are_one_sentence(monkeypatch):
    class PortAudioError(Exception):
        pass

    def refuse(**settings):
        raise PortAudioError("Error opening InputStream: Device unavailable [PaErrorCode -9985]")

    monkeypatch.setitem(sys.modules, "sounddevice", SimpleNamespace(PortAudioError=PortAudioError))
    source = MicSource(stream_factory=refuse, device_info=lambda device: MIC_48K)
    with pytest.raises(AudioError, match=r"^Cannot record from 'Fake USB mic': Error opening InputStream: "
                                         r"Device unavailable \[PaErrorCode -9985\]\.$"):
        next(source.blocks())


def test_a_vanished_device_still_stops_cleanly(monkeypatch):
    class PortAudioError(Exception):
        pass

    class Unplugged(FakeInputStream):
        def stop(self) -> None:
            raise PortAudioError("Error stopping stream: Unanticipated host error [PaErrorCode -9999]")

    monkeypatch.setitem(sys.modules, "sounddevice", SimpleNamespace(PortAudioError=PortAudioError))
    fake = Unplugged(sine(440, 48000, 0.5))
    source = mic(fake)
    blocks = source.blocks()
    heard = len(next(blocks))
    fake.thread.join()
    source.stop()
    assert fake.closed
    assert abs(heard + len(source.drain()) - 0.5 * SAMPLE_RATE) <= 2
    blocks.close()


# --- device queries: a fake sounddevice module ------------------------------------------------------------


class FakeSoundDevice:
    """The few sounddevice calls the device helpers make, over a fixed device table."""

    class PortAudioError(Exception):
        pass

    DEVICES = [
        {"name": "HDMI", "index": 0, "max_input_channels": 0, "default_samplerate": 48000.0},
        {"name": "USB PnP Sound Device", "index": 1, "max_input_channels": 1, "default_samplerate": 44100.0},
        {"name": "USB Camera Mic", "index": 2, "max_input_channels": 2, "default_samplerate": 16000.0},
    ]

    def __init__(self, default_input: int = 1):
        self.default = SimpleNamespace(device=[default_input, 0])

    def query_devices(self, device=None, kind=None):
        if device is None and kind is None:
            return self.DEVICES
        if device is None:
            device = self.default.device[0]
        if isinstance(device, int):
            if not 0 <= device < len(self.DEVICES):
                raise self.PortAudioError(f"Error querying device {device}")
            return self.DEVICES[device]
        matches = [d for d in self.DEVICES if device.lower() in d["name"].lower() and d["max_input_channels"]]
        if not matches:
            raise ValueError(f"No input device matching {device!r}")
        if len(matches) > 1:
            raise ValueError(f"Multiple input devices found for {device!r}:\n[1] ...\n[2] ...")
        return matches[0]

    def check_input_settings(self, device, channels, dtype, samplerate):
        if samplerate == 16000.0:
            raise self.PortAudioError("Invalid sample rate [PaErrorCode -9997]")


@pytest.fixture
def fake_sd(monkeypatch) -> FakeSoundDevice:
    sd = FakeSoundDevice()
    monkeypatch.setattr(microphone, "_sounddevice", lambda: sd)
    return sd


def test_list_input_devices_marks_the_default(fake_sd):
    assert list_input_devices() == [
        "1: USB PnP Sound Device (1 input channel, 44100 Hz, default)",
        "2: USB Camera Mic (2 input channels, 16000 Hz)",
    ]


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (0, "No audio input: audio device 0 (HDMI) has no input channels (see `edge-asr stream --list-devices`)."),
        ("7", "No audio input: there is no audio device 7 (see `edge-asr stream --list-devices`)."),
        ("hdmi", "No audio input: no input device matching 'hdmi' (see `edge-asr stream --list-devices`)."),
        ("usb", "No audio input: multiple input devices found for 'usb' (see `edge-asr stream --list-devices`)."),
        ("camera", "Cannot record from 'USB Camera Mic': Invalid sample rate [PaErrorCode -9997]."),
    ],
)
def test_unusable_devices_are_one_sentence(fake_sd, device, message):
    with pytest.raises(AudioError) as err:
        check_microphone(device)
    assert str(err.value) == message


def test_no_default_input_device(fake_sd):
    fake_sd.default.device[0] = -1
    with pytest.raises(AudioError, match=r"^No audio input: there is no default input device \(see"):
        check_microphone()
    with pytest.raises(AudioError, match="there is no default input device"):
        MicSource()


def test_a_usable_device_passes_the_check_and_sets_the_rate(fake_sd):
    check_microphone("PnP")
    source = MicSource("1", stream_factory=FakeInputStream(np.zeros(0, np.float32)))
    assert source.samplerate == 44100.0 and source.device_name == "USB PnP Sound Device"


def test_missing_portaudio_is_one_sentence(monkeypatch):
    real_import = builtins.__import__

    def no_portaudio(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    sentence = "No audio input: the PortAudio library is not installed (apt-get install libportaudio2)."
    for attempt in (list_input_devices, check_microphone, MicSource):
        with pytest.raises(AudioError) as err:
            attempt()
        assert str(err.value) == sentence
