"""An engine wrapper that counts and times its calls by kind: encoder runs, prompt passes (several
tokens a row) and one-token decoder steps, with the rows each computed.

The benchmarks read it to split a run's time, and `edge-asr serve` exports it as Prometheus counters:
how much of the engine's time is steps, and how many rows a step carries, is what says whether
batching can pay on a machine (see benchmarks/batch_curve.py).

Safe to share between threads: the counters are updated under a lock, so with concurrent streams the
seconds add up the time each call took (they can exceed the wall time).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

ENGINE_OPS = ("encode", "prompt", "step")


@dataclass
class OpTally:
    calls: int = 0
    rows: int = 0
    seconds: float = 0.0


class TimedEngine:
    def __init__(self, engine):
        self.engine, self.dims = engine, engine.dims
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._tally = {op: OpTally() for op in ENGINE_OPS}
            self._encoder_frames = 0

    def tally(self) -> dict[str, OpTally]:
        """A copy of the counts so far, by kind of call (ENGINE_OPS)."""
        with self._lock:
            return {op: replace(t) for op, t in self._tally.items()}

    @property
    def encoder_calls(self) -> int:
        return self._tally["encode"].calls

    @property
    def encoder_frames(self) -> int:
        """Mel frames encoded, all rows."""
        return self._encoder_frames

    @property
    def encoder_seconds(self) -> float:
        return self._tally["encode"].seconds

    @property
    def decoder_seconds(self) -> float:
        return self._tally["prompt"].seconds + self._tally["step"].seconds

    def encode(self, mel):
        started = time.perf_counter()
        audio = self.engine.encode(mel)
        self._count("encode", mel.shape[0], time.perf_counter() - started, frames=mel.shape[0] * mel.shape[2])
        return audio

    def decode(self, tokens, offsets, cache, audio, select):
        started = time.perf_counter()
        logits = self.engine.decode(tokens, offsets, cache, audio, select)
        self._count("step" if tokens.shape[1] == 1 else "prompt", tokens.shape[0], time.perf_counter() - started)
        return logits

    def new_pool(self, audio, capacity: int):
        """The engine's decoder pool (engines/base.py), its steps counted as steps."""
        return _TimedPool(self.engine.new_pool(audio, capacity), self)

    def _count(self, op: str, rows: int, seconds: float, frames: int = 0) -> None:
        with self._lock:
            tally = self._tally[op]
            tally.calls, tally.rows, tally.seconds = tally.calls + 1, tally.rows + rows, tally.seconds + seconds
            self._encoder_frames += frames

    def __getattr__(self, name):
        return getattr(self.engine, name)


class _TimedPool:
    def __init__(self, pool, timed: TimedEngine):
        self.pool, self.timed, self.capacity = pool, timed, pool.capacity

    def step(self, tokens, offsets, first: int, stop: int):
        started = time.perf_counter()
        logits = self.pool.step(tokens, offsets, first, stop)
        self.timed._count("step", stop - first, time.perf_counter() - started)
        return logits

    def __getattr__(self, name):
        return getattr(self.pool, name)
