"""The server's voice activity detection, done ahead of its worker: each stream's audio is judged as it arrives, on
a thread of its own, and the windows of every stream that has one ready go through the Silero model in one call.

On the worker thread the VAD was 7.8 % of that thread's time at 12 tiny.en-adaptive streams (`py-spy` on `edge-asr
serve`), one 32 ms window of one stream a call, 0.14 ms each, with the engine's cores idle meanwhile. Batched, 16
streams' windows take 0.91 ms a call here, 0.057 ms a window, and each row's probability and state are the ones it
gets alone (tested). The worker's segmenters then read the probabilities (``VadLane.__call__``), waiting only if the
thread has not reached their window yet.

A stream's lane must see the same samples, in the same order, as its segmenter: the scheduler feeds a lane what it
queues for the stream (``feed``), and after a recognizer is replaced (an error) resets it with the audio still
queued (``reset``). A segmenter's last window at the end of a stream (a part of a window, padded with zeros) was
never fed whole: the lane judges it on the spot.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.streaming.vad import CONTEXT_SAMPLES, STATE_SHAPE, WINDOW_SAMPLES, SileroVad


class VadAhead:
    """``lanes`` streams' detectors on ``vad``'s session, judged on one thread between ``start`` and ``stop``."""

    def __init__(self, vad: SileroVad, lanes: int):
        self._session = vad.session
        self._sample_rate = np.array(SAMPLE_RATE, np.int64)
        self._changed = threading.Condition()
        self.lanes = [VadLane(self._changed, self._session) for _ in range(lanes)]
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.calls = self.windows = 0  # model calls and the windows they judged: windows / calls rows a call

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="edge-asr-vad", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._stopping and not (ready := [lane for lane in self.lanes if lane.has_window()]):
                    self._changed.wait()
                if self._stopping:
                    return
                batch = [lane.take_window() for lane in ready]
            try:
                inputs = np.stack([taken.input for taken in batch])
                states = np.concatenate([taken.state for taken in batch], axis=1)
                probabilities, states = self._session.run(
                    None, {"input": inputs, "state": states, "sr": self._sample_rate})
            except Exception as err:  # the lanes' segmenters raise it: their utterance fails, the server goes on
                probabilities, states, failure = None, None, err
            else:
                failure = None
            with self._changed:
                self.calls += 1
                self.windows += len(batch)
                for row, taken in enumerate(batch):
                    if failure is not None:
                        taken.lane.judged(taken, failure=failure)
                    else:
                        taken.lane.judged(taken, float(probabilities[row, 0]), states[:, row : row + 1])
                self._changed.notify_all()


@dataclass(frozen=True)
class _Taken:
    """A window on its way through the model: its lane, the lane's generation then, the window and the model's
    input (the 64 samples before it and the window) and state."""

    lane: "VadLane"
    generation: int
    window: np.ndarray
    input: np.ndarray
    state: np.ndarray


class VadLane:
    """One stream's detector: judged ahead on VadAhead's thread, read in order by the stream's segmenter."""

    def __init__(self, changed: threading.Condition, session):
        self._changed, self._session = changed, session
        self._sample_rate = np.array(SAMPLE_RATE, np.int64)
        self._generation = 0
        with changed:
            self._clear()

    def _clear(self) -> None:
        """Under the lock: no audio heard."""
        self._generation += 1  # a window in flight for the audio before is dropped when it comes back
        self._state = np.zeros(STATE_SHAPE, np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, np.float32)
        self._pending: deque[np.ndarray] = deque()  # fed, not yet judged
        self._pending_samples = 0
        self._judged: deque[tuple[np.ndarray, float]] = deque()  # (window, probability) not yet read
        self._in_flight = False
        self._failure: BaseException | None = None

    def reset(self, unheard: Iterable[np.ndarray] = ()) -> None:
        """A new stream, or a new segmenter for this one that starts with ``unheard`` (the audio still queued)."""
        with self._changed:
            self._clear()
            for samples in unheard:
                self._add(samples)
            self._changed.notify_all()

    def feed(self, samples: np.ndarray) -> None:
        """The stream's next samples, as queued for its recognizer (float32, 16 kHz)."""
        with self._changed:
            self._add(samples)
            self._changed.notify_all()

    def _add(self, samples: np.ndarray) -> None:
        if len(samples):
            self._pending.append(np.asarray(samples, np.float32))
            self._pending_samples += len(samples)

    def has_window(self) -> bool:
        """Under the lock: a whole window fed and not yet sent to the model, and none of this lane's in flight."""
        return not self._in_flight and self._failure is None and self._pending_samples >= WINDOW_SAMPLES

    def take_window(self) -> _Taken:
        """Under the lock: the next window, with the model's input and this lane's state, out of the pending audio."""
        window = self._pop(WINDOW_SAMPLES)
        self._in_flight = True
        return _Taken(self, self._generation, window, np.concatenate([self._context, window]), self._state)

    def _pop(self, count: int) -> np.ndarray:
        parts, taken = [], 0
        while taken < count and self._pending:
            head = self._pending.popleft()
            if taken + len(head) > count:
                head, rest = head[: count - taken], head[count - taken :]
                self._pending.appendleft(rest)
            parts.append(head)
            taken += len(head)
        self._pending_samples -= taken
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def judged(self, taken: _Taken, probability: float = 0.0, state: np.ndarray | None = None,
               failure: BaseException | None = None) -> None:
        """Under the lock, from VadAhead's thread: the model's answer for ``taken``."""
        if taken.generation != self._generation:  # reset meanwhile: that audio is no longer this lane's
            return
        self._in_flight = False
        if failure is not None:
            self._failure = failure
            return
        self._state, self._context = state, taken.window[-CONTEXT_SAMPLES:]
        self._judged.append((taken.window, probability))

    def __call__(self, window: np.ndarray) -> float:
        """Speech probability of the stream's next window (what SileroVad returns), as judged ahead."""
        with self._changed:
            while not self._judged and self._failure is None and (
                    self._in_flight or self._pending_samples >= WINDOW_SAMPLES):
                self._changed.wait()
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise RuntimeError(f"the voice activity detector failed: {failure}") from failure
            if self._judged:
                judged, probability = self._judged.popleft()
                if not np.array_equal(judged, window):
                    raise RuntimeError("the stream's VAD lane is out of step with its segmenter")
                return probability
            return self._judge_here(window)

    def _judge_here(self, window: np.ndarray) -> float:
        """Under the lock: a window that was never fed whole (the end of a stream: its last samples and zeros)."""
        heard = self._pop(self._pending_samples)
        if len(window) != WINDOW_SAMPLES or not np.array_equal(window[: len(heard)], heard):
            raise RuntimeError("the stream's VAD lane is out of step with its segmenter")
        probability, self._state = self._session.run(None, {
            "input": np.concatenate([self._context, window])[None], "state": self._state, "sr": self._sample_rate})
        self._context = window[-CONTEXT_SAMPLES:]
        return float(probability[0, 0])
