"""The engine loop: the decoder steps of several decodings, run as generators of engine calls, share one
pool step each and give every decoding the logits it gets alone, while decodings join and leave between
steps; encoder windows of one shape share a call; an engine error reaches the decodings it hit.

Exactness is checked in fp32. An int8 bundle quantizes each MatMul's activations with one scale for
the whole batch, so rows that share a step nudge each other's logits (up to ~0.8 here); for int8 the
test asks for the same words instead.
"""
from __future__ import annotations

import numpy as np
import pytest

from edge_asr.models.wer import normalise
from edge_asr.runtime.audio import load_audio
from edge_asr.runtime.decoding.calls import Decode, Encode
from edge_asr.runtime.decoding.transcribe import transcribe_windows
from edge_asr.runtime.mel import HOP_LENGTH, N_SAMPLES, LogMelFrontend
from edge_asr.runtime.serving.engine_loop import EngineLoop, Job
from edge_asr.runtime.transcriber import Transcriber

TOL = 1e-3  # fp32: only the order of float operations differs with the batch


@pytest.fixture(scope="module")
def engine(tiny_fp32_bundle):
    transcriber = Transcriber(tiny_fp32_bundle, threads=2)
    return transcriber.engine, transcriber.tokenizer


def window(engine, audio: np.ndarray, seconds: float) -> np.ndarray:
    return LogMelFrontend(engine.dims.n_mels)(audio[: round(seconds * 16000)], padding=N_SAMPLES)[None, :, :1500]


def decoding(engine, mel: np.ndarray, prompt: list[int], steps: list[int]):
    """A decoding as a generator of engine calls: encode, a prompt pass, then one token at a time; it
    returns each step's logits."""
    audio = yield Encode(mel)
    cache = engine.new_cache(1)
    yield Decode(np.array([prompt]), np.zeros(1, np.int64), cache, audio, np.array([[len(prompt) - 1]]))
    out = []
    for i, token in enumerate(steps):
        logits = yield Decode(np.array([[token]]), np.array([len(prompt) + i]), cache, audio, np.zeros((1, 1), np.int64))
        out.append(logits[0, 0])
    return out


def alone(engine, mel, prompt, steps) -> list[np.ndarray]:
    loop = EngineLoop(engine)
    job = Job(decoding(engine, mel, prompt, steps))
    loop.run([job])
    return job.result


@pytest.mark.slow
def test_decodings_share_steps_and_windows_and_equal_decoding_alone(engine, jfk_wav):
    raw, tokenizer = engine
    audio = load_audio(jfk_wav)
    prompt = list(tokenizer.sot_sequence("en", "transcribe"))
    specs = [(window(raw, audio, 11.0), [400, 523, 616]), (window(raw, audio, 11.0), [1002, 11, 345, 50]),
             (window(raw, audio, 3.0), [11, 11])]
    want = [alone(raw, mel, prompt, steps) for mel, steps in specs]
    loop = EngineLoop(raw)
    jobs = [Job(decoding(raw, mel, prompt, steps)) for mel, steps in specs]
    loop.run(jobs)
    assert all(job.error is None for job in jobs)
    assert loop.stats.encode_calls == 1 and loop.stats.encode_rows == 3  # one shape: one encoder call
    assert loop.pools.steps < sum(len(steps) for _, steps in specs)  # steps were shared
    assert loop.pools.rows_asked == sum(len(steps) for _, steps in specs)
    for job, expected in zip(jobs, want):
        assert all(np.abs(g - w).max() < TOL for g, w in zip(job.result, expected))


