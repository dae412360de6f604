"""Many streams on one engine: each stream's audio waits in a bounded queue, and one thread serves the
streams in turn, so that no stream starves another and the engine is never entered from two threads at
once. With `workers` 1 it serves one stream's turn at a time; above 1, up to that many turns at once
through an engine loop (serving/engine_loop.py), which batches their encoder windows and decoder steps.

Per-stream state (VAD, segmenter, Mel ring, local agreement, prompt) stays per stream, in one
StreamRecognizer each. A turn gives a stream at most `turn_s` of its queued audio, and the finals that audio
completes. Partials are turns of their own, and come last: a stream's due partial is taken only once every
stream with audio queued has had a turn since the last partial, and not while any stream's audio has waited
longer than `shed_after_s`. Partials are previews; finals must not wait behind other streams' partials (when
partials rode in the audio turns, a final waited for a round of them: 0.57 s at the median at 16 streams).

The VAD judges the next window of every stream with audio queued in one call, when a segmenter needs one
(serving/vad_ahead.py). Its session is made with the engine's Threads and before the engine (runtime/threads.py).
"""
from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.decoding.calls import run_sync
from edge_asr.runtime.decoding.options import TranscribeOptions
from edge_asr.runtime.engines.timed import OpTally, TimedEngine
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.streaming.events import StreamEvent
from edge_asr.runtime.serving.engine_loop import EngineLoop, Job
from edge_asr.runtime.serving.vad_ahead import VadAhead
from edge_asr.runtime.streaming.recognizer import StreamOptions, StreamRecognizer
from edge_asr.runtime.threads import Threads


class CapacityError(EdgeAsrError):
    pass


@dataclass(frozen=True)
class SchedulerOptions:
    max_streams: int = 8
    max_queued_s: float = 10.0  # per stream: push() refuses more (back-pressure on the client)
    turn_s: float = 1.0  # the most audio one stream gets through the recognizer before the next stream's turn
    shed_after_s: float = 0.3  # audio queued this long anywhere: finals only, no partials, until it is served
    workers: int = 1  # streams served at once; above 1 one loop batches their engine calls (serving/engine_loop.py)

    def validate(self) -> "SchedulerOptions":
        for name in ("max_streams", "workers"):
            if getattr(self, name) < 1:
                raise EdgeAsrError(f"{name} must be 1 or more, not {getattr(self, name)}.")
        for name in ("max_queued_s", "turn_s", "shed_after_s"):
            if getattr(self, name) <= 0:
                raise EdgeAsrError(f"{name} must be positive, not {getattr(self, name)}.")
        if self.turn_s > self.max_queued_s:
            raise EdgeAsrError(f"turn_s ({self.turn_s}) cannot exceed max_queued_s ({self.max_queued_s}).")
        return self


@dataclass
class SchedulerStats:
    active_streams: int
    queued_seconds: float  # audio waiting, all streams
    busy_seconds: float  # cumulative time inside the recognizers
    audio_seconds: float  # cumulative audio they took: RTF is d(busy) / d(audio)
    finals: int
    errors: int
    engine: dict[str, OpTally] = field(default_factory=dict)  # the engine's calls by kind, when it is timed
    vad_calls: int = 0  # the VAD model's calls and the windows they judged (many streams' at once: vad_ahead.py)
    vad_windows: int = 0


class StreamHandle:
    """One client's stream. push/finish/abort may be called from any thread; the callbacks come from
    the scheduler's worker thread. ``vad`` is the stream's lane of the batched VAD (vad_ahead.VadLane): it is fed
    what the stream queues."""

    def __init__(self, scheduler: "StreamScheduler", stream_id: int, recognizer: StreamRecognizer, vad,
                 on_events: Callable[[list[StreamEvent]], None], on_error: Callable[[str], None],
                 on_closed: Callable[[], None]):
        self.id, self.recognizer, self.vad = stream_id, recognizer, vad
        self._scheduler = scheduler
        self.on_events, self.on_error, self.on_closed = on_events, on_error, on_closed
        self.queue: deque[tuple[float, np.ndarray]] = deque()  # (arrival time, samples)
        self.queued = 0  # samples
        self.finishing = self.aborted = self.in_turn = False
        self.partial_due = False  # its recognizer has a partial due (set after each of its turns)

    def push(self, samples: np.ndarray) -> bool:
        """Queues float32 16 kHz samples; False when the queue is full (nothing was queued)."""
        return self._scheduler._enqueue(self, np.asarray(samples, np.float32))

    def finish(self) -> None:
        """No more audio: the stream is flushed, its finals delivered, then on_closed() is called."""
        self._scheduler._finish(self)

    def abort(self) -> None:
        """The client is gone: its queued audio is dropped and no more callbacks come."""
        self._scheduler._abort(self)


