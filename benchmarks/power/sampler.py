"""What every power source provides, and the monitor that turns its readings into watts and joules.

A source that cannot be read is reported as unavailable with the reason, never as 0 W: a zero in a
results table reads as a measurement, and a board that "used no power" would win every comparison.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable, Protocol


class PowerUnavailable(Exception):
    """Raised by a sampler's open(), with one sentence that says why and, where there is one, the fix."""


class PowerSampler(Protocol):
    name: str  # the --power source name
    describes: str  # what the figure covers, e.g. "whole board input VDD_IN (INA3221)"

    def open(self) -> None:
        """Find and open the sensor; raise PowerUnavailable when it cannot be read."""

    def read(self) -> float | None:
        """Watts: instantaneous, or the mean since the previous read for an energy counter; None when no new value."""

    def close(self) -> None: ...


@dataclass
class PowerSummary:
    source: str
    describes: str
    available: bool
    reason: str | None
    mean_w: float | None
    peak_w: float | None
    joules: float | None
    samples: int
    seconds: float

    def per_audio_second(self, audio_s: float) -> float | None:
        """Joules spent per second of audio transcribed."""
        return self.joules / audio_s if self.joules is not None and audio_s > 0 else None

    def to_dict(self) -> dict:
        return asdict(self)


def unavailable(source: str, reason: str, describes: str = "") -> PowerSummary:
    return PowerSummary(source, describes, False, reason, None, None, None, 0, 0.0)


class PowerMonitor:
    """Reads one sampler every `interval_s` on a daemon thread for the length of a with-block.

    Each reading stands for the time since the previous one (since the start for the first), which is
    exact for energy counters and a hold of the latest value for instantaneous sensors. A last read as
    the block ends covers its tail, so an energy counter gives a figure even for a run shorter than
    one interval.
    """

    def __init__(self, sampler: PowerSampler, interval_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic):
        self.sampler, self.interval_s, self.clock = sampler, interval_s, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: str | None = None
        self._opened = False
        self._samples, self._joules, self._peak = 0, 0.0, float("-inf")
        self._start = self._previous = self._end = 0.0

    def __enter__(self) -> PowerMonitor:
        try:
            self.sampler.open()
        except PowerUnavailable as err:
            self._failure = str(err)
            return self
        self._opened = True
        self._start = self._previous = self.clock()
        if self._poll():
            self._thread = threading.Thread(target=self._run, name=f"power-{self.sampler.name}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        if self._opened:
            self._end = self.clock()
            self.sampler.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s) and self._poll():
            pass
        self._poll()

    def _poll(self) -> bool:
        """Take one reading; False once the sampler has failed, which ends the sampling."""
        if self._failure is not None:
            return False
        try:
            watts = self.sampler.read()
        except Exception as err:  # a sensor failing mid-run must not end the benchmark, only this figure
            self._failure = f"reading failed after {self.clock() - self._start:.1f} s: {err}"
            return False
        if watts is not None:
            now = self.clock()
            self._joules += watts * (now - self._previous)
            self._peak = max(self._peak, watts)
            self._samples += 1
            self._previous = now
        return True

    def summary(self) -> PowerSummary:
        """The figures of the finished with-block."""
        name, describes = self.sampler.name, self.sampler.describes
        if self._failure is not None:
            return unavailable(name, self._failure, describes)
        if not self._samples:
            return unavailable(name, f"no reading in {self._end - self._start:.1f} s", describes)
        seconds = self._previous - self._start
        mean = self._joules / seconds if seconds > 0 else self._peak
        return PowerSummary(name, describes, True, None, mean, self._peak, self._joules, self._samples, seconds)
