"""The server's VAD ahead of its worker (runtime/serving/vad_ahead.py): every stream's windows judged on a thread of
its own, many streams in one model call, read back by each stream's segmenter exactly as a detector of its own
would have judged them."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from edge_asr.models.clips import JFK
from edge_asr.runtime.audio import load_audio
from edge_asr.runtime.serving.vad_ahead import VadAhead
from edge_asr.runtime.streaming.segmenter import VadSegmenter
from edge_asr.runtime.streaming.vad import WINDOW_SAMPLES, SileroVad


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(JFK)


def alone(vad_model, audio: np.ndarray) -> list[float]:
    """The probabilities a stream's own detector gives, its last part-window padded with zeros (the segmenter's
    flush)."""
    vad = SileroVad(vad_model)
    padded = np.concatenate([audio, np.zeros(-len(audio) % WINDOW_SAMPLES, np.float32)])
    return [vad(window) for window in padded.reshape(-1, WINDOW_SAMPLES)]


def test_streams_judged_together_read_what_each_would_alone(vad_model, speech):
    """Three streams fed in uneven chunks from three threads, judged in batches, each read by its own segmenter;
    the last, a part of a window, is judged when the segmenter flushes."""
    streams = [speech[: 16000 * 3 + 100], speech[8000 : 16000 * 5], speech[16000 * 2 :]]
    ahead = VadAhead(SileroVad(vad_model), lanes=4)
    ahead.start()
    heard = [[] for _ in streams]

    def run(index: int) -> None:
        lane = ahead.lanes[index]
        lane.reset()
        segmenter = VadSegmenter(lambda window: heard[index].append(lane(window)) or heard[index][-1])
        audio = streams[index]
        for at in range(0, len(audio), 700 + 300 * index):  # chunks that do not fall on window edges
            chunk = audio[at : at + 700 + 300 * index]
            lane.feed(chunk)
            segmenter.push(chunk)
        segmenter.flush()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(streams))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ahead.stop()
    for index, audio in enumerate(streams):
        assert heard[index] == pytest.approx(alone(vad_model, audio), abs=1e-6)
    assert max(max(h) for h in heard) > 0.5  # speech was heard: the comparison can fail
    assert ahead.windows == sum(len(a) // WINDOW_SAMPLES for a in streams)  # the part-windows were judged in place
    assert ahead.calls < ahead.windows  # some calls carried more than one stream's window


def test_a_lane_reset_with_the_queued_audio_starts_there(vad_model, speech):
    """After an error the scheduler gives a stream a new segmenter, and its lane the audio still queued: the lane's
    windows start there, and what was fed before is dropped, even while it is in the model."""
    ahead = VadAhead(SileroVad(vad_model), lanes=1)
    ahead.start()
    lane = ahead.lanes[0]
    lane.feed(speech[:16000])  # heard by the old segmenter, or lost with its utterance
    rest = speech[16000 + 300 : 16000 * 3]
    lane.reset([rest[:5000], rest[5000:]])
    probabilities = []
    segmenter = VadSegmenter(lambda window: probabilities.append(lane(window)) or probabilities[-1])
    segmenter.push(rest)
    segmenter.flush()
    ahead.stop()
    assert probabilities == pytest.approx(alone(vad_model, rest), abs=1e-6)


def test_a_lane_read_out_of_step_says_so(vad_model, speech):
    """A segmenter that asks for a window its lane was not fed is a scheduler bug: the utterance fails loudly
    instead of taking another window's probability."""
    ahead = VadAhead(SileroVad(vad_model), lanes=1)
    ahead.start()
    lane = ahead.lanes[0]
    lane.feed(speech[:WINDOW_SAMPLES])
    with pytest.raises(RuntimeError, match="out of step"):
        lane(speech[WINDOW_SAMPLES : 2 * WINDOW_SAMPLES])
    ahead.stop()


def test_a_failing_vad_fails_the_utterance_and_the_lane_starts_again(vad_model, speech):
    """The model failing on the thread reaches the stream's segmenter as an error (the scheduler then loses that
    utterance and resets the stream); the thread goes on, and the reset lane judges again."""

    class FailsOnce:
        def __init__(self, session):
            self.session, self.failed = session, False

        def run(self, outputs, feeds):
            if not self.failed:
                self.failed = True
                raise RuntimeError("no memory")
            return self.session.run(outputs, feeds)

    ahead = VadAhead(SimpleNamespace(session=FailsOnce(SileroVad(vad_model).session)), lanes=1)
    ahead.start()
    lane = ahead.lanes[0]
    lane.feed(speech[:WINDOW_SAMPLES])
    with pytest.raises(RuntimeError, match="voice activity detector failed: no memory"):
        lane(speech[:WINDOW_SAMPLES])
    lane.reset([speech[: 4 * WINDOW_SAMPLES]])
    heard = [lane(window) for window in speech[: 4 * WINDOW_SAMPLES].reshape(4, WINDOW_SAMPLES)]
    ahead.stop()
    assert heard == pytest.approx(alone(vad_model, speech[: 4 * WINDOW_SAMPLES]), abs=1e-6)
