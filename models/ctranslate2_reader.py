"""Reader for CTranslate2 Whisper directories (model.bin, possibly split into model.bin.partN).

model.bin layout: u32 version, name, u32 revision, u32 variable count, then per variable a name,
u8 rank, u32 dims, u8 dtype, u32 byte count and the data; then u32 alias count and (alias, target)
name pairs. Strings are a u16 length (including a trailing NUL) and the bytes.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from edge_asr.models.checkpoint import Checkpoint, read_json, tokenizer_beside
from edge_asr.runtime.file_stamps import sha256_of
from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.errors import ModelSourceError

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
BF16 = 5

# CTranslate2 name suffix -> openai-whisper name suffix, per layer.
LAYER_NAMES = {
    "self_attention/layer_norm": "attn_ln",
    "self_attention/linear_1": "attn.out",
    "attention/layer_norm": "cross_attn_ln",
    "attention/linear_0": "cross_attn.query",
    "attention/linear_2": "cross_attn.out",
    "ffn/layer_norm": "mlp_ln",
    "ffn/linear_0": "mlp.0",
    "ffn/linear_1": "mlp.2",
}
TOP_NAMES = {
    "encoder/conv1": "encoder.conv1",
    "encoder/conv2": "encoder.conv2",
    "encoder/layer_norm": "encoder.ln_post",
    "encoder/position_encodings/encodings": "encoder.positional_embedding",
    "decoder/layer_norm": "decoder.ln",
    "decoder/embeddings/weight": "decoder.token_embedding.weight",
    "decoder/position_encodings/encodings": "decoder.positional_embedding",
}
PARAM_NAMES = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias"}


def model_files(path: Path) -> list[Path]:
    """model.bin, or its parts model.bin.part1, .part2... in order."""
    single = path / "model.bin"
    if single.is_file():
        return [single]
    parts = sorted(path.glob("model.bin.part*"), key=lambda p: int(re.sub(r"\D", "", p.suffix) or 0))
    if not parts:
        raise ModelSourceError(f"{path} holds no CTranslate2 model.bin.")
    return parts


class _Reader:
    def __init__(self, data: bytes, origin: str):
        self.data, self.pos, self.origin = data, 0, origin

    def take(self, fmt: str):
        try:
            values = struct.unpack_from(fmt, self.data, self.pos)
        except struct.error:
            raise ModelSourceError(f"{self.origin} is truncated or corrupt (it ends inside its header).") from None
        self.pos += struct.calcsize(fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        length = self.take("<H")
        text = self.data[self.pos : self.pos + length - 1]
        self.pos += length
        return text.decode("utf-8", errors="replace")

    def array(self, dims: tuple[int, ...], dtype: int, nbytes: int) -> np.ndarray:
        end = self.pos + nbytes
        if end > len(self.data):
            raise ModelSourceError(f"{self.origin} is truncated: a tensor runs past the end of the file.")
        raw = np.frombuffer(self.data, dtype=np.uint8, count=nbytes, offset=self.pos)
        self.pos = end
        if dtype == BF16:
            return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(dims)
        if dtype not in DTYPES:
            raise ModelSourceError(f"{self.origin} has a tensor of unknown dtype code {dtype}.")
        return raw.view(DTYPES[dtype]).reshape(dims)


def read_variables(files: list[Path]) -> dict[str, np.ndarray]:
    """All variables of a model.bin (aliases resolved), in their stored dtypes."""
    origin = str(files[0]) if len(files) == 1 else f"{files[0]} (+{len(files) - 1} parts)"
    data = b"".join(p.read_bytes() for p in files)
    reader = _Reader(data, origin)
    version = reader.take("<I")
    if version < 5 or version > 6:
        raise ModelSourceError(f"{origin} is not a CTranslate2 model.bin this reader knows (version {version}).")
    spec = reader.string()
    if spec != "WhisperSpec":
        raise ModelSourceError(f"{origin} holds a {spec}, not a Whisper model.")
    reader.take("<I")
    variables = {}
    for _ in range(reader.take("<I")):
        name = reader.string()
        rank = reader.take("<B")
        dims = tuple(reader.take("<I") for _ in range(rank))
        dtype = reader.take("<B")
        variables[name] = reader.array(dims, dtype, reader.take("<I"))
    for _ in range(reader.take("<I")):
        alias, target = reader.string(), reader.string()
        variables[alias] = variables[target]
    return variables


def to_openai_names(variables: dict[str, np.ndarray], origin: str = "model.bin") -> dict[str, np.ndarray]:
    if any(name.endswith("weight_scale") for name in variables):
        raise ModelSourceError(f"{origin} holds int8-quantized weights; edge-asr reads float16/float32 "
                               "CTranslate2 models (quantize with `edge-asr compile --precision int8` instead).")
    tensors = {}
    for name, value in variables.items():
        if value.dtype.kind != "f":
            continue
        base, _, param = name.rpartition("/")
        layer = re.match(r"(encoder|decoder)/layer_(\d+)/(.+)", base)
        if layer:
            side, index, rest = layer.groups()
            _put_layer(tensors, f"{side}.blocks.{index}", rest, PARAM_NAMES[param], value)
        elif base in TOP_NAMES:
            tensors[f"{TOP_NAMES[base]}.{PARAM_NAMES[param]}"] = value
        elif name in TOP_NAMES:
            tensors[TOP_NAMES[name]] = value
    return {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}


def _put_layer(tensors: dict, prefix: str, rest: str, param: str, value: np.ndarray) -> None:
    """Fused projections are split: self-attention Q|K|V, cross-attention K|V (keys have no bias)."""
    fused = {"self_attention/linear_0": ("attn", ("query", "key", "value")),
             "attention/linear_1": ("cross_attn", ("key", "value"))}
    if rest in fused:
        module, heads = fused[rest]
        for head, chunk in zip(heads, np.split(value, len(heads), axis=0), strict=True):
            if not (head == "key" and param == "bias"):
                tensors[f"{prefix}.{module}.{head}.{param}"] = chunk
        return
    tensors[f"{prefix}.{LAYER_NAMES[rest]}.{param}"] = value


def dims_of(variables: dict[str, np.ndarray], tensors: dict[str, np.ndarray]) -> ModelDims:
    def count(side):
        return len({k.split(".")[2] for k in tensors if k.startswith(f"{side}.blocks.")})

    audio_ctx, audio_state = tensors["encoder.positional_embedding"].shape
    text_ctx, text_state = tensors["decoder.positional_embedding"].shape
    return ModelDims(
        n_mels=tensors["encoder.conv1.weight"].shape[1],
        n_audio_ctx=audio_ctx,
        n_audio_state=audio_state,
        n_audio_head=int(variables["encoder/num_heads"]),
        n_audio_layer=count("encoder"),
        n_vocab=tensors["decoder.token_embedding.weight"].shape[0],
        n_text_ctx=text_ctx,
        n_text_state=text_state,
        n_text_head=int(variables["decoder/num_heads"]),
        n_text_layer=count("decoder"),
    )


def read_ctranslate2(path: Path, name: str | None = None, parts: list[Path] | None = None) -> Checkpoint:
    """A CTranslate2 Whisper directory as a Checkpoint.

    ``path`` holds config.json and tokenizer.json; ``parts`` names the model.bin parts when they
    lie elsewhere (a model shipped in several packages), else they are found in ``path``.
    """
    path = Path(path)
    files = list(parts) if parts else model_files(path)
    variables = read_variables(files)
    tensors = to_openai_names(variables, str(files[0]))
    try:
        dims = dims_of(variables, tensors)
    except KeyError as missing:
        raise ModelSourceError(f"{files[0]} lacks the Whisper tensor {missing}.") from None
    config = read_json(path / "config.json", required=False)
    tokenizer = tokenizer_beside(path, "model.bin")
    return Checkpoint(
        name=name or path.name,
        dims=dims,
        tensors=tensors,
        tokenizer_json=tokenizer,
        source=str(path),
        source_sha256=sha256_of(files),
        suppress_tokens=config.get("suppress_ids"),
        alignment_heads=config.get("alignment_heads", []),
    )

