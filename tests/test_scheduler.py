"""The stream scheduler: turns in round-robin, partials after every stream's audio, bounded queues, load
shedding, errors kept to one stream."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.serving.scheduler import CapacityError, SchedulerOptions, StreamScheduler
from edge_asr.runtime.streaming.events import StreamEvent


class FakeVad:
    """A stream's VAD lane as the scheduler sees it: fed what the stream queues, reset with what is still queued."""

    def __init__(self):
        self.resets, self.fed = 0, 0

    def reset(self, unheard=()):
        self.resets += 1
        self.fed = sum(len(samples) for samples in unheard)

    def feed(self, samples):
        self.fed += len(samples)


class FakeRecognizer:
    """Finals say how many samples the recognizer has heard; a NaN sample is an engine failure. With
    ``partials``, each push leaves a partial due, which a partial turn computes."""

    log: list  # (recognizer name, samples pushed or "partial") per turn, shared by all recognizers of a test
    engine = None  # it calls none: the engine loop (workers above 1) runs its turns all the same

    def __init__(self, vad, name, log, partials=False):
        self.vad, self.name, self.log, self.heard = vad, name, log, 0
        self.partials, self.partial_due = partials, False

    def push_steps(self, samples, partials=True):  # generators of no engine calls, as the engine loop drives them
        assert not partials, "a server's pushes leave partials to partial turns"
        self.log.append((self.name, len(samples)))
        if np.isnan(samples).any():
            raise RuntimeError("engine exploded")
        self.heard += len(samples)
        self.partial_due = self.partials
        return [StreamEvent("final", 0.0, self.heard / SAMPLE_RATE, f"{self.name} heard {self.heard}")]
        yield

    def flush_steps(self):
        return [StreamEvent("final", 0.0, self.heard / SAMPLE_RATE, f"{self.name} flushed at {self.heard}")]
        yield

    def partial_steps(self):
        self.log.append((self.name, "partial"))
        self.partial_due = False
        return [StreamEvent("partial", 0.0, self.heard / SAMPLE_RATE, f"{self.name} so far {self.heard}")]
        yield


class Client:
    """What a server connection would do with the callbacks: keep everything, say when closed."""

    def __init__(self):
        self.events, self.errors, self.closed = [], [], threading.Event()

    def open(self, scheduler):
        return scheduler.open_stream(self.events.extend, self.errors.append, self.closed.set)


def make_scheduler(max_streams=2, partials=False, **options):
    log, names = [], iter(f"r{i}" for i in range(100))
    vads = [FakeVad() for _ in range(max_streams)]
    scheduler = StreamScheduler(lambda vad: FakeRecognizer(vad, next(names), log, partials), vads,
                                SchedulerOptions(max_streams=max_streams, **options))
    return scheduler, log, vads


def seconds(s: float) -> np.ndarray:
    return np.zeros(round(s * SAMPLE_RATE), np.float32)


def test_finish_flushes_and_closes_after_the_finals():
    scheduler, log, _ = make_scheduler()
    client = Client()
    handle = client.open(scheduler)
    scheduler.start()
    assert handle.push(seconds(0.5))
    handle.finish()
    assert client.closed.wait(5)
    assert [e.text for e in client.events] == ["r0 heard 8000", "r0 flushed at 8000"]
    stats = scheduler.stats()
    assert (stats.active_streams, stats.audio_seconds, stats.finals, stats.errors) == (0, 0.5, 2, 0)
    assert not handle.push(seconds(0.1))  # a finished stream takes no more audio
    scheduler.stop()


def test_capacity_and_vads_come_back():
    scheduler, _, vads = make_scheduler(max_streams=2)
    first, second = Client().open(scheduler), Client().open(scheduler)
    with pytest.raises(CapacityError, match="server full: 2 streams"):
        Client().open(scheduler)
    first.abort()
    third = Client().open(scheduler)  # the aborted stream's VAD, reset when released and for the new stream
    assert third.vad is first.vad and first.vad.resets == 3
    assert {second.vad, third.vad} == set(vads)


