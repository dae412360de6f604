"""The PyTorch engine: cached decoding equals the model's plain forward pass, a pool steps rows of different
audio lengths together with each row's own logits, the engine loop drives it, and a `--target cuda`
bundle loads (on the CPU here; the CUDA half runs where a GPU is, through benchmarks/gpu_check.py)."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from edge_asr.models.whisper_torch import WhisperModel
from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.engines.torch_engine import GRAPH_BATCHES, TorchEngine
from edge_asr.runtime.serving.engine_loop import EngineLoop, Job

from test_engine_loop import decoding

from conftest import compiled_bundle, run_cli, save_tiny_whisper

DIMS = ModelDims(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=2, n_vocab=64,
                 n_text_ctx=24, n_text_state=32, n_text_head=2, n_text_layer=2)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.py runs it)")


def model(seed: int = 0) -> WhisperModel:
    torch.manual_seed(seed)
    return WhisperModel(DIMS).eval()


def mel(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 80, int(seconds * 100))).astype(np.float32)


def decode_alone(engine: TorchEngine, window: np.ndarray, prompt: list[int], steps: list[int]) -> list[np.ndarray]:
    """The logits of each step of one decoding: a prompt pass, then one token at a time."""
    audio, cache = engine.encode(window), engine.new_cache(1)
    engine.decode(np.array([prompt]), np.zeros(1, np.int64), cache, audio, np.array([[len(prompt) - 1]]))
    return [engine.decode(np.array([[token]]), np.array([len(prompt) + i]), cache, audio, np.zeros((1, 1), np.int64))[0, 0]
            for i, token in enumerate(steps)]


def test_cached_decoding_equals_the_plain_forward_pass():
    m = model()
    engine = TorchEngine(m)
    window = mel(4.0, 1)
    prompt, steps = [1, 2, 3], [7, 8, 9, 10]
    got = decode_alone(engine, window, prompt, steps)
    with torch.no_grad():
        want = m.logits(torch.from_numpy(window), torch.tensor([prompt + steps]))[0, len(prompt) :].numpy()
    # Step i feeds steps[i] at position len(prompt) + i: its logits are that position's.
    assert np.abs(np.stack(got) - want).max() < 1e-4


def test_a_pool_steps_rows_of_different_audio_lengths_with_their_own_logits():
    engine = TorchEngine(model())
    jobs = [(mel(11.0, 1), [1, 2], [5, 6, 7]), (mel(3.0, 2), [1, 2, 3], [8, 9, 10]), (mel(6.0, 3), [4], [11, 12, 13])]
    want = [decode_alone(engine, window, prompt, steps) for window, prompt, steps in jobs]
    contexts = [engine.encode(window) for window, _, _ in jobs]
    pool = engine.new_pool(contexts[0], capacity=4)
    assert {engine.pool_key(c) for c in contexts} == {None}  # one pool for every length
    for slot, ((_, prompt, _), audio) in enumerate(zip(jobs, contexts)):
        cache = engine.new_cache(1)
        engine.decode(np.array([prompt]), np.zeros(1, np.int64), cache, audio, np.array([[len(prompt) - 1]]))
        pool.admit(slice(slot, slot + 1), cache, audio, len(prompt))
    for step in range(3):
        tokens = np.array([steps[step] for _, _, steps in jobs])
        offsets = np.array([len(prompt) + step for _, prompt, _ in jobs])
        logits = pool.step(tokens, offsets, 0, 3)
        for row in range(3):
            assert np.abs(logits[row] - want[row][step]).max() < 1e-4


def test_the_engine_loop_drives_the_torch_pool():
    engine = TorchEngine(model())
    jobs = [(mel(9.0, 4), [1, 2], [5, 6, 7, 8]), (mel(2.0, 5), [3], [9, 10, 11]), (mel(5.0, 6), [1, 4], [12, 13])]
    want = [decode_alone(engine, window, prompt, steps) for window, prompt, steps in jobs]
    loop = EngineLoop(engine)
    running = [Job(decoding(engine, window, prompt, steps)) for window, prompt, steps in jobs]
    loop.run(running)
    assert loop.pools.steps == 4 and len(loop.pools.pools) == 1  # every length in one pool: 4 steps, not 9
    for job, expected in zip(running, want):
        assert job.error is None and all(np.abs(g - w).max() < 1e-4 for g, w in zip(job.result, expected))


@pytest.mark.slow
def test_cuda_bundle_runs_on_the_cpu_when_told_and_refuses_clearly_without_a_gpu(tmp_path_factory):
    checkpoint = save_tiny_whisper(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    bundle = compiled_bundle(tmp_path_factory, "cuda", "--model", checkpoint, "--target", "cuda")
    assert (bundle / "model.pt").is_file() and not (bundle / "encoder.onnx").exists()
    done = run_cli("transcribe", "--bundle", bundle, "tests/data/jfk.wav", env={"EDGE_ASR_DEVICE": "cpu"})
    assert done.returncode == 0, done.stderr
    if not torch.cuda.is_available():
        refused = run_cli("transcribe", "--bundle", bundle, "tests/data/jfk.wav")
        assert refused.returncode == 1 and "sees none" in refused.stderr and "Traceback" not in refused.stderr


@CUDA
def test_cuda_fp16_logits_follow_the_cpu_fp32_ones():
    cpu, gpu = TorchEngine(model()), TorchEngine(model(), "cuda", torch.float16)
    window, prompt, steps = mel(7.0, 7), [1, 2, 3], [5, 6, 7]
    want, got = decode_alone(cpu, window, prompt, steps), decode_alone(gpu, window, prompt, steps)
    for g, w in zip(got, want):
        assert np.abs(g - w).max() < 2e-2 * max(1.0, np.abs(w).max())


@CUDA
def test_cuda_graph_replay_equals_eager_pool_steps():
    """A step of three rows runs the 4-row graph (slot 3 free, riding along) and gives the eager logits."""
    engine = TorchEngine(model(), "cuda", torch.float16)
    audio = engine.encode(mel(5.0, 8))
    results = {}
    for graphs in (True, False):
        engine.graphs = graphs
        pool = engine.new_pool(audio, capacity=8)
        for slot in range(3):
            cache = engine.new_cache(1)
            engine.decode(np.array([[1, 2]]), np.zeros(1, np.int64), cache, audio, np.array([[1]]))
            pool.admit(slice(slot, slot + 1), cache, audio, 2)
        first, stop = pool.span(0, 3)
        assert (first, stop) == ((0, 4) if graphs else (0, 3))
        out = []
        for step in range(3):
            tokens = np.array([5 + step] * (stop - first))
            offsets = np.array([2 + step] * 3 + [0] * (stop - first - 3))
            out.append(pool.step(tokens, offsets, first, stop)[:3])
        results[graphs] = out
    assert 4 in GRAPH_BATCHES
    for replayed, eager in zip(results[True], results[False]):
        assert np.abs(replayed - eager).max() < 1e-2