class StreamScheduler:
    """make_recognizer(vad) gives a stream its recognizer; vads holds one VAD per stream that may be open, each
    with ``feed(samples)`` and ``reset(unheard)`` (vad_ahead.VadLane); ``vad_ahead``, whose lanes they are, counts
    its calls for the stats."""

    def __init__(self, make_recognizer: Callable[[object], StreamRecognizer], vads: list,
                 options: SchedulerOptions | None = None, engine: TimedEngine | None = None,
                 vad_ahead: VadAhead | None = None):
        self.options = (options or SchedulerOptions()).validate()
        self._engine = engine  # counted calls for the stats, if the recognizers' engine is timed
        self._vad_ahead = vad_ahead
        if len(vads) < self.options.max_streams:
            raise EdgeAsrError(f"{self.options.max_streams} streams need as many VADs, not {len(vads)}.")
        self._recognizer = make_recognizer
        self._free_vads = list(vads)
        self._streams: dict[int, StreamHandle] = {}
        self._order: deque[int] = deque()  # round-robin: the stream served last goes to the back
        self._served: set[int] = set()  # streams given an audio turn since the last partial turn
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._next_id = 1
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._busy = self._audio = 0.0
        self._finals = self._errors = 0

    @property
    def max_streams(self) -> int:
        return self.options.max_streams

    def open_stream(self, on_events, on_error, on_closed) -> StreamHandle:
        with self._lock:
            if self._stopping:
                raise CapacityError("The server is shutting down.")
            if len(self._streams) >= self.max_streams:
                raise CapacityError(f"server full: {self.max_streams} streams")
            vad = self._free_vads.pop()
            vad.reset()
            handle = StreamHandle(self, self._next_id, self._recognizer(vad), vad, on_events, on_error, on_closed)
            self._streams[handle.id] = handle
            self._order.append(handle.id)
            self._next_id += 1
            return handle

    def start(self) -> None:
        if self.options.workers > 1:  # one loop batches the engine calls of `workers` streams at a time
            self._threads = [threading.Thread(target=self._run_loop, name="edge-asr-engine-loop", daemon=True)]
        else:
            self._threads = [threading.Thread(target=self._run, name="edge-asr-worker", daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Finishes every open stream (their finals go out through on_events, then on_closed) and stops."""
        with self._work:
            self._stopping = True
            for handle in self._streams.values():
                handle.finishing = True
            self._work.notify_all()
        for thread in self._threads:
            thread.join()

    def stats(self) -> SchedulerStats:
        with self._lock:
            queued = sum(h.queued for h in self._streams.values()) / SAMPLE_RATE
            stats = SchedulerStats(len(self._streams), queued, self._busy, self._audio, self._finals, self._errors)
        if self._engine is not None:
            stats.engine = self._engine.tally()
        if self._vad_ahead is not None:
            stats.vad_calls, stats.vad_windows = self._vad_ahead.calls, self._vad_ahead.windows
        return stats

    def _enqueue(self, handle: StreamHandle, samples: np.ndarray) -> bool:
        with self._work:
            if handle.aborted or handle.finishing:
                return False
            if handle.queued + len(samples) > self.options.max_queued_s * SAMPLE_RATE:
                return False
            handle.queue.append((time.monotonic(), samples))
            handle.queued += len(samples)
            handle.vad.feed(samples)
            self._work.notify()
            return True

    def _finish(self, handle: StreamHandle) -> None:
        with self._work:
            handle.finishing = True
            self._work.notify()

    def _abort(self, handle: StreamHandle) -> None:
        with self._work:
            handle.aborted = True
            handle.queue.clear()
            handle.queued = 0
            if not handle.in_turn:  # otherwise the worker releases it when the turn ends
                self._release(handle)

    def _release(self, handle: StreamHandle) -> None:
        """Under the lock: forget the stream and give its VAD back."""
        if self._streams.pop(handle.id, None) is not None:
            self._order.remove(handle.id)
            self._served.discard(handle.id)
            handle.vad.reset()  # what it was fed and not heard is nobody's now
            self._free_vads.append(handle.vad)

    def _run(self) -> None:
        while True:
            with self._work:
                turn = self._next_turn()
                while turn is None:
                    if self._stopping and not self._streams:
                        return
                    self._work.wait(0.5)
                    turn = self._next_turn()
                handle, chunk, partial, last = self._start(*turn)
            self._turn(handle, chunk, partial, last)

    def _next_turn(self) -> tuple[StreamHandle, bool] | None:
        """Under the lock: the next turn no other worker is serving, and whether it is a partial: in round-robin
        order, a stream with audio or a finish to process that has not had a turn since the last partial; else a
        due partial, unless some stream's audio has waited longer than shed_after_s; else any stream with audio."""
        audio = [h for h in map(self._streams.get, self._order) if (h.queue or h.finishing) and not h.in_turn]
        first = next((h for h in audio if h.id not in self._served), None)
        if first is not None:
            self._served.add(first.id)
            return self._rotate(first), False
        now = time.monotonic()
        waited = max((now - h.queue[0][0] for h in self._streams.values() if h.queue), default=0.0)
        due = next((h for h in map(self._streams.get, self._order)
                    if h.partial_due and not h.in_turn and not h.finishing), None)
        if due is not None and waited <= self.options.shed_after_s:
            self._served.clear()
            return self._rotate(due), True
        return (self._rotate(audio[0]), False) if audio else None

    def _rotate(self, handle: StreamHandle) -> StreamHandle:
        """Under the lock: the stream served now goes to the back of the round-robin order."""
        self._order.remove(handle.id)
        self._order.append(handle.id)
        return handle

    def _start(self, handle: StreamHandle, partial: bool) -> tuple[StreamHandle, np.ndarray, bool, bool]:
        """Under the lock: the turn taken by a worker: its stream, its audio (none for a partial), whether it is a
        partial, and whether it is the stream's last (its audio all taken after a finish)."""
        chunk = _NO_AUDIO if partial else self._take(handle)
        handle.in_turn = True
        return handle, chunk, partial, not partial and handle.finishing and not handle.queue

    def _take(self, handle: StreamHandle) -> np.ndarray:
        """Under the lock: up to turn_s of the stream's queued audio."""
        limit = round(self.options.turn_s * SAMPLE_RATE)
        parts, taken = [], 0
        while handle.queue and taken < limit:
            arrived, samples = handle.queue.popleft()
            if taken + len(samples) > limit:
                samples, rest = samples[: limit - taken], samples[limit - taken :]
                handle.queue.appendleft((arrived, rest))
            parts.append(samples)
            taken += len(samples)
        handle.queued -= taken
        return np.concatenate(parts) if parts else _NO_AUDIO

    def _turn(self, handle: StreamHandle, chunk: np.ndarray, partial: bool, last: bool) -> None:
        """Outside the lock: the recognizer takes the chunk (or computes its partial); the events and errors go
        to the client."""
        started = time.perf_counter()
        events, error = [], None
        try:
            events = run_sync(self._turn_steps(handle, chunk, partial, last), handle.recognizer.engine)
        except Exception as err:  # one utterance's failure must not end the other streams, nor this one
            error = err
        self._end_turn(handle, chunk, last, events, error, time.perf_counter() - started)

    def _run_loop(self) -> None:
        """Serves up to `workers` streams at once from this one thread: their turns are generators of engine
        calls, which an EngineLoop runs together (encoder windows batched, decoder steps pooled)."""
        loop: EngineLoop | None = None  # on the recognizers' engine, once the first stream has one
        active: list[tuple[Job, StreamHandle, np.ndarray, bool]] = []
        while True:
            with self._work:
                while len(active) < self.options.workers and (turn := self._next_turn()) is not None:
                    handle, chunk, partial, last = self._start(*turn)
                    steps = self._turn_steps(handle, chunk, partial, last)
                    active.append((Job(steps), handle, chunk, last))
                    loop = loop or EngineLoop(handle.recognizer.engine)
                if not active:
                    if self._stopping and not self._streams:
                        return
                    self._work.wait(0.5)
                    continue
            started = time.perf_counter()
            loop.round([job for job, *_ in active])
            with self._work:
                self._busy += time.perf_counter() - started
            for job, handle, chunk, last in [turn for turn in active if turn[0].done]:
                self._end_turn(handle, chunk, last, job.result or [], job.error, 0.0)
            active = [turn for turn in active if not turn[0].done]

    @staticmethod
    def _turn_steps(handle: StreamHandle, chunk: np.ndarray, partial: bool, last: bool):
        """A turn as a generator of engine calls (decoding/calls.py): the stream's partial, or the chunk pushed
        (finals, no partial) and the stream flushed if done."""
        if partial:
            return (yield from handle.recognizer.partial_steps())
        events = []
        if len(chunk):
            events = yield from handle.recognizer.push_steps(chunk, partials=False)
        if last:
            events += yield from handle.recognizer.flush_steps()
        return events

    def _end_turn(self, handle: StreamHandle, chunk: np.ndarray, last: bool, events: list[StreamEvent],
                  error: BaseException | None, busy_s: float) -> None:
        """After a turn: the stats, the stream released when it ended, its events or error to the client."""
        message = None
        if error is not None:  # one utterance's failure must not end the other streams, nor this one
            message = f"transcription failed, the current utterance is lost: {error}"
            handle.recognizer = self._recognizer(handle.vad)
        due = not last and handle.recognizer.partial_due  # read on this, the worker's, thread
        with self._work:
            handle.partial_due = due
            if error is not None:  # the new recognizer starts with the audio still queued, and so does its VAD
                handle.vad.reset(samples for _, samples in handle.queue)
            self._busy += busy_s
            self._audio += len(chunk) / SAMPLE_RATE
            self._finals += sum(e.type == "final" for e in events)
            self._errors += error is not None
            handle.in_turn = False
            aborted = handle.aborted
            if aborted or last:
                self._release(handle)
            self._work.notify_all()  # the stream may have more audio for another worker
        if aborted:
            return
        if message is not None:
            _deliver(handle.on_error, message)
        if events:
            _deliver(handle.on_events, events)
        if last:
            _deliver(handle.on_closed)


_NO_AUDIO = np.zeros(0, np.float32)


def _deliver(callback, *args) -> None:
    """A client's callback failing (its connection torn down meanwhile) must not stop the worker."""
    try:
        callback(*args)
    except Exception as err:
        print(f"edge-asr: a stream's callback failed: {err}", file=sys.stderr)


def build_scheduler(bundle: Path, decoding: TranscribeOptions, options: SchedulerOptions, streaming: StreamOptions,
                    threads: int | Threads | None = None, vad_model: Path | None = None) -> StreamScheduler:
    """The scheduler `edge-asr serve` runs: ``decoding`` with the bundle's model facts filled in, ``streaming``
    (StreamOptions) for every stream, and one VAD session for every slot."""
    from edge_asr.runtime.bundle import load_bundle
    from edge_asr.runtime.streaming.vad import SileroVad
    from edge_asr.runtime.transcriber import Transcriber

    bundle = load_bundle(Path(bundle))
    threads = Threads.of(threads)
    vad_ahead = VadAhead(SileroVad(vad_model, threads=threads), options.max_streams)  # before the engine: see above
    transcriber = Transcriber(bundle, threads=threads)
    timed = TimedEngine(transcriber.engine)  # for /metrics: where the engine's time goes, and rows per step
    decoding = transcriber.with_model_facts(decoding).validate()
    return StreamScheduler(partial(StreamRecognizer, timed, transcriber.tokenizer,
                                   transcribe_options=decoding, options=streaming), vad_ahead.lanes, options, timed,
                           vad_ahead)
