"""The step batcher: decoder steps of several threads in one engine call give each thread the logits
it would get alone, while rows join and leave between steps.

Exactness is checked in fp32. An int8 bundle quantizes each MatMul's activations with one scale for
the whole batch, so rows that share a step nudge each other's logits (up to ~0.8 here); for int8 the
test asks for the same words instead.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_asr.benchmarks.wer import normalise
from edge_asr.runtime.audio import load_audio
from edge_asr.runtime.mel import N_SAMPLES, LogMelFrontend
from edge_asr.runtime.serving.step_batcher import StepBatcher
from edge_asr.runtime.transcriber import Transcriber

TOL = 1e-3  # fp32: only the order of float operations differs with the batch


@pytest.fixture(scope="module")
def engine(tiny_fp32_bundle):
    transcriber = Transcriber(tiny_fp32_bundle, threads=2)
    return transcriber.engine, transcriber.tokenizer


class PoolWith:
    """An engine's decoder pool whose steps first call ``before()``."""

    def __init__(self, pool, before):
        self.pool, self.before, self.capacity = pool, before, pool.capacity

    def step(self, *args):
        self.before()
        return self.pool.step(*args)

    def __getattr__(self, name):
        return getattr(self.pool, name)


class Slowed:
    """The engine with 50 ms more a step: while one step runs, the other threads' steps queue up, so
    they meet in the next one however the threads are scheduled."""

    def __init__(self, engine):
        self.engine, self.dims = engine, engine.dims

    def new_pool(self, audio, capacity):
        return PoolWith(self.engine.new_pool(audio, capacity), lambda: time.sleep(0.05))

    def __getattr__(self, name):
        return getattr(self.engine, name)


def run_in_threads(run, count: int) -> None:
    """run(0) .. run(count - 1), each on a thread of its own, all at once."""
    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def encoded(engine, audio: np.ndarray, seconds: float):
    mel = LogMelFrontend(engine.dims.n_mels)(audio[: round(seconds * 16000)], padding=N_SAMPLES)[:, :1500]
    return engine.encode(mel[None])


def prompted(engine, tokenizer, audio_context, prompt: list[int]):
    """A cache after the prompt pass, as decode_window makes it, and the next position."""
    cache = engine.new_cache(1)
    tokens = np.array([prompt], np.int64)
    engine.decode(tokens, np.zeros(1, np.int64), cache, audio_context, np.array([[len(prompt) - 1]]))
    return cache, len(prompt)


def alone(engine, tokenizer, audio_context, prompt, steps: list[int]) -> list[np.ndarray]:
    cache, offset = prompted(engine, tokenizer, audio_context, prompt)
    out = []
    for i, token in enumerate(steps):
        out.append(engine.decode(np.array([[token]]), np.array([offset + i]), cache, audio_context,
                                 np.zeros((1, 1), np.int64))[0, 0])
    return out


def test_concurrent_steps_share_calls_and_equal_single_decoding(engine, jfk_wav):
    raw, tokenizer = engine
    got, want = concurrent_and_alone(raw, tokenizer, jfk_wav)
    for g, w in zip(got, want):
        assert np.abs(g - w).max() < TOL


def test_int8_transcripts_through_the_batcher_equal_direct_ones(tiny_bundle, jfk_wav):
    transcriber = Transcriber(tiny_bundle, threads=2)
    audio = load_audio(jfk_wav)
    # Whole phrases: a cut inside a word ("... what your coun") is decoded differently from run to run
    # once int8 rows share activation scales ("you are coming" / "you are calling").
    pieces = [audio, audio[3 * 16000 :], audio]
    direct = [transcriber.transcribe(piece).text for piece in pieces]
    transcriber.engine = batcher = StepBatcher(transcriber.engine)
    texts = [None] * len(pieces)

    def run(i):
        texts[i] = transcriber.transcribe(pieces[i]).text

    run_in_threads(run, len(pieces))
    batcher.close()
    assert [normalise(t) for t in texts] == [normalise(t) for t in direct]  # the words; punctuation may move


