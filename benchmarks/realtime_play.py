"""Streams played into recognizers at real-time pace, with each final's latency from end of speech.

One thread plays every stream: each 32 ms block is due at its place in real time and is pushed into
each stream's recognizer in turn (one engine, no batching: the baseline the scheduler must beat).
A final's latency is the moment push() returned it less the moment its speech ended (the start plus
the event's voiced_end). It splits into the wait for the pause (the block that ends the utterance
is due min_silence after the speech), the backlog (that block was pushed after it was due because
earlier pushes overran real time) and the push() call that returned it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edge_asr.models.clips import Clip
from edge_asr.runtime.audio import SAMPLE_RATE, load_audio
from edge_asr.runtime.streaming.recognizer import StreamRecognizer

BLOCK = 512  # samples a push: one VAD window, what a microphone callback delivers
GAP_S = 1.5  # silence after each clip: longer than any pause that ends an utterance
NOISE_DBFS = -60.0
KEPT_UP_LAG_S = 1.0  # a stream whose pushes end more than this behind real time did not keep up


@dataclass
class Final:
    stream: int
    voiced_end: float  # stream seconds at which the VAD says the speech stopped
    wait_s: float  # until the block that ended the utterance was due
    late_s: float  # that block pushed after it was due
    push_s: float  # inside the push() that returned the final
    text: str

    @property
    def latency_s(self) -> float:
        return self.wait_s + self.late_s + self.push_s


@dataclass
class Playback:
    finals: list[Final]
    partials: int
    audio_s: float  # per stream
    wall_s: float
    cpu_s: float  # process CPU time, all threads
    busy_s: list[float]  # inside push() and flush(), per stream
    max_lag_s: float  # the furthest any push ended behind its block's due time
    texts: list[str] = field(default_factory=list)  # each stream's finals, joined

    @property
    def kept_up(self) -> bool:
        return self.max_lag_s <= KEPT_UP_LAG_S


def faint_noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at NOISE_DBFS RMS: a quiet room rather than digital zeros."""
    return (rng.standard_normal(round(seconds * SAMPLE_RATE)) * 10 ** (NOISE_DBFS / 20)).astype(np.float32)


def speech_stream(clips: list[Clip], rng: np.random.Generator) -> np.ndarray:
    """The clips joined, each followed by GAP_S of faint noise."""
    return rotated_streams(clips, 1, rng)[0][0]


def rotated_streams(clips: list[Clip], count: int, rng: np.random.Generator) -> list[tuple[np.ndarray, str | None]]:
    """`count` streams of the clips joined as speech_stream does, stream i starting at clip i mod n so
    that the streams' pauses do not all fall at once; each with its reference, None unless every clip
    has one. Each clip is read once, however many streams play it."""
    audio = {clip: load_audio(clip.path) for clip in clips}
    streams = []
    for i in range(count):
        order = clips[i % len(clips):] + clips[: i % len(clips)]
        joined = np.concatenate([part for clip in order for part in (audio[clip], faint_noise(GAP_S, rng))])
        reference = " ".join(c.reference for c in order) if all(c.reference for c in order) else None
        streams.append((joined, reference))
    return streams


def play(recognizers: list[StreamRecognizer], audio: list[np.ndarray]) -> Playback:
    """Plays audio[i] into recognizers[i], all at once, at real-time pace from now."""
    finals, partials, busy, max_lag = [], 0, [0.0] * len(recognizers), 0.0
    length = max(len(a) for a in audio)
    cpu, started = time.process_time(), time.monotonic()
    for stop in range(BLOCK, length + BLOCK, BLOCK):
        due = started + min(stop, length) / SAMPLE_RATE
        time.sleep(max(0.0, due - time.monotonic()))
        for index, (recognizer, samples) in enumerate(zip(recognizers, audio, strict=True)):
            if stop - BLOCK >= len(samples):
                continue
            at_end = stop >= len(samples)
            called = time.monotonic()
            events = recognizer.push(samples[stop - BLOCK : stop])
            events += recognizer.flush() if at_end else []
            returned = time.monotonic()
            busy[index] += returned - called
            max_lag = max(max_lag, returned - due)
            partials += sum(e.type == "partial" for e in events)
            block_due = started + min(stop, len(samples)) / SAMPLE_RATE
            finals += [Final(index, e.voiced_end, block_due - started - e.voiced_end, called - block_due,
                             returned - called, e.text) for e in events if e.type == "final"]
    texts = [" ".join(f.text for f in finals if f.stream == i and f.text) for i in range(len(recognizers))]
    return Playback(finals, partials, length / SAMPLE_RATE, time.monotonic() - started,
                    time.process_time() - cpu, busy, max_lag, texts)
