"""Audio files in, 16 kHz float32 mono samples out: the one format every later stage reads."""
from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import soxr

from edge_asr.runtime.errors import AudioError

SAMPLE_RATE = 16000
BLOCK_FRAMES = 1 << 16  # frames decoded at a time: a long file is never held whole at its own rate

_UNRECOGNISED_FORMAT = 1  # libsndfile's SF_ERR_UNRECOGNISED_FORMAT
_SYSTEM_ERROR = 2  # libsndfile's SF_ERR_SYSTEM: the OS refused to open or read the file


def pcm16_to_float32(data: bytes) -> np.ndarray:
    """Whole 16-bit little-endian samples as float32 in [-1, 1), the scale the engine's input has."""
    samples = np.frombuffer(data, "<i2").astype(np.float32)
    samples *= np.float32(1 / 32768)
    return samples


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """Any file libsndfile decodes (WAV, FLAC, OGG, MP3, ...) as float32 mono at SAMPLE_RATE."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise AudioError(f"Cannot read audio from '{name}': there is no such file.")
    if os.path.getsize(name) == 0:
        raise AudioError(f"Cannot read audio from '{name}': the file is empty.")
    try:
        with _open(name) as f:
            audio = _read_mono_16k(f)
    except sf.LibsndfileError as err:
        raise AudioError(f"Cannot read audio from '{name}': {_reason(err)}.") from err
    if audio.size == 0:
        raise AudioError(f"Cannot read audio from '{name}': it holds no audio samples.")
    if not np.isfinite(audio).all():
        raise AudioError(f"Cannot read audio from '{name}': it holds NaN or infinite samples.")
    return audio


def _open(name: str) -> sf.SoundFile:
    try:
        return sf.SoundFile(name)
    except TypeError as err:  # soundfile's answer to a *.raw name: it needs the rate given
        raise AudioError(
            f"Cannot read audio from '{name}': header-less RAW audio is not supported, "
            "convert it to WAV."
        ) from err


def _reason(err: sf.LibsndfileError) -> str:
    if err.code == _UNRECOGNISED_FORMAT:
        return "it is not an audio file in a format libsndfile reads (WAV, FLAC, OGG, MP3, ...)"
    if err.code == _SYSTEM_ERROR:
        return "the system refused to read it (check its permissions)"
    return f"the file is corrupt or truncated ({err.error_string.rstrip('.')})"


def _read_mono_16k(f: sf.SoundFile) -> np.ndarray:
    """Decode, mix down and resample block by block straight into the result."""
    # soundfile never reads past f.frames and soxr rounds n * ratio half up: this bound holds.
    out = np.empty((f.frames * SAMPLE_RATE + f.samplerate - 1) // f.samplerate, np.float32)
    filled = 0
    for chunk in _mono_16k_chunks(f):
        out[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    return out[:filled]  # a truncated file decodes fewer frames than its header promised


def _mono_16k_chunks(f: sf.SoundFile):
    # soxr's stream is sample-exact with one-shot soxr.resample, and the identity at 16 kHz.
    stream = soxr.ResampleStream(f.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    # Not f.blocks(): it yields whole blocks even after a short read, repeating stale samples.
    while len(block := f.read(BLOCK_FRAMES, dtype="float32", always_2d=True)):
        yield stream.resample_chunk(block.mean(axis=1))
    yield stream.resample_chunk(np.zeros(0, np.float32), last=True)
