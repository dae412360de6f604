"""The server's voice activity detection, batched over streams: when a stream's segmenter needs a window judged, one
call of the Silero model judges the next window of every stream that has one queued, and the others' results wait
for their segmenters (``VadLane.__call__``).

One window of one stream a call, the VAD was 7.8 % of the server's worker thread at 12 tiny.en-adaptive streams
(`py-spy` on `edge-asr serve`): 0.14 ms a call here. A call of 4 streams' windows takes 0.31 ms, of 16 0.91 ms
(0.057 ms a window), and each row's probability and state are the ones it gets alone (tested). In a 16-stream load
test the calls carried 11.1 windows each (22539 windows, 2032 calls): about 1.4 s of VAD in place of 3.2 s, of the
worker's 46 s. The calls stay on the thread that needs them, between its engine calls: a thread of their own was
tried first, and it is one more busy thread beside the engine's two on two cores (three load tests at 14 streams,
each run after one with the VAD inline, gave p90 1.20-1.36 s against 1.01-1.13 s, but this machine's p90 swings
0.8-1.4 s between identical runs, and the order of a pair was not varied).

A stream's lane must see the same samples, in the same order, as its segmenter: the scheduler feeds a lane what it
queues for the stream (``feed``), and after a recognizer is replaced (an error) resets it with the audio still
queued (``reset``). A segmenter's last window at the end of a stream (a part of a window, padded with zeros) was
never fed whole: the lane judges it alone.
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
    """``lanes`` streams' detectors on ``vad``'s session, judged together when one of them is read."""

    def __init__(self, vad: SileroVad, lanes: int):
        self._session = vad.session
        self._sample_rate = np.array(SAMPLE_RATE, np.int64)
        self._lock = threading.Lock()  # the lanes' audio and results: fed from the clients' threads
        self._judging = threading.Lock()  # one model call at a time
        self.lanes = [VadLane(self) for _ in range(lanes)]
        self.calls = self.windows = 0  # model calls and the windows they judged: windows / calls rows a call

    def judge(self) -> None:
        """One model call: the next window of every lane that has a whole one fed and not yet judged."""
        with self._judging:
            with self._lock:
                batch = [lane.take_window() for lane in self.lanes if lane.has_window()]
            if not batch:
                return
            failure = None
            try:
                inputs = np.stack([taken.input for taken in batch])
                states = np.concatenate([taken.state for taken in batch], axis=1)
                probabilities, states = self._session.run(
                    None, {"input": inputs, "state": states, "sr": self._sample_rate})
            except Exception as err:  # the lanes' segmenters raise it: their utterance fails, the server goes on
                failure = err
            with self._lock:
                self.calls += 1
                self.windows += len(batch)
                for row, taken in enumerate(batch):
                    if failure is not None:
                        taken.lane.judged(taken, failure=failure)
                    else:
                        taken.lane.judged(taken, float(probabilities[row, 0]), states[:, row : row + 1])

    def judge_alone(self, model_input: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """One window of one lane ([1, 64 + 512] and its state): a stream's last part-window."""
        with self._judging:
            probability, state = self._session.run(
                None, {"input": model_input[None], "state": state, "sr": self._sample_rate})
        return float(probability[0, 0]), state


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
    """One stream's detector: fed the stream's audio, read window by window by the stream's segmenter."""

    def __init__(self, ahead: VadAhead):
        self._ahead, self._lock = ahead, ahead._lock
        self._generation = 0
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        """Under the lock: no audio heard."""
        self._generation += 1  # a window being judged for the audio before is dropped when it comes back
        self._state = np.zeros(STATE_SHAPE, np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, np.float32)
        self._pending: deque[np.ndarray] = deque()  # fed, not yet judged
        self._pending_samples = 0
        self._judged: deque[tuple[np.ndarray, float]] = deque()  # (window, probability) not yet read
        self._failure: BaseException | None = None

    def reset(self, unheard: Iterable[np.ndarray] = ()) -> None:
        """A new stream, or a new segmenter for this one that starts with ``unheard`` (the audio still queued)."""
        with self._lock:
            self._clear()
            for samples in unheard:
                self._add(samples)

    def feed(self, samples: np.ndarray) -> None:
        """The stream's next samples, as queued for its recognizer (float32, 16 kHz)."""
        with self._lock:
            self._add(samples)

    def _add(self, samples: np.ndarray) -> None:
        if len(samples):
            self._pending.append(np.asarray(samples, np.float32))
            self._pending_samples += len(samples)

    def has_window(self) -> bool:
        """Under the lock: a whole window fed and not yet judged."""
        return self._failure is None and self._pending_samples >= WINDOW_SAMPLES

    def take_window(self) -> _Taken:
        """Under the lock: the next window, with the model's input and this lane's state, out of the pending audio."""
        window = self._pop(WINDOW_SAMPLES)
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
        """Under the lock: the model's answer for ``taken``."""
        if taken.generation != self._generation:  # reset meanwhile: that audio is no longer this lane's
            return
        if failure is not None:
            self._failure = failure
            return
        self._state, self._context = state, taken.window[-CONTEXT_SAMPLES:]
        self._judged.append((taken.window, probability))

    def __call__(self, window: np.ndarray) -> float:
        """Speech probability of the stream's next window (what SileroVad returns)."""
        while True:
            with self._lock:
                if self._failure is not None:
                    failure, self._failure = self._failure, None
                    raise RuntimeError(f"the voice activity detector failed: {failure}") from failure
                if self._judged:
                    judged, probability = self._judged.popleft()
                    if not np.array_equal(judged, window):
                        raise RuntimeError("the stream's VAD lane is out of step with its segmenter")
                    return probability
                if self._pending_samples < WINDOW_SAMPLES:
                    heard = self._pop(self._pending_samples)
                    state, context = self._state, self._context
                    break
            self._ahead.judge()
        # A window that was never fed whole: the end of a stream, its last samples and zeros.
        if len(window) != WINDOW_SAMPLES or not np.array_equal(window[: len(heard)], heard):
            raise RuntimeError("the stream's VAD lane is out of step with its segmenter")
        probability, state = self._ahead.judge_alone(np.concatenate([context, window]), state)
        with self._lock:
            self._state, self._context = state, window[-CONTEXT_SAMPLES:]
        return probability
