"""Speech-only windows for offline transcription (`edge-asr transcribe --vad`).

The Silero VAD of the streaming path finds the speech in a recording (streaming/segmenter.py: hysteresis,
padding before and after, utterances cut at a pause to at most 30 s). The speech regions are laid end to end,
so the silence between them is neither turned into features nor encoded, and are packed greedily into windows
of at most 30 s that end where a region ends, never inside one (``SpeechMap.window_ends``). Decoding runs over
the joined speech; ``SpeechMap.to_file`` takes its times back to the file's.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.mel import HOP_LENGTH
from edge_asr.runtime.streaming.segmenter import VadOptions, VadSegmenter
from edge_asr.runtime.transcript import WindowResult

# Offline, no one waits for the end of an utterance: keep 400 ms of audio after the speech as well as before
# (faster-whisper's speech_pad_ms), and join pauses under a second into one region, so that a breath inside a
# sentence is not cut out. Chosen on the Asterisk tune prompts (benchmarks/speech_only.py --sets tune): 800 ms
# of padding lost words in joined recordings, 2 s of silence changed nothing, and 0.3-1 s of digital silence
# between the joined regions lost 1-8 words of 248; judged on the developer clips and paused recordings.
# Each window is encoded as the model's policy says: stock Whisper padded to 30 s (on the tune recordings the
# streaming path's 15 s floor lost 2 points), a length-adaptive student its speech plus its margin.
OFFLINE_VAD = VadOptions(min_silence_ms=1000, pad_before_ms=400, pad_after_ms=400)
@dataclass(frozen=True)
class SpeechMap:
    """Where a recording's speech is: ``regions`` [start, end) in file samples, in order and apart."""

    regions: tuple[tuple[int, int], ...]
    file_samples: int

    def __post_init__(self):
        starts, offset = [], 0
        for start, end in self.regions:
            starts.append(offset)
            offset += end - start
        object.__setattr__(self, "_joined_starts", starts)

    @property
    def samples(self) -> int:
        """Samples of speech: the length of the joined recording."""
        return sum(end - start for start, end in self.regions)

    def joined(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """The regions' samples out of the file's chunks (all of them read, in order), one region after another."""
        at, region = 0, 0
        for chunk in chunks:
            stop = at + len(chunk)
            while region < len(self.regions) and self.regions[region][0] < stop:
                start, end = self.regions[region]
                lo, hi = max(start, at), min(end, stop)
                if hi > lo:
                    yield chunk[lo - at : hi - at]
                if end > stop:
                    break
                region += 1
            at = stop

    def window_ends(self, max_frames: int) -> list[int]:
        """Mel frames of the joined recording at which windows end: the regions packed in order into windows of
        at most ``max_frames`` (a region longer than that is a window of its own, decoded in parts)."""
        ends, window_start = [], 0
        for joined_start, (start, end) in zip(self._joined_starts, self.regions, strict=True):
            joined_end = joined_start + end - start
            if joined_start > window_start and (joined_end - window_start) // HOP_LENGTH > max_frames:
                ends.append(joined_start // HOP_LENGTH)
                window_start = joined_start
        return ends

    def file_time(self, joined_s: float, end: bool = False) -> float:
        """The file's time of a time of the joined recording; a time where two regions meet is the later
        region's start, or, with ``end``, the earlier region's end."""
        if not self.regions:
            return joined_s
        sample = joined_s * SAMPLE_RATE
        find = bisect.bisect_left if end else bisect.bisect_right
        index = max(find(self._joined_starts, sample) - 1, 0)
        start, stop = self.regions[index]
        return min(start + sample - self._joined_starts[index], stop) / SAMPLE_RATE

    def to_file(self, window: WindowResult) -> WindowResult:
        """A window decoded from the joined recording, with its and its segments' times in the file's."""
        segments = [replace(s, start=self.file_time(s.start), end=self.file_time(s.end, end=True),
                            words=None if s.words is None else [
                                replace(w, start=self.file_time(w.start), end=self.file_time(w.end, end=True))
                                for w in s.words])
                    for s in window.segments]
        return replace(window, start=self.file_time(window.start), end=self.file_time(window.end, end=True),
                       segments=segments)


def find_speech(chunks: Iterable[np.ndarray], vad: Callable[[np.ndarray], float],
                options: VadOptions = OFFLINE_VAD) -> SpeechMap:
    """The speech regions of the audio ``chunks`` yields (16 kHz float32), read once; ``vad`` a fresh detector."""
    segmenter = VadSegmenter(vad, options)
    regions, samples = [], 0
    for chunk in chunks:
        samples += len(chunk)
        regions += [(e.start, e.end) for e in segmenter.push(chunk) if e.kind == "end"]
    regions += [(e.start, e.end) for e in segmenter.flush() if e.kind == "end"]
    return SpeechMap(tuple((start, end) for start, end in regions if end > start), samples)
