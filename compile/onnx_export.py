"""Export the reference model as two ONNX graphs: the encoder (mel -> cross-attention K/V) and one
cached decoder pass with the engine interface's semantics (see edge_asr.runtime.engines.base).

encoder.onnx: mel [B, n_mels, frames] -> cross_k, cross_v [L, B, H, frames/2, dh]
decoder.onnx: tokens [B, N], offsets [B], per layer l: self_k_l, self_v_l [B, n_text_ctx, D] and
              cross_k_l, cross_v_l [B, H, frames/2, dh]; select [B, k]
              -> logits [B, k, n_vocab], new_k, new_v [L, B, N, D]
(L decoder layers, H heads of dh = D / H; the cross K/V come split into heads, as the decoder uses them.)
The decoder takes its caches one input per layer: as stacked inputs, every step sliced them apart
with copies (23 MB a step at batch 5 for tiny.en), while per-layer inputs are views of the
runtime's stacked arrays.

alignment.onnx (word timestamps): tokens [1, N]; per layer l: cross_k_l, cross_v_l [1, H, frames/2, dh]
              -> logits [N, n_vocab] of every position, scores [K, N, frames/2]: the cross-attention scores
              before the softmax of the K alignment heads (runtime/word_timing.py). Run once per decoded window
              with word timestamps, so plain decoding pays nothing for it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from edge_asr.models.whisper_torch import WhisperModel
from edge_asr.runtime.engines.base import cache_input_names

OPSET = 17  # the first opset with a native LayerNormalization op (one node instead of a chain).


class _EncoderGraph(nn.Module):
    """The encoder followed by every decoder layer's cross-attention key/value projections (WhisperModel.
    audio_context). A model with the cached padding holds the padding's keys and values, per encoder layer and
    for the decoder, as constants of the graph: a window pays for its own frames only."""

    def __init__(self, model: WhisperModel):
        super().__init__()
        self.model = model

    def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.context(mel)


def export_encoder(model: WhisperModel, path: Path) -> Path:
    """Write the encoder graph: mel -> every decoder layer's cross-attention keys and values."""
    mel = torch.zeros(1, model.dims.n_mels, 2 * model.dims.n_audio_ctx)
    cross = {1: "batch", 3: "audio_ctx"}
    outputs = {"cross_k": cross, "cross_v": cross}
    return _export(_EncoderGraph(model), (mel,), path, {"mel": {0: "batch", 2: "frames"}}, outputs)


class _DecoderGraph(nn.Module):
    """The cached decoder pass with one input per layer for each of the four caches.

    ``trim``: attend only to the self-attention cache slots that some row has filled (the rows' largest offset),
    not all n_text_ctx of them. The slots past it are masked anyway, so the logits are the same; reading them cost
    a fifth of an int8 tiny.en step (the caches' concatenation and transposes over 448 slots a layer). It makes a
    shape that follows the data, which onnxruntime takes and the static TVM and TensorRT builds do not."""

    def __init__(self, model: WhisperModel, trim: bool = False):
        super().__init__()
        self.decoder, self.layers, self.trim = model.decoder, model.dims.n_text_layer, trim

    def forward(self, tokens: Tensor, offsets: Tensor, *caches_and_select: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        *caches, select = caches_and_select
        per_layer = [caches[i * self.layers : (i + 1) * self.layers] for i in range(4)]
        if self.trim:
            filled = offsets.max()
            per_layer[:2] = [[cache[:, :filled] for cache in layer_caches] for layer_caches in per_layer[:2]]
        return self.decoder(tokens, offsets, *per_layer, select)


def export_decoder(model: WhisperModel, path: Path, trim: bool = False) -> Path:
    """Write the decoder graph: one cached pass for a batch of token rows, each at its own offset (``trim``: see
    _DecoderGraph)."""
    dims = model.dims
    batch, n_tokens, audio_ctx = 2, 3, 16
    head_dim = dims.n_text_state // dims.n_text_head
    cache = torch.zeros(batch, dims.n_text_ctx, dims.n_text_state)
    cross = torch.zeros(batch, dims.n_text_head, audio_ctx, head_dim)
    layers = dims.n_text_layer
    args = (
        torch.zeros(batch, n_tokens, dtype=torch.int64),
        torch.tensor([0, 5]),
        *[cache] * (2 * layers),
        *[cross] * (2 * layers),
        torch.zeros(batch, 1, dtype=torch.int64),
    )
    names = cache_input_names(layers)
    inputs = {"tokens": {0: "batch", 1: "n_tokens"}, "offsets": {0: "batch"}}
    inputs |= {name: {0: "batch"} if name.startswith("self") else {0: "batch", 2: "audio_ctx"} for name in names}
    inputs["select"] = {0: "batch", 1: "k"}
    new_axes = {1: "batch", 2: "n_tokens"}
    outputs = {"logits": {0: "batch", 1: "k"}, "new_k": new_axes, "new_v": new_axes}
    return _export(_DecoderGraph(model, trim), args, path, inputs, outputs)


def alignment_heads(heads: list[list[int]], layers: int, n_head: int) -> list[tuple[int, int]]:
    """(layer, head) pairs whose cross-attention follows the speech: the checkpoint's, else openai-whisper's
    default for a model without them, every head of the second half of the decoder's layers."""
    if heads:
        pairs = [(int(layer), int(head)) for layer, head in heads]
        if all(0 <= layer < layers and 0 <= head < n_head for layer, head in pairs):
            return pairs
    return [(layer, head) for layer in range(layers // 2, layers) for head in range(n_head)]


class _AlignmentGraph(nn.Module):
    """The uncached decoder over a whole token sequence, with the alignment heads' cross-attention scores."""

    def __init__(self, model: WhisperModel, heads: list[tuple[int, int]]):
        super().__init__()
        self.decoder, self.layers, self.heads = model.decoder, model.dims.n_text_layer, heads

    def forward(self, tokens: Tensor, *cross: Tensor) -> tuple[Tensor, Tensor]:
        scores: list[Tensor] = []
        logits = self.decoder.full(tokens, cross=(cross[: self.layers], cross[self.layers :]), cross_scores=scores)
        return logits[0], torch.stack([scores[layer][0, head] for layer, head in self.heads])


def export_alignment(model: WhisperModel, path: Path, heads: list[tuple[int, int]]) -> Path:
    """Write the alignment graph: a window's tokens -> their logits and the alignment heads' scores."""
    dims = model.dims
    cross = torch.zeros(1, dims.n_text_head, 16, dims.n_text_state // dims.n_text_head)
    layers = dims.n_text_layer
    names = [f"{kind}_{layer}" for kind in ("cross_k", "cross_v") for layer in range(layers)]
    inputs = {"tokens": {1: "n_tokens"}} | {name: {2: "audio_ctx"} for name in names}
    outputs = {"logits": {0: "n_tokens"}, "scores": {1: "n_tokens", 2: "audio_ctx"}}
    args = (torch.zeros(1, 5, dtype=torch.int64), *[cross] * (2 * layers))
    return _export(_AlignmentGraph(model, heads), args, path, inputs, outputs)


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
