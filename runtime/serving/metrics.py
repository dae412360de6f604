"""The Prometheus metrics of `edge-asr serve`, in a registry of each server's own (so that two servers
in one process, as in the tests, count apart).

Latency and errors are counted as they happen; the scheduler's figures (streams, queue, real-time
factor), the engine's calls by kind (encode, prompt, step: seconds, calls, rows) and the GPU memory
are read when Prometheus scrapes, so they cost nothing in between. Rows over calls of `step` is the
batch a decoder step carried; the seconds by kind say where the engine's time goes.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.serving.scheduler import SchedulerStats

ERROR_KINDS = ("bad_token", "malformed", "too_big", "capacity", "idle", "engine", "backpressure")
LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


class ServerMetrics:
    def __init__(self, stats: Callable[[], SchedulerStats], gpu_memory_mb: Callable[[], float | None]):
        self.registry = CollectorRegistry()
        self.final_latency = Histogram(
            "edge_asr_final_latency_seconds",
            "Transcription duration: from the arrival of the end of an utterance's speech to its final text.",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("edge_asr_request_errors", "Requests refused or failed, by kind.", ["kind"],
                              registry=self.registry)
        for kind in ERROR_KINDS:  # every kind shows from the start, at 0
            self.errors.labels(kind)
        self.registry.register(SchedulerCollector(stats, gpu_memory_mb))

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class SchedulerCollector:
    """Gauges read at scrape time. The real-time factor is the engine time over the audio it took since
    the previous scrape (no sample when no audio came); GPU memory shows only when this process holds
    some, that is when the engine runs on CUDA."""

    def __init__(self, stats: Callable[[], SchedulerStats], gpu_memory_mb: Callable[[], float | None]):
        self.stats, self.gpu_memory_mb = stats, gpu_memory_mb
        self._last = stats()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats, last = self.stats(), self._last
        self._last = stats
        yield GaugeMetricFamily("edge_asr_active_streams", "Streams open.", value=stats.active_streams)
        yield GaugeMetricFamily("edge_asr_queue_depth_seconds", "Audio waiting for the engine, all streams.",
                                value=stats.queued_seconds)
        rtf = GaugeMetricFamily("edge_asr_real_time_factor",
                                "Engine seconds per second of audio since the previous scrape.")
        audio = stats.audio_seconds - last.audio_seconds
        if audio > 0:
            rtf.add_metric([], (stats.busy_seconds - last.busy_seconds) / audio)
        yield rtf
        yield from _engine_counters(stats)
        yield CounterMetricFamily("edge_asr_vad_calls", "Calls of the VAD model, every stream's ready window in one.",
                                  value=stats.vad_calls)
        yield CounterMetricFamily("edge_asr_vad_windows", "32 ms windows the VAD judged, all streams.",
                                  value=stats.vad_windows)
        used = self.gpu_memory_mb()
        if used is not None:
            yield GaugeMetricFamily("edge_asr_gpu_memory_bytes", "GPU memory this process holds.", value=used * 2**20)


ENGINE_COUNTERS = (("seconds", "Engine time, by kind of call."), ("calls", "Engine calls, by kind."),
                   ("rows", "Rows the engine computed (windows, prompts, tokens), by kind of call."))


def _engine_counters(stats: SchedulerStats) -> Iterator[CounterMetricFamily]:
    if not stats.engine:
        return
    for name, documentation in ENGINE_COUNTERS:
        family = CounterMetricFamily(f"edge_asr_engine_{name}", documentation, labels=["op"])
        for op, tally in stats.engine.items():
            family.add_metric([op], getattr(tally, name))
        yield family


# A final's speech ends at most this far behind the audio received: an utterance is at most 30 s long,
# and at most 10 s of a stream's audio waits in its queue.
ARRIVAL_HORIZON_S = 60


class ArrivalClock:
    """When each stretch of one stream's audio arrived, so that a final's latency is measured from the
    arrival of its last voiced sample, whatever pace the client sends at (a file pushed faster than
    real time included)."""

    def __init__(self):
        self._received = 0
        self._marks: deque[tuple[int, float]] = deque()  # (samples received by then, monotonic time)

    def arrived(self, samples: int) -> None:
        self._received += samples
        self._marks.append((self._received, time.monotonic()))
        horizon = self._received - ARRIVAL_HORIZON_S * SAMPLE_RATE  # silence brings no finals to trim the marks
        while len(self._marks) > 1 and self._marks[0][0] < horizon:
            self._marks.popleft()

    def since(self, stream_seconds: float) -> float | None:
        """Seconds since the audio at `stream_seconds` arrived (None before any did). Finals come in
        stream order, so the marks before one are not needed again."""
        if not self._marks:
            return None
        sample = round(stream_seconds * SAMPLE_RATE)
        while len(self._marks) > 1 and self._marks[0][0] < sample:
            self._marks.popleft()
        return time.monotonic() - self._marks[0][1]
