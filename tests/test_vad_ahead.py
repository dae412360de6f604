"""The server's batched VAD (runtime/serving/vad_ahead.py): many streams' windows in one model call, read back by
each stream's segmenter exactly as a detector of its own would have judged them."""
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
    """Three streams fed in uneven chunks, read by their own segmenters one after another: the first read judges
    the other streams' windows too, one call for all three; every stream reads what a detector of its own gives,
    its last part-window judged when its segmenter flushes."""
    streams = [speech[: 16000 * 3 + 100], speech[8000 : 16000 * 5], speech[16000 * 2 :]]
    ahead = VadAhead(SileroVad(vad_model), lanes=4)
    heard = [[] for _ in streams]
    segmenters = []
    for index, (lane, audio) in enumerate(zip(ahead.lanes, streams)):
        lane.reset()
        segmenters.append(VadSegmenter(lambda window, i=index, lane=lane: heard[i].append(lane(window)) or heard[i][-1]))
        for at in range(0, len(audio), 700 + 300 * index):  # chunks that do not fall on window edges
            lane.feed(audio[at : at + 700 + 300 * index])
    for segmenter, audio in zip(segmenters, streams):
        segmenter.push(audio)
        segmenter.flush()
    for index, audio in enumerate(streams):
        assert heard[index] == pytest.approx(alone(vad_model, audio), abs=1e-6)
    assert max(max(h) for h in heard) > 0.5  # speech was heard: the comparison can fail
    whole = [len(a) // WINDOW_SAMPLES for a in streams]
    assert ahead.windows == sum(whole)  # the part-windows were judged alone, and not counted
    assert ahead.calls == max(whole)  # every call judged the next window of every stream that had one


def test_a_stream_fed_while_another_reads(vad_model, speech):
    """A client's thread feeds its stream while the worker reads another's: each still reads its own."""
    ahead = VadAhead(SileroVad(vad_model), lanes=2)
    first, second = speech[: 16000 * 4], speech[16000 : 16000 * 5]
    for lane in ahead.lanes:
        lane.reset()
    ahead.lanes[0].feed(first)
    feeder = threading.Thread(target=lambda: [ahead.lanes[1].feed(second[at : at + 512 * 3])
                                              for at in range(0, len(second), 512 * 3)])
    feeder.start()
    heard_first = [ahead.lanes[0](window) for window in first.reshape(-1, WINDOW_SAMPLES)]
    feeder.join()
    heard_second = [ahead.lanes[1](window) for window in second.reshape(-1, WINDOW_SAMPLES)]
    assert heard_first == pytest.approx(alone(vad_model, first), abs=1e-6)
    assert heard_second == pytest.approx(alone(vad_model, second), abs=1e-6)


def test_a_lane_reset_with_the_queued_audio_starts_there(vad_model, speech):
    """After an error the scheduler gives a stream a new segmenter, and its lane the audio still queued: the lane's
    windows start there, and what was fed before is dropped, even while it is in the model."""
    ahead = VadAhead(SileroVad(vad_model), lanes=1)
    lane = ahead.lanes[0]
    lane.feed(speech[:16000])  # heard by the old segmenter, or lost with its utterance
    rest = speech[16000 + 300 : 16000 * 3]
    lane.reset([rest[:5000], rest[5000:]])
    probabilities = []
    segmenter = VadSegmenter(lambda window: probabilities.append(lane(window)) or probabilities[-1])
    segmenter.push(rest)
    segmenter.flush()
    assert probabilities == pytest.approx(alone(vad_model, rest), abs=1e-6)


def test_a_lane_read_out_of_step_says_so(vad_model, speech):
    """A segmenter that asks for a window its lane was not fed is a scheduler bug: the utterance fails loudly
    instead of taking another window's probability."""
    ahead = VadAhead(SileroVad(vad_model), lanes=1)
    lane = ahead.lanes[0]
    lane.feed(speech[:WINDOW_SAMPLES])
    with pytest.raises(RuntimeError, match="out of step"):
        lane(speech[WINDOW_SAMPLES : 2 * WINDOW_SAMPLES])


def test_a_failing_vad_fails_the_utterance_and_the_lane_starts_again(vad_model, speech):
    """The model failing reaches the stream's segmenter as an error (the scheduler then loses that utterance and
    resets the stream), and the reset lane judges again."""

    class FailsOnce:
        def __init__(self, session):
            self.session, self.failed = session, False

        def run(self, outputs, feeds):
            if not self.failed:
                self.failed = True
                raise RuntimeError("no memory")
            return self.session.run(outputs, feeds)

    ahead = VadAhead(SimpleNamespace(session=FailsOnce(SileroVad(vad_model).session)), lanes=1)
    lane = ahead.lanes[0]
    lane.feed(speech[:WINDOW_SAMPLES])
    with pytest.raises(RuntimeError, match="voice activity detector failed: no memory"):
        lane(speech[:WINDOW_SAMPLES])
    lane.reset([speech[: 4 * WINDOW_SAMPLES]])
    heard = [lane(window) for window in speech[: 4 * WINDOW_SAMPLES].reshape(4, WINDOW_SAMPLES)]
    assert heard == pytest.approx(alone(vad_model, speech[: 4 * WINDOW_SAMPLES]), abs=1e-6)