def concurrent_and_alone(raw, tokenizer, jfk_wav) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each step's logits of three decodings run at once through a StepBatcher, and run alone."""
    audio = load_audio(jfk_wav)
    prompt = list(tokenizer.sot_sequence("en", "transcribe"))
    jobs = [(encoded(raw, audio, s), tokens) for s, tokens in
            [(11.0, [400, 523, 616]), (6.0, [1002, 11, 345, 50]), (3.0, [11, 11])]]
    expected = [alone(raw, tokenizer, ctx, prompt, steps) for ctx, steps in jobs]

    batcher = StepBatcher(Slowed(raw))
    results, start = [None] * len(jobs), threading.Barrier(len(jobs))

    def run(i):
        ctx, steps = jobs[i]
        cache, offset = prompted(batcher, tokenizer, ctx, prompt)
        start.wait()
        results[i] = [batcher.decode(np.array([[t]]), np.array([offset + k]), cache, ctx,
                                     np.zeros((1, 1), np.int64))[0, 0] for k, t in enumerate(steps)]

    run_in_threads(run, len(jobs))
    batcher.close()
    assert [len(r) for r in results] == [len(e) for e in expected]
    assert batcher.steps < sum(len(steps) for _, steps in jobs)  # some steps really were shared
    assert batcher.rows_stepped >= sum(len(steps) for _, steps in jobs)
    return [g for r in results for g in r], [w for e in expected for w in e]


def test_rows_join_and_leave_between_steps(engine, jfk_wav):
    """A's rows leave when its cache is dropped; C takes the freed slots and still gets its own logits,
    while B, idle between its steps, keeps its cache intact."""
    raw, tokenizer = engine
    audio = load_audio(jfk_wav)
    prompt = list(tokenizer.sot_sequence("en", "transcribe"))
    a, b, c = (encoded(raw, audio, s) for s in (11.0, 7.0, 4.0))
    batcher = StepBatcher(raw, wait_s=0.0)
    zero = np.zeros((1, 1), np.int64)

    cache_a, offset = prompted(batcher, tokenizer, a, prompt)
    batcher.decode(np.array([[400]]), np.array([offset]), cache_a, a, zero)
    cache_b, _ = prompted(batcher, tokenizer, b, prompt)
    b_first = batcher.decode(np.array([[400]]), np.array([offset]), cache_b, b, zero)[0, 0]
    del cache_a  # A's decoding ends: its slot is free
    cache_c, _ = prompted(batcher, tokenizer, c, prompt)
    c_steps = [batcher.decode(np.array([[t]]), np.array([offset + k]), cache_c, c, zero)[0, 0]
               for k, t in enumerate([400, 523])]
    b_second = batcher.decode(np.array([[523]]), np.array([offset + 1]), cache_b, b, zero)[0, 0]
    (pool,) = batcher._pools
    assert sorted(m.start for m in pool.members.values()) == [0, 1]  # C took A's slot
    del cache_b, cache_c  # the last decodings end: their pool goes too
    with batcher._changed:
        batcher._forget_gone()
        assert batcher._pools == []
    batcher.close()

    want_b = alone(raw, tokenizer, b, prompt, [400, 523])
    want_c = alone(raw, tokenizer, c, prompt, [400, 523])
    assert np.abs(b_first - want_b[0]).max() < TOL and np.abs(b_second - want_b[1]).max() < TOL
    assert all(np.abs(g - w).max() < TOL for g, w in zip(c_steps, want_c))


class FailsOnce:
    """The engine, whose first batched step raises."""

    def __init__(self, engine):
        self.engine, self.dims, self.failed = engine, engine.dims, False

    def new_pool(self, audio, capacity):
        return PoolWith(self.engine.new_pool(audio, capacity), self._fail_once)

    def _fail_once(self):
        if not self.failed:
            self.failed = True
            raise RuntimeError("device lost")

    def __getattr__(self, name):
        return getattr(self.engine, name)


def test_an_engine_error_reaches_the_caller_and_the_batcher_goes_on(engine, jfk_wav):
    raw, tokenizer = engine
    context = encoded(raw, load_audio(jfk_wav), 11.0)
    prompt = list(tokenizer.sot_sequence("en", "transcribe"))
    cache, offset = prompted(raw, tokenizer, context, prompt)
    batcher = StepBatcher(FailsOnce(raw))
    step = (np.array([[400]]), np.array([offset]), cache, context, np.zeros((1, 1), np.int64))
    with pytest.raises(RuntimeError, match="device lost"):
        batcher.decode(*step)
    assert batcher.decode(*step).shape == (1, 1, raw.dims.n_vocab)
    batcher.close()
