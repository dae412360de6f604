"""Cutting a window's tokens into timed segments, and how far the next window starts.

Two timestamps in a row close one segment and open the next. If the window ends on a lone
timestamp, nothing was said after it and the whole window is done; otherwise the text after the
last pair may be cut off mid-sentence, so the next window starts at that last timestamp.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

from edge_asr.runtime.mel import FRAMES_PER_SECOND
from edge_asr.runtime.tokenizer import TIMESTAMP_SECONDS

FRAMES_PER_TIMESTAMP = round(TIMESTAMP_SECONDS * FRAMES_PER_SECOND)


class SegmentSpan(NamedTuple):
    start: float  # seconds from the window's start
    end: float
    tokens: list[int]  # timestamps included


def split_segments(
    tokens: Sequence[int], timestamp_begin: int, content_frames: int
) -> tuple[list[SegmentSpan], int]:
    """The segments of one window's tokens and the Mel frames the window consumed.

    ``content_frames`` is the audio the window holds (less than the window at the end of a file).
    Follows openai-whisper's transcribe.py.
    """
    tokens = list(tokens)
    is_timestamp = [t >= timestamp_begin for t in tokens]
    single_timestamp_ending = is_timestamp[-2:] == [False, True]
    pair_ends = [i for i in range(1, len(tokens)) if is_timestamp[i - 1] and is_timestamp[i]]
    if not pair_ends:
        return [_whole_window(tokens, timestamp_begin, content_frames)], content_frames

    slices = pair_ends + [len(tokens)] if single_timestamp_ending else pair_ends
    spans, last = [], 0
    for end in slices:
        piece = tokens[last:end]
        spans.append(SegmentSpan(_seconds(piece[0], timestamp_begin), _seconds(piece[-1], timestamp_begin), piece))
        last = end
    if single_timestamp_ending:
        return spans, content_frames
    return spans, (tokens[last - 1] - timestamp_begin) * FRAMES_PER_TIMESTAMP


def _whole_window(tokens: list[int], timestamp_begin: int, content_frames: int) -> SegmentSpan:
    """No timestamp pair: one segment over the window, ending at its last timestamp if it has one."""
    duration = content_frames / FRAMES_PER_SECOND
    timestamps = [t for t in tokens if t >= timestamp_begin]
    if timestamps and timestamps[-1] != timestamp_begin:
        duration = _seconds(timestamps[-1], timestamp_begin)
    return SegmentSpan(0.0, duration, tokens)


def _seconds(timestamp: int, timestamp_begin: int) -> float:
    return (timestamp - timestamp_begin) * TIMESTAMP_SECONDS