def test_rows_join_and_leave_between_steps(engine, jfk_wav):
    """A's decoding ends and its slot frees; C, started later, takes it, and B keeps its cache throughout."""
    raw, tokenizer = engine
    audio = load_audio(jfk_wav)
    prompt = list(tokenizer.sot_sequence("en", "transcribe"))
    a, b, c = (window(raw, audio, 11.0) for _ in range(3))
    specs = {"a": (a, [400]), "b": (b, [400, 523, 616, 11, 11, 11, 11]), "c": (c, [400, 523])}
    want = {name: alone(raw, mel, prompt, steps) for name, (mel, steps) in specs.items()}
    loop = EngineLoop(raw)
    jobs = {name: Job(decoding(raw, mel, prompt, steps)) for name, (mel, steps) in specs.items() if name != "c"}
    while not jobs["a"].done:
        loop.round(list(jobs.values()))
    jobs["c"] = Job(decoding(raw, *specs["c"][:1], prompt, specs["c"][1]))
    seen = []  # the slots held after each round: a decoding's cache (and its slots) goes when it ends
    while not all(job.done for job in jobs.values()):
        loop.round(list(jobs.values()))
        seen.append(sorted(m.start for p in loop.pools.pools for m in p.members.values()))
    (pool,) = loop.pools.pools
    assert [0, 1] in seen  # C took A's freed slot 0 (the lowest free one), beside B at 1
    for name, job in jobs.items():
        assert all(np.abs(g - w).max() < TOL for g, w in zip(job.result, want[name]))
    del jobs, pool  # the decodings end: their slots free, the empty pool is kept for the next ones
    loop.pools.forget_gone()
    assert [len(p.members) for p in loop.pools.pools] == [0]


def test_int8_transcripts_through_the_loop_equal_direct_ones(tiny_bundle, jfk_wav):
    transcriber = Transcriber(tiny_bundle, threads=2)
    audio = load_audio(jfk_wav)
    # Whole phrases: a cut inside a word ("... what your coun") is decoded differently from run to run
    # once int8 rows share activation scales ("you are coming" / "you are calling").
    pieces = [audio, audio[3 * 16000 :], audio]
    direct = [transcriber.transcribe(piece).text for piece in pieces]
    frontend, options = transcriber.frontend, transcriber.options()
    jobs = [Job(transcribe_windows(transcriber.engine, transcriber.tokenizer,
                                   frontend(piece, padding=N_SAMPLES)[:, : len(piece) // HOP_LENGTH], options))
            for piece in pieces]
    EngineLoop(transcriber.engine).run(jobs)
    texts = ["".join(s.text for w in job.result for s in w.segments) for job in jobs]
    assert [normalise(t) for t in texts] == [normalise(t) for t in direct]  # the words; punctuation may move


class FailsOnce:
    """The engine, whose first batched step raises."""

    def __init__(self, engine):
        self.engine, self.dims, self.failed = engine, engine.dims, False

    def new_pool(self, audio, capacity):
        pool = self.engine.new_pool(audio, capacity)
        step = pool.step

        def failing(*args):
            if not self.failed:
                self.failed = True
                raise RuntimeError("device lost")
            return step(*args)

        pool.step = failing
        return pool

    def __getattr__(self, name):
        return getattr(self.engine, name)


def test_an_engine_error_reaches_the_decodings_it_hit_and_the_loop_goes_on(engine, jfk_wav):
    raw, tokenizer = engine
    prompt = list(tokenizer.sot_sequence("en", "transcribe"))
    mel = window(raw, load_audio(jfk_wav), 11.0)
    loop = EngineLoop(FailsOnce(raw))
    failed = [Job(decoding(raw, mel, prompt, [400, 523])) for _ in range(2)]
    loop.run(failed)
    assert all(isinstance(job.error, RuntimeError) and "device lost" in str(job.error) for job in failed)
    later = Job(decoding(raw, mel, prompt, [400, 523]))
    loop.run([later])
    expected = alone(raw, mel, prompt, [400, 523])
    assert later.error is None and all(np.abs(g - w).max() < TOL for g, w in zip(later.result, expected))


class WithoutPools:
    """An engine that keeps no decoder pools (as TVM and TensorRT engines do)."""

    def __init__(self, engine):
        self.engine, self.dims = engine, engine.dims

    def encode(self, mel):
        return self.engine.encode(mel)

    def new_cache(self, batch):
        return self.engine.new_cache(batch)

    def decode(self, *args):
        return self.engine.decode(*args)


def test_an_engine_without_pools_steps_each_decoding_alone(engine, jfk_wav):
    raw, tokenizer = engine
    prompt = list(tokenizer.sot_sequence("en", "transcribe"))
    mel = window(raw, load_audio(jfk_wav), 6.0)
    loop = EngineLoop(WithoutPools(raw))
    jobs = [Job(decoding(raw, mel, prompt, [400, 523])) for _ in range(2)]
    loop.run(jobs)
    want = alone(raw, mel, prompt, [400, 523])
    assert loop.pools is None and loop.stats.encode_calls == 1
    assert all(np.abs(g - w).max() < TOL for job in jobs for g, w in zip(job.result, want))
