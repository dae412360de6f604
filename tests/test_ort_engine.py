"""The onnxruntime engine under decoding paths with several rows: sampling groups and window batches."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edge_asr.models.clips import JFK_TEXT
from edge_asr.models.wer import normalise
from edge_asr.runtime.audio import load_audio
from edge_asr.runtime.decoding.decode import decode_window
from edge_asr.runtime.decoding.options import DecodingOptions
from edge_asr.runtime.mel import N_FRAMES, N_SAMPLES
from edge_asr.runtime.transcriber import Transcriber


@pytest.fixture(scope="module")
def transcriber(tiny_bundle):
    return Transcriber(tiny_bundle, threads=2)


@pytest.fixture(scope="module")
def jfk_mel(transcriber, jfk_wav):
    return transcriber.frontend(load_audio(jfk_wav), padding=N_SAMPLES)[:, :N_FRAMES]


def test_near_zero_temperature_sampling_of_five_rows_equals_greedy(transcriber, jfk_wav):
    """best_of=5 decodes five rows sharing one cache: each row must see its own sampled tokens."""
    greedy = transcriber.transcribe(jfk_wav).text
    sampled = transcriber.transcribe(jfk_wav, transcriber.options(temperatures=(1e-3,), best_of=5)).text
    assert normalise(greedy) == normalise(JFK_TEXT)
    assert sampled == greedy


class _Copying:
    """The engine, made to copy a window's audio context for each of its rows instead of broadcasting it."""

    broadcasts_audio = False

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)


@pytest.mark.parametrize("temperature, options", [(0.0, {"beam_size": 5}), (0.7, {"best_of": 5})])
def test_a_windows_rows_read_one_broadcast_audio_context_as_they_read_copies(transcriber, jfk_mel, temperature,
                                                                            options):
    """Beams and samples of one window share its audio context (engines/base.py, broadcasts_audio): the same
    results as a copy per row, alone and through the serving loop's pools."""
    from edge_asr.runtime.decoding.decode import decode_window_steps
    from edge_asr.runtime.serving.engine_loop import EngineLoop, Job

    engine, tokenizer = transcriber.engine, transcriber.tokenizer
    assert engine.broadcasts_audio
    audio = engine.encode(jfk_mel[None])
    decoding = DecodingOptions(language="en", **options)
    runs = {}
    for name, used in (("broadcast", engine), ("copies", _Copying(engine))):
        alone = decode_window(used, tokenizer, audio, decoding, temperature=temperature,
                              rng=np.random.default_rng(3))
        job = Job(decode_window_steps(used, tokenizer, audio, decoding, temperature=temperature,
                                      rng=np.random.default_rng(3)))
        loop = EngineLoop(used)
        loop.run([job])
        assert job.error is None and loop.pools.steps > 0
        runs[name] = (alone, job.result)
    assert runs["broadcast"] == runs["copies"]
    assert normalise(runs["broadcast"][0][0].text) == normalise(JFK_TEXT) or temperature > 0


def test_a_batch_of_windows_decodes_like_each_window_alone(transcriber, jfk_mel, librivox_dir):
    audio = load_audio(next(librivox_dir.glob("*0930.wav")))
    other = transcriber.frontend(audio, padding=N_SAMPLES)[:, :N_FRAMES]
    engine, tokenizer, options = transcriber.engine, transcriber.tokenizer, DecodingOptions(language="en")
    alone = [decode_window(engine, tokenizer, engine.encode(m[None]), options)[0].text for m in (jfk_mel, other)]
    together = decode_window(engine, tokenizer, engine.encode(np.stack([jfk_mel, other])), options)
    assert [r.text for r in together] == alone
    assert normalise(alone[1]) == "he might even have been made amiable himself"


def test_a_second_thread_count_in_one_process_is_refused(tiny_bundle):
    """onnxruntime sizes one pool for every engine of a process; an engine asking for another size was silently
    given the first one's. In a process of its own, as the pool is the process's."""
    script = (f"from edge_asr.runtime import Transcriber, EdgeAsrError\nTranscriber({str(tiny_bundle)!r}, threads=1)\n"
              f"Transcriber({str(tiny_bundle)!r}, threads=1)\n"
              f"try:\n    Transcriber({str(tiny_bundle)!r}, threads=2)\nexcept EdgeAsrError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "first engine sized at 1; an engine asking for 2 threads cannot be made" in out.stdout
