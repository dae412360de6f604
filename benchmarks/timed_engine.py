"""An engine wrapper that counts and times the encoder and decoder calls, for the benchmarks."""
from __future__ import annotations

import threading
import time


class TimedEngine:
    """The engine, with its encoder calls, their Mel frames, and its decoder steps counted and timed.

    Safe to share between threads: the counters are updated under a lock, so with concurrent
    streams the seconds add up the time each call took (they can exceed the wall time).
    """

    def __init__(self, engine):
        self.engine, self.dims = engine, engine.dims
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.encoder_calls = self.encoder_frames = self.decoder_calls = 0
        self.encoder_seconds = self.decoder_seconds = 0.0

    def encode(self, mel):
        started = time.perf_counter()
        audio = self.engine.encode(mel)
        elapsed = time.perf_counter() - started
        with self._lock:
            self.encoder_calls += 1
            self.encoder_frames += mel.shape[0] * mel.shape[2]
            self.encoder_seconds += elapsed
        return audio

    def decode(self, tokens, offsets, cache, audio, select):
        started = time.perf_counter()
        logits = self.engine.decode(tokens, offsets, cache, audio, select)
        elapsed = time.perf_counter() - started
        with self._lock:
            self.decoder_calls += 1
            self.decoder_seconds += elapsed
        return logits

    def __getattr__(self, name):
        return getattr(self.engine, name)
