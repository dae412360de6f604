"""The canonical checkpoint every reader produces: dimensions plus openai-whisper state-dict tensors."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.errors import ModelSourceError
from edge_asr.runtime.windows import WindowPolicy



@dataclass
class Checkpoint:
    """Weights of one Whisper model, whatever format they came from.

    ``tensors`` uses openai-whisper's state-dict names (``encoder.blocks.0.attn.query.weight``...),
    float32 numpy arrays; ``encoder.positional_embedding`` is always present. ``tokenizer_json`` is a
    Hugging Face ``tokenizer.json`` for the model's vocabulary. ``suppress_tokens`` is the checkpoint's
    own list of tokens never to emit (None: use Whisper's default list). ``window_policy`` says whether
    the model needs 30 s windows (stock Whisper) or was trained on its audio plus a margin (a student).
    """

    name: str
    dims: ModelDims
    tensors: dict[str, np.ndarray]
    tokenizer_json: Path
    source: str
    source_sha256: str
    suppress_tokens: list[int] | None = None
    alignment_heads: list[list[int]] = field(default_factory=list)
    window_policy: WindowPolicy = WindowPolicy()


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's fixed encoder positional embedding."""
    log_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-log_increment * np.arange(channels // 2))
    scaled = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def read_json(path: Path, required: bool = True) -> dict:
    """A checkpoint's JSON side file; a missing optional one reads as {}."""
    if not path.is_file():
        if not required:
            return {}
        raise ModelSourceError(f"{path} is missing.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelSourceError(f"{path} is not valid JSON.") from None


def tokenizer_beside(path: Path, weights: str) -> Path:
    tokenizer = path / "tokenizer.json"
    if not tokenizer.is_file():
        raise ModelSourceError(f"{path} has no tokenizer.json beside its {weights}.")
    return tokenizer
