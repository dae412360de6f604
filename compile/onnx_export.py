"""Export the reference model as two ONNX graphs: the encoder (mel -> cross-attention K/V) and one
cached decoder pass with the engine interface's semantics (see edge_asr.runtime.engines.base).

encoder.onnx: mel [B, n_mels, frames] -> cross_k, cross_v [L, B, H, frames/2, dh]
decoder.onnx: tokens [B, N], offsets [B], self_k, self_v [L, B, n_text_ctx, D], cross_k, cross_v,
              select [B, k] -> logits [B, k, n_vocab], new_k, new_v [L, B, N, D]
(L decoder layers, H heads of dh = D / H; the cross K/V come split into heads, as the decoder uses them.)
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from edge_asr.models.whisper_torch import WhisperModel

OPSET = 17  # the first opset with a native LayerNormalization op (one node instead of a chain).


class _EncoderGraph(nn.Module):
    """The encoder followed by every decoder layer's cross-attention key/value projections."""

    def __init__(self, model: WhisperModel):
        super().__init__()
        self.model = model

    def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.decoder.cross_kv(self.model.encoder(mel))


def export_encoder(model: WhisperModel, path: Path) -> Path:
    """Write the encoder graph: mel -> every decoder layer's cross-attention keys and values."""
    mel = torch.zeros(1, model.dims.n_mels, 2 * model.dims.n_audio_ctx)
    cross = {1: "batch", 3: "audio_ctx"}
    outputs = {"cross_k": cross, "cross_v": cross}
    return _export(_EncoderGraph(model), (mel,), path, {"mel": {0: "batch", 2: "frames"}}, outputs)


def export_decoder(model: WhisperModel, path: Path) -> Path:
    """Write the decoder graph: one cached pass for a batch of token rows, each at its own offset."""
    dims = model.dims
    batch, n_tokens, audio_ctx = 2, 3, 16
    cache = torch.zeros(dims.n_text_layer, batch, dims.n_text_ctx, dims.n_text_state)
    head_dim = dims.n_text_state // dims.n_text_head
    cross = torch.zeros(dims.n_text_layer, batch, dims.n_text_head, audio_ctx, head_dim)
    args = (
        torch.zeros(batch, n_tokens, dtype=torch.int64),
        torch.tensor([0, 5]),
        cache,
        cache,
        cross,
        cross,
        torch.zeros(batch, 1, dtype=torch.int64),
    )
    cache_axes, audio_axes, new_axes = {1: "batch"}, {1: "batch", 3: "audio_ctx"}, {1: "batch", 2: "n_tokens"}
    inputs = {
        "tokens": {0: "batch", 1: "n_tokens"},
        "offsets": {0: "batch"},
        "self_k": cache_axes,
        "self_v": cache_axes,
        "cross_k": audio_axes,
        "cross_v": audio_axes,
        "select": {0: "batch", 1: "k"},
    }
    outputs = {"logits": {0: "batch", 1: "k"}, "new_k": new_axes, "new_v": new_axes}
    return _export(model.decoder, args, path, inputs, outputs)


def _export(module: nn.Module, args: tuple, path: Path, inputs: dict, outputs: dict) -> Path:
    """Trace ``module`` (in eval mode, without gradients) into ``path``, with the named dynamic axes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes={**inputs, **outputs},
            opset_version=OPSET,
            dynamo=False,
        )
    return path