def test_a_full_queue_pushes_back():
    scheduler, _, _ = make_scheduler(max_queued_s=2.0, turn_s=1.0)
    handle = Client().open(scheduler)
    assert handle.push(seconds(1.5))
    assert not handle.push(seconds(0.6))  # 2.1 s would be queued: refused, nothing queued
    assert handle.push(seconds(0.5))
    assert scheduler.stats().queued_seconds == pytest.approx(2.0)


def test_turns_go_round_so_a_long_backlog_does_not_starve_a_short_one():
    scheduler, log, _ = make_scheduler(turn_s=1.0, shed_after_s=60)
    long, short = Client(), Client()
    long_handle, short_handle = long.open(scheduler), short.open(scheduler)
    long_handle.push(seconds(4.0))
    short_handle.push(seconds(1.0))
    long_handle.finish()
    short_handle.finish()
    scheduler.start()
    assert long.closed.wait(5) and short.closed.wait(5)
    assert log == [("r0", 16000), ("r1", 16000), ("r0", 16000), ("r0", 16000), ("r0", 16000)]
    scheduler.stop()


def test_partials_come_after_every_streams_audio():
    """A stream's due partial waits until each stream with audio queued has had its turn (its finals)."""
    scheduler, log, _ = make_scheduler(partials=True, shed_after_s=60)
    clients = [Client(), Client()]
    handles = [c.open(scheduler) for c in clients]
    for handle in handles:
        handle.push(seconds(0.5))
    scheduler.start()
    deadline = time.monotonic() + 5
    while len(log) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log == [("r0", 8000), ("r1", 8000), ("r0", "partial"), ("r1", "partial")]
    assert [e.type for e in clients[0].events] == ["final", "partial"]
    for handle in handles:
        handle.finish()
    assert all(c.closed.wait(5) for c in clients)
    scheduler.stop()


def test_next_turn_takes_audio_first_then_partials_unless_audio_has_waited():
    scheduler, _, _ = make_scheduler(max_streams=3, partials=True, shed_after_s=0.3)
    a, b, c = (Client().open(scheduler) for _ in range(3))
    now = time.monotonic()
    a.partial_due = c.partial_due = True
    b.queue.append((now, seconds(0.1)))
    c.queue.append((now, seconds(0.1)))
    assert scheduler._next_turn() == (b, False)  # audio before partials, in round-robin order
    assert scheduler._next_turn() == (c, False)
    assert scheduler._next_turn() == (a, True)  # every stream with audio had its turn: a partial
    a.partial_due = False  # (its turn computed it)
    assert scheduler._next_turn() == (b, False)  # after a partial, audio first again
    assert scheduler._next_turn() == (c, False)
    assert scheduler._next_turn() == (c, True)  # the next partial due, round-robin
    a.partial_due, c.partial_due = True, False
    c.queue.clear()
    b.queue[0] = (now - 1.0, b.queue[0][1])  # b's audio has waited 1 s: partials held back
    scheduler._served.add(b.id)
    assert scheduler._next_turn() == (b, False)
    b.queue.clear()
    assert scheduler._next_turn() == (a, True)
    a.finishing, a.partial_due = True, True  # a finishing stream gets its flush, not a partial
    assert scheduler._next_turn() == (a, False)


def test_an_engine_error_stays_with_its_stream():
    scheduler, log, _ = make_scheduler()
    broken, healthy = Client(), Client()
    broken_handle, healthy_handle = broken.open(scheduler), healthy.open(scheduler)
    scheduler.start()
    broken_handle.push(np.full(100, np.nan, np.float32))
    healthy_handle.push(seconds(0.25))
    deadline = time.monotonic() + 5
    while not broken.errors and time.monotonic() < deadline:
        time.sleep(0.01)
    broken_handle.push(seconds(0.25))  # the stream goes on with a fresh recognizer
    broken_handle.finish()
    healthy_handle.finish()
    assert broken.closed.wait(5) and healthy.closed.wait(5)
    assert broken.errors and "engine exploded" in broken.errors[0] and not healthy.errors
    assert [e.text for e in healthy.events] == ["r1 heard 4000", "r1 flushed at 4000"]
    assert broken.events[-1].text == "r2 flushed at 4000"
    assert scheduler.stats().errors == 1
    scheduler.stop()


