"""Audio files in, 16 kHz float32 mono samples out: the one format every later stage reads."""
from __future__ import annotations

import os
from collections.abc import Generator, Iterator
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
    audio = AudioFile(path)
    out = np.empty(audio.max_samples, np.float32)
    filled = 0
    for chunk in audio.chunks():
        out[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    return DecodedAudio(out[:filled], audio.damage)


class AudioFile:
    """A file's samples as 16 kHz mono float32 chunks, decoded afresh on every pass, so that a long recording
    is never held whole (the offline path reads it twice: once for the loudness peak, once window by window).

    Made, it has checked that the file exists and is audio libsndfile opens; after a whole pass of chunks(),
    ``samples`` is how many it yielded and ``damage`` why the file ended early, when it did."""

    def __init__(self, path: str | os.PathLike):
        self.name = os.fspath(path)
        if os.path.isdir(self.name):
            raise self._error("it is a directory; give the audio files in it")
        if not os.path.isfile(self.name):
            raise self._error("there is no such file")
        if os.path.getsize(self.name) == 0:
            raise self._error("the file is empty")
        with self._open() as f:
            # soundfile never reads past f.frames and soxr rounds n * ratio half up: this bound holds.
            self.max_samples = (f.frames * SAMPLE_RATE + f.samplerate - 1) // f.samplerate
        self.samples: int | None = None
        self.damage: str | None = None

    def chunks(self) -> Iterator[np.ndarray]:
        """The samples, decoded, mixed down and resampled block by block; a decoder error ends them there (the
        block it hit is lost). Raises AudioError when nothing decodes or a sample is not finite."""
        samples = 0
        with self._open() as f:
            blocks = _mono_16k(f)
            while True:
                try:
                    chunk = next(blocks)
                except StopIteration as end:
                    damage = end.value or _cut_short(self.name, f.format)
                    break
                if not np.isfinite(chunk).all():
                    raise self._error("it holds NaN or infinite samples")
                samples += len(chunk)
                yield chunk
        if samples == 0:
            raise self._error(f"{damage}, before any audio" if damage else "it holds no audio samples")
        self.samples, self.damage = samples, damage

    def _open(self) -> sf.SoundFile:
        try:
            return sf.SoundFile(self.name)
        except TypeError as err:  # soundfile's answer to a *.raw name: it needs the rate given
            raise self._error("header-less RAW audio is not supported, convert it to WAV") from err
        except sf.LibsndfileError as err:
            raise self._error(_reason(err)) from err

    def _error(self, reason: str) -> AudioError:
        return AudioError(f"Cannot read audio from '{self.name}': {reason}.")


def damage_report(audio: AudioFile) -> str:
    """After a whole pass over a damaged file: what was lost, in one sentence."""
    return (f"'{audio.name}' is damaged ({audio.damage}): its first {audio.samples / SAMPLE_RATE:.1f} s "
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


def _reason(err: sf.LibsndfileError) -> str:
    if err.code == _UNRECOGNISED_FORMAT:
        return "it is not an audio file in a format libsndfile reads (WAV, FLAC, OGG, MP3, ...)"
    if err.code == _SYSTEM_ERROR:
        return "the system refused to read it (check its permissions)"
    return f"the file is corrupt or truncated ({err.error_string.rstrip('.')})"


def _mono_16k(f: sf.SoundFile) -> Generator[np.ndarray, None, str | None]:
    """The file's audio as 16 kHz mono chunks (never empty); returns why it ended early, if a decoder error ended it."""
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
        if len(chunk):
            yield chunk
        if not len(block):
            return damage  # a truncated file decodes fewer frames than it promised
