"""StreamingLogMel against the offline LogMelFrontend on the same samples, and page-locked buffers."""
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_asr.runtime.audio import load_audio
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.host_memory import host_buffer
from edge_asr.runtime.mel import HOP_LENGTH, N_FRAMES, N_SAMPLES, LogMelFrontend
from edge_asr.runtime.streaming.mel_stream import MIN_CAPACITY, StreamingLogMel

DATA = Path(__file__).parent / "data"
RATE = 16000
CHUNK_SIZES = [1, 7, 159, 160, 401, 512, 3333]
TOLERANCE = 1e-5
CAPACITY = 3100  # small, so that a 40 s stream wraps around the ring


@pytest.fixture(scope="module")
def frontend() -> LogMelFrontend:
    return LogMelFrontend(80)


def jfk() -> np.ndarray:
    return load_audio(DATA / "jfk.wav")


def noise(seconds: float = 40.0) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(int(seconds * RATE))).astype(np.float32)


SIGNALS = {"jfk": jfk, "noise": noise}


def ring_frames(stream: StreamingLogMel, start: int, stop: int) -> np.ndarray:
    """The raw log10 Mel power of frames [start, stop) as the ring holds it."""
    return stream._ring[:, np.arange(start, stop) % stream.capacity_frames]


def push_in_random_chunks(stream: StreamingLogMel, audio: np.ndarray, expected: np.ndarray) -> None:
    """Push ``audio`` in seeded random chunk sizes, checking each push's new frames on arrival."""
    rng = np.random.default_rng(1)
    taken = 0
    while taken < len(audio):
        size = int(rng.choice(CHUNK_SIZES))
        before = stream.frames_done
        new = stream.push(audio[taken : taken + size])
        taken += size
        assert new == stream.frames_done - before
        assert stream.samples_seen == min(taken, len(audio))
        assert np.abs(ring_frames(stream, before, stream.frames_done) - expected[:, before : before + new]).max(
            initial=0) < TOLERANCE


def streamed(frontend: LogMelFrontend, audio: np.ndarray, padding: int = 0) -> StreamingLogMel:
    stream = StreamingLogMel(frontend, capacity_frames=CAPACITY)
    expected = frontend.log_power(audio, padding)
    push_in_random_chunks(stream, audio, expected)
    before = stream.frames_done
    assert stream.flush(padding) == expected.shape[1] - before
    assert stream.frames_done == (len(audio) + padding) // HOP_LENGTH
    oldest = max(0, stream.frames_done - CAPACITY)
    assert np.abs(ring_frames(stream, oldest, stream.frames_done) - expected[:, oldest:]).max() < TOLERANCE
    return stream


@pytest.mark.parametrize("padding", [0, N_SAMPLES])
@pytest.mark.parametrize("signal", SIGNALS)
def test_every_frame_equals_the_offline_log_power(signal, padding, frontend):
    streamed(frontend, SIGNALS[signal](), padding)


@pytest.mark.parametrize("length", [0, 1, 159, 160, 200, 201, 202, 399, 400, 401, 561])
@pytest.mark.parametrize("padding", [0, 1, 100, N_SAMPLES])
def test_short_streams_match_the_offline_frames(length, padding, frontend):
    audio = noise(1.0)[:length]
    stream = StreamingLogMel(frontend, capacity_frames=N_FRAMES + 1100)
    for part in np.array_split(audio, 3):
        stream.push(part)
    stream.flush(padding)
    expected = frontend.log_power(audio, padding)
    assert stream.frames_done == expected.shape[1] == (length + padding) // HOP_LENGTH
    assert np.abs(ring_frames(stream, 0, stream.frames_done) - expected).max(initial=0) < TOLERANCE


@pytest.fixture(scope="module")
def noise_stream(frontend) -> StreamingLogMel:
    """40 s of noise streamed: frames [900, 4000) are left in the ring of 3100."""
    return streamed(frontend, noise())


@pytest.mark.parametrize("start, stop", [(1000, 4000), (3050, 3150), (900, 950), (3990, 4000), (1234, 1234)])
def test_window_is_normalised_over_its_own_frames(start, stop, frontend, noise_stream):
    expected = frontend.normalize(frontend.log_power(noise())[:, start:stop].copy())
    window = noise_stream.window(start, stop)
    assert window.dtype == np.float32 and window.shape == (80, stop - start)
    assert np.abs(window - expected).max(initial=0) < TOLERANCE