def test_after_an_error_the_streams_vad_starts_again_with_the_audio_still_queued():
    """The fresh recognizer hears the stream from its next queued sample on; so must its VAD lane, which was fed
    everything queued (vad_ahead.py), or its windows would be judged out of step."""
    scheduler, _, vads = make_scheduler(max_streams=1, turn_s=100 / SAMPLE_RATE)  # a turn takes 100 samples
    client = Client()
    handle = client.open(scheduler)
    handle.push(np.full(100, np.nan, np.float32))
    handle.push(seconds(0.25))
    assert vads[0].fed == 4100
    scheduler.start()
    deadline = time.monotonic() + 5
    while not client.errors and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.errors and vads[0].resets == 2 and vads[0].fed == 4000  # opened, then reset after the error
    handle.finish()
    assert client.closed.wait(5)
    scheduler.stop()


def test_an_aborted_stream_gets_no_more_callbacks():
    scheduler, _, vads = make_scheduler()
    gone, staying = Client(), Client()
    gone_handle, staying_handle = gone.open(scheduler), staying.open(scheduler)
    gone_handle.push(seconds(1.0))
    gone_handle.abort()
    staying_handle.push(seconds(0.5))
    staying_handle.finish()
    scheduler.start()
    assert staying.closed.wait(5)
    assert gone.events == [] and not gone.closed.is_set()
    assert scheduler.stats().active_streams == 0
    scheduler.stop()


def test_stop_sends_the_finals_of_every_open_stream():
    scheduler, _, _ = make_scheduler()
    clients = [Client(), Client()]
    handles = [c.open(scheduler) for c in clients]
    scheduler.start()
    for handle in handles:
        handle.push(seconds(0.5))
    scheduler.stop()
    for client in clients:
        assert client.closed.is_set() and "flushed at 8000" in client.events[-1].text
    with pytest.raises(CapacityError, match="shutting down"):
        Client().open(scheduler)


def test_workers_serve_streams_at_once_but_never_one_stream_twice():
    scheduler, log, _ = make_scheduler(max_streams=3, workers=3, turn_s=0.1, shed_after_s=60)
    clients = [Client() for _ in range(3)]
    handles = [c.open(scheduler) for c in clients]
    for handle in handles:
        for _ in range(5):
            handle.push(seconds(0.1))
        handle.finish()
    scheduler.start()
    for client in clients:
        assert client.closed.wait(5)
    for i, client in enumerate(clients):  # each recognizer saw its stream's blocks in order, all of them
        assert [e.text for e in client.events][-1] == f"r{i} flushed at 8000"
        assert [e.text for e in client.events][:-1] == [f"r{i} heard {1600 * k}" for k in range(1, 6)]
    scheduler.stop()


def test_options_are_validated():
    with pytest.raises(EdgeAsrError, match="max_streams"):
        SchedulerOptions(max_streams=0).validate()
    with pytest.raises(EdgeAsrError, match="workers"):
        SchedulerOptions(workers=0).validate()
    with pytest.raises(EdgeAsrError, match="cannot exceed"):
        SchedulerOptions(turn_s=5, max_queued_s=2).validate()
    with pytest.raises(EdgeAsrError, match="as many VADs"):
        StreamScheduler(lambda vad: None, [FakeVad()], SchedulerOptions(max_streams=2))


def test_stats_carry_the_engine_tally_when_the_engine_is_timed():
    from edge_asr.runtime.engines.timed import TimedEngine

    class Engine:
        dims = None

        def encode(self, mel):
            return "audio"

    timed = TimedEngine(Engine())
    timed.encode(np.zeros((1, 80, 3000), np.float32))
    scheduler = StreamScheduler(lambda vad: None, [FakeVad()], SchedulerOptions(max_streams=1), timed)
    assert scheduler.stats().engine["encode"].calls == 1 and scheduler.stats().engine["step"].rows == 0
    assert make_scheduler()[0].stats().engine == {}  # not timed: no tally
