"""Reader for Hugging Face Whisper directories, the way distilled students such as distil-whisper ship.

A directory holds config.json, model.safetensors (or shards listed in model.safetensors.index.json)
and tokenizer.json. The safetensors files are parsed here (u64 header length, a JSON header of
name -> dtype, shape, byte range, then the raw little-endian data) rather than with the safetensors
package: numpy has no bfloat16, and the runtime install, which locates models, has no safetensors.
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np

from edge_asr.models.checkpoint import Checkpoint, read_json, sinusoids, tokenizer_beside
from edge_asr.runtime.file_stamps import sha256_of
from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.errors import ModelSourceError

# safetensors dtype -> how its bytes are read; bf16 comes in as raw bits and is widened in _tensor.
FLOAT_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}

# Hugging Face module name -> openai-whisper module name, per layer.
LAYER_NAMES = {
    "self_attn.q_proj": "attn.query",
    "self_attn.k_proj": "attn.key",
    "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query",
    "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value",
    "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}
TOP_NAMES = {
    "encoder.conv1": "encoder.conv1",
    "encoder.conv2": "encoder.conv2",
    "encoder.layer_norm": "encoder.ln_post",
    "decoder.layer_norm": "decoder.ln",
    "decoder.embed_tokens": "decoder.token_embedding",
}
POSITIONS = {
    "encoder.embed_positions.weight": "encoder.positional_embedding",
    "decoder.embed_positions.weight": "decoder.positional_embedding",
}
# openai-whisper field -> Hugging Face WhisperConfig key
CONFIG_KEYS = {
    "n_mels": "num_mel_bins",
    "n_audio_ctx": "max_source_positions",
    "n_audio_state": "d_model",
    "n_audio_head": "encoder_attention_heads",
    "n_audio_layer": "encoder_layers",
    "n_vocab": "vocab_size",
    "n_text_ctx": "max_target_positions",
    "n_text_state": "d_model",
    "n_text_head": "decoder_attention_heads",
    "n_text_layer": "decoder_layers",
}


def weight_files(path: Path) -> list[Path]:
    """model.safetensors, or the shards its index names, in order."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [path / name for name in sorted(set(read_json(index).get("weight_map", {}).values()))]
    single = path / "model.safetensors"
    if not single.is_file():
        raise ModelSourceError(f"{path} holds neither model.safetensors nor model.safetensors.index.json.")
    return [single]


def read_safetensors(file: Path) -> dict[str, np.ndarray]:
    """The floating-point tensors of one safetensors file, as float32 (fp16 and bf16 upcast)."""
    if not file.is_file():
        raise ModelSourceError(f"{file} is missing.")
    data = file.read_bytes()
    try:
        (header_len,) = struct.unpack_from("<Q", data)
        header = json.loads(data[8 : 8 + header_len])
        header.pop("__metadata__", None)
        tensors = {name: _tensor(data, 8 + header_len, info) for name, info in header.items()
                   if info["dtype"] in FLOAT_DTYPES}
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        raise ModelSourceError(f"{file} is truncated or corrupt (not a readable safetensors file).") from None
    return tensors


def _tensor(data: bytes, start: int, info: dict) -> np.ndarray:
    dtype = np.dtype(FLOAT_DTYPES[info["dtype"]])
    begin, end = info["data_offsets"]
    count = int(np.prod(info["shape"]))
    if end - begin != count * dtype.itemsize or start + end > len(data):
        raise ValueError("byte range does not fit the shape or the file")
    raw = np.frombuffer(data, dtype=dtype, count=count, offset=start + begin)
    if info["dtype"] == "BF16":
        raw = (raw.astype(np.uint32) << 16).view(np.float32)  # bfloat16 is the upper half of a float32
    return raw.astype(np.float32).reshape(info["shape"])


def to_openai_names(hf: dict[str, np.ndarray], origin: str) -> dict[str, np.ndarray]:
    """Rename to openai-whisper's state dict; proj_out must be tied to the token embedding."""
    hf = {name.removeprefix("model."): value for name, value in hf.items()}
    proj_out = hf.pop("proj_out.weight", None)
    if proj_out is not None and not np.array_equal(proj_out, hf.get("decoder.embed_tokens.weight")):
        raise ModelSourceError(f"{origin} has an output projection not tied to its token embedding, "
                               "which Whisper models (and this reader) do not support.")
    tensors = {}
    for name, value in hf.items():
        module, _, param = name.rpartition(".")
        layer = re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.(.+)", module)
        if name in POSITIONS:
            tensors[POSITIONS[name]] = value
        elif layer and layer[3] in LAYER_NAMES:
            tensors[f"{layer[1]}.blocks.{layer[2]}.{LAYER_NAMES[layer[3]]}.{param}"] = value
        elif module in TOP_NAMES:
            tensors[f"{TOP_NAMES[module]}.{param}"] = value
        else:
            raise ModelSourceError(f"{origin} has a tensor {name} that is not part of a Whisper model.")
    return tensors


def dims_of(config: dict, origin: str) -> ModelDims:
    try:
        return ModelDims(**{field: int(config[key]) for field, key in CONFIG_KEYS.items()})
    except KeyError as missing:
        raise ModelSourceError(f"{origin} lacks the Whisper setting {missing}.") from None


def read_huggingface(path: Path, name: str | None = None) -> Checkpoint:
    """A Hugging Face Whisper directory (config.json, safetensors, tokenizer.json) as a Checkpoint."""
    path = Path(path)
    config = read_json(path / "config.json")
    dims = dims_of(config, str(path / "config.json"))
    files = weight_files(path)
    origin = str(files[0]) if len(files) == 1 else f"{path} ({len(files)} shards)"
    tensors = to_openai_names({k: v for f in files for k, v in read_safetensors(f).items()}, origin)
    tensors.setdefault("encoder.positional_embedding", sinusoids(dims.n_audio_ctx, dims.n_audio_state))
    embedding = tensors.get("decoder.token_embedding.weight")
    if embedding is None or embedding.shape != (dims.n_vocab, dims.n_text_state):
        raise ModelSourceError(f"{origin} has no token embedding of shape ({dims.n_vocab}, {dims.n_text_state}) "
                               "as its config.json states.")
    tokenizer = tokenizer_beside(path, "config.json")
    # Newer transformers versions keep generation settings in generation_config.json.
    generation = {**config, **read_json(path / "generation_config.json", required=False)}
    return Checkpoint(
        name=name or path.name,
        dims=dims,
        tensors=tensors,
        tokenizer_json=tokenizer,
        source=str(path),
        source_sha256=sha256_of(files),
        suppress_tokens=generation.get("suppress_tokens"),
        alignment_heads=generation.get("alignment_heads") or [],
    )