def test_window_of_a_whole_clip_is_the_offline_features(frontend):
    audio = jfk()
    stream = streamed(frontend, audio)
    assert np.abs(stream.window(0, stream.frames_done) - frontend(audio)).max() < TOLERANCE


def test_window_fills_out_in_place(frontend):
    stream = streamed(frontend, noise(12.0))
    encoder_input = np.full((1, 80, N_FRAMES), np.nan, np.float32)
    out = encoder_input[0, :, : stream.frames_done]
    assert stream.window(0, stream.frames_done, out=out) is out
    np.testing.assert_array_equal(encoder_input[0, :, : stream.frames_done], stream.window(0, stream.frames_done))
    assert np.isnan(encoder_input[0, :, stream.frames_done :]).all()
    with pytest.raises(ValueError, match="shape"):
        stream.window(0, 10, out=encoder_input[0, :, :11])


def test_window_refuses_frames_it_does_not_hold(noise_stream):
    with pytest.raises(ValueError, match="not computed yet"):
        noise_stream.window(3500, 4001)
    with pytest.raises(ValueError, match="overwritten"):
        noise_stream.window(899, 1000)
    with pytest.raises(ValueError, match="start <= stop"):
        noise_stream.window(2000, 1999)


def test_reset_starts_an_equal_stream_in_the_same_buffers(frontend):
    audio = noise(3.0)
    stream = streamed(frontend, audio)
    first = stream.window(0, stream.frames_done)
    with pytest.raises(RuntimeError, match="reset"):
        stream.push(audio[:160])
    stream.reset()
    assert stream.frames_done == stream.samples_seen == 0
    stream.push(audio)
    stream.flush()
    assert np.abs(stream.window(0, stream.frames_done) - first).max() < TOLERANCE


def test_capacity_must_hold_a_window_and_a_margin(frontend):
    with pytest.raises(ValueError, match=str(MIN_CAPACITY)):
        StreamingLogMel(frontend, capacity_frames=N_FRAMES)


def test_pinned_buffers_without_cuda_python_are_refused_clearly(monkeypatch, frontend):
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)  # import of any of them now fails
    with pytest.raises(EdgeAsrError, match="need cuda-python and a CUDA device"):
        host_buffer((80, 10), pinned=True)
    with pytest.raises(EdgeAsrError, match="need cuda-python and a CUDA device"):
        StreamingLogMel(frontend, pinned=True)


def cuda_runtime():
    """cuda-python's runtime module, or a skip that names what this machine lacks."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            pytest.skip("needs cuda-python (pip install cuda-python)")
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess:
        pytest.skip(f"needs a CUDA device and driver (cudaGetDeviceCount: {error.name})")
    if count == 0:
        pytest.skip("needs a CUDA device (cudaGetDeviceCount found none)")
    return cudart


@pytest.mark.parametrize("mapped", [False, True])
def test_pinned_buffer_is_page_locked_host_memory(mapped):
    cudart = cuda_runtime()
    buffer = host_buffer((80, CAPACITY), np.float32, pinned=True, mapped=mapped)
    assert buffer.shape == (80, CAPACITY) and buffer.dtype == np.float32
    assert buffer.flags.writeable and buffer.flags.c_contiguous and not buffer.any()
    buffer[:, -1] = 1.5
    assert buffer[:, -1].sum() == 1.5 * 80
    error, attributes = cudart.cudaPointerGetAttributes(buffer.ctypes.data)
    assert error == cudart.cudaError_t.cudaSuccess
    assert attributes.type == cudart.cudaMemoryType.cudaMemoryTypeHost


def test_pinned_stream_equals_the_pageable_one(frontend):
    cuda_runtime()
    audio = jfk()
    pinned = StreamingLogMel(frontend, capacity_frames=CAPACITY, pinned=True)
    pinned.push(audio)
    pinned.flush()
    pageable = streamed(frontend, audio)
    assert np.abs(pinned.window(0, pinned.frames_done) - pageable.window(0, pageable.frames_done)).max() < TOLERANCE
