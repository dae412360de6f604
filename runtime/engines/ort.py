"""The onnxruntime engine: the bundle's encoder.onnx and decoder.onnx behind the engine interface.

Graph inputs and outputs (written by compile/onnx_export.py):
  encoder: mel [B, n_mels, frames] -> cross_k, cross_v [n_text_layer, B, n_text_head, frames/2, head_dim]
           (split into heads once per window, so decoder steps do not rearrange 1500 frames each)
  decoder: tokens [B, N], offsets [B], self_k, self_v [n_text_layer, B, n_text_ctx, n_text_state],
           cross_k, cross_v, select [B, k] -> logits [B, k, n_vocab], new_k, new_v [n_text_layer, B, N, n_text_state]
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.errors import BundleError

_pool_threads: int | None = None


def _shared_thread_pool(threads: int) -> None:
    """One intra-op pool for every session in the process: separate pools doubled decoder time.

    onnxruntime fixes the pool size when the first session is made, so later engines share it.
    """
    global _pool_threads
    if _pool_threads is None:
        ort.set_global_thread_pool_sizes(threads, 1)
        _pool_threads = threads


@dataclass
class OrtAudioContext:
    cross_k: np.ndarray
    cross_v: np.ndarray

    @property
    def batch(self) -> int:
        return self.cross_k.shape[1]

    def take(self, rows: np.ndarray) -> "OrtAudioContext":
        return OrtAudioContext(self.cross_k[:, rows], self.cross_v[:, rows])


@dataclass
class OrtKVCache:
    self_k: np.ndarray
    self_v: np.ndarray

    @property
    def batch(self) -> int:
        return self.self_k.shape[1]

    def take(self, rows: np.ndarray) -> "OrtKVCache":
        return OrtKVCache(self.self_k[:, rows], self.self_v[:, rows])

    def write(self, offsets: np.ndarray, new_k: np.ndarray, new_v: np.ndarray) -> None:
        n = new_k.shape[2]
        if np.all(offsets == offsets[0]):
            at = slice(int(offsets[0]), int(offsets[0]) + n)
            self.self_k[:, :, at] = new_k
            self.self_v[:, :, at] = new_v
            return
        for row, offset in enumerate(offsets):
            self.self_k[:, row, offset : offset + n] = new_k[:, row]
            self.self_v[:, row, offset : offset + n] = new_v[:, row]


class OrtEngine:
    def __init__(self, encoder: Path, decoder: Path, dims: ModelDims, threads: int):
        _shared_thread_pool(threads)
        options = ort.SessionOptions()
        options.use_per_session_threads = False
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Memory patterns plan one block per input shape; decoding sees many shapes (prompt, steps,
        # beams), and with patterns on the peak RSS of a transcription was 390 MB instead of 287 MB,
        # at the same speed (tiny.en int8, 2 threads, developer clips).
        options.enable_mem_pattern = False
        try:
            self.encoder = ort.InferenceSession(str(encoder), options, providers=["CPUExecutionProvider"])
            self.decoder = ort.InferenceSession(str(decoder), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for unreadable graphs
            raise BundleError(f"onnxruntime cannot load {encoder.parent}: {str(err).splitlines()[0]}") from None
        self.dims = dims

    def encode(self, mel: np.ndarray) -> OrtAudioContext:
        cross_k, cross_v = self.encoder.run(None, {"mel": np.ascontiguousarray(mel, dtype=np.float32)})
        return OrtAudioContext(cross_k, cross_v)

    def new_cache(self, batch: int) -> OrtKVCache:
        shape = (self.dims.n_text_layer, batch, self.dims.n_text_ctx, self.dims.n_text_state)
        return OrtKVCache(np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    def decode(self, tokens, offsets, cache: OrtKVCache, audio: OrtAudioContext, select) -> np.ndarray:
        offsets = np.asarray(offsets, dtype=np.int64)
        if int(offsets.max()) + tokens.shape[1] > self.dims.n_text_ctx:
            raise ValueError(f"decoder positions past the text context of {self.dims.n_text_ctx} tokens")
        logits, new_k, new_v = self.decoder.run(
            None,
            {
                "tokens": np.asarray(tokens, dtype=np.int64),
                "offsets": offsets,
                "self_k": cache.self_k,
                "self_v": cache.self_v,
                "cross_k": audio.cross_k,
                "cross_v": audio.cross_v,
                "select": np.asarray(select, dtype=np.int64),
            },
        )
        cache.write(offsets, new_k, new_v)
        return logits
