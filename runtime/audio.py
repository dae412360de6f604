"""Audio files in, 16 kHz float32 mono samples out: the one format every later stage reads."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from edge_asr.runtime.errors import AudioError

SAMPLE_RATE = 16000
# Frames decoded at a time: a long file is never held whole at its own rate, and a decoder error loses
# at most this much before it.
BLOCK_FRAMES = 1 << 14

_UNRECOGNISED_FORMAT = 1  # libsndfile's SF_ERR_UNRECOGNISED_FORMAT
_SYSTEM_ERROR = 2  # libsndfile's SF_ERR_SYSTEM: the OS refused to open or read the file


def pcm16_to_float32(data: bytes) -> np.ndarray:
    """Whole 16-bit little-endian samples as float32 in [-1, 1), the scale the engine's input has."""
    samples = np.frombuffer(data, "<i2").astype(np.float32)
    samples *= np.float32(1 / 32768)
    return samples


@dataclass
class DecodedAudio:
    samples: np.ndarray  # float32 mono at SAMPLE_RATE: what decoded
    damage: str | None = None  # why the file ends early (truncated or corrupt), when it does


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """Any file libsndfile decodes (WAV, FLAC, OGG, MP3, ...) as float32 mono at SAMPLE_RATE; of a damaged
    file, the part before the damage (read_audio says where it is)."""
    return read_audio(path).samples


def read_audio(path: str | os.PathLike) -> DecodedAudio:
    """One rule for every format: what decodes is kept, and a file that ends before its header, its stream
    or its decoder says it should is reported as damaged. Nothing decodable at all is an AudioError."""
    name = os.fspath(path)
    if os.path.isdir(name):
        raise AudioError(f"Cannot read audio from '{name}': it is a directory; give the audio files in it.")
    if not os.path.isfile(name):
        raise AudioError(f"Cannot read audio from '{name}': there is no such file.")
    if os.path.getsize(name) == 0:
        raise AudioError(f"Cannot read audio from '{name}': the file is empty.")
    try:
        with _open(name) as f:
            decoded = _read_mono_16k(f)
            decoded.damage = decoded.damage or _cut_short(name, f.format)
    except sf.LibsndfileError as err:
        raise AudioError(f"Cannot read audio from '{name}': {_reason(err)}.") from err
    if decoded.samples.size == 0:
        raise AudioError(f"Cannot read audio from '{name}': " +
                         (f"{decoded.damage}, before any audio" if decoded.damage else "it holds no audio samples") + ".")
    if not np.isfinite(decoded.samples).all():
        raise AudioError(f"Cannot read audio from '{name}': it holds NaN or infinite samples.")
    return decoded


def damage_report(name: str, decoded: DecodedAudio) -> str:
    return (f"'{name}' is damaged ({decoded.damage}): its first {len(decoded.samples) / SAMPLE_RATE:.1f} s "
            "were transcribed.")


def _cut_short(name: str, container: str) -> str | None:
    """libsndfile quietly shortens a truncated WAV or Ogg file to what is there: the header's data size and
    Ogg's end-of-stream page tell."""
    size = os.path.getsize(name)
    with open(name, "rb") as raw:
        if container == "WAV":
            head = raw.read(1 << 16)
            at = head.find(b"data")
            if head[:4] == b"RIFF" and at >= 0 and at + 8 <= len(head):
                promised = int.from_bytes(head[at + 4 : at + 8], "little")
                if promised != 0xFFFFFFFF and at + 8 + promised > size:  # 0xFFFFFFFF: a stream of unknown length
                    return "truncated: the header promises more audio than the file holds"
        elif container == "OGG":
            raw.seek(max(0, size - (1 << 16)))
            tail = raw.read()
            last = tail.rfind(b"OggS")
            if last < 0 or last + 6 > len(tail) or not tail[last + 5] & 0x04:  # 0x04: the last page of the stream
                return "truncated: the Ogg stream has no last page"
    return None


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


def _read_mono_16k(f: sf.SoundFile) -> DecodedAudio:
    """Decode, mix down and resample block by block straight into the result; a decoder error ends the
    audio there (the block it hit is lost)."""
    # soundfile never reads past f.frames and soxr rounds n * ratio half up: this bound holds.
    out = np.empty((f.frames * SAMPLE_RATE + f.samplerate - 1) // f.samplerate, np.float32)
    filled = 0
    # soxr's stream is sample-exact with one-shot soxr.resample, and the identity at 16 kHz.
    stream = soxr.ResampleStream(f.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    damage = None
    while True:
        try:  # not f.blocks(): it yields whole blocks even after a short read, repeating stale samples
            block = f.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
        except sf.LibsndfileError as err:
            damage = f"corrupt or truncated: {err.error_string.removeprefix('Error : ').rstrip('.')}"
            block = np.zeros((0, 1), np.float32)
        chunk = stream.resample_chunk(block.mean(axis=1), last=not len(block))
        out[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
        if not len(block):
            return DecodedAudio(out[:filled], damage)  # a truncated file decodes fewer frames than it promised
