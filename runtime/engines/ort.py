"""The onnxruntime engine: the bundle's encoder.onnx and decoder.onnx behind the engine interface.

Graph inputs and outputs (written by compile/onnx_export.py):
  encoder: mel [B, n_mels, frames] -> cross_k, cross_v [n_text_layer, B, n_text_head, frames/2, head_dim]
           (split into heads once per window, so decoder steps do not rearrange 1500 frames each)
  decoder: tokens [B, N], offsets [B], per layer l: self_k_l, self_v_l [B, n_text_ctx, n_text_state] and
           cross_k_l, cross_v_l [B, n_text_head, frames/2, head_dim]; select [B, k]
           -> logits [B, k, n_vocab], new_k, new_v [n_text_layer, B, N, n_text_state]
  alignment (optional, word timestamps): tokens [1, N], cross_k_l, cross_v_l -> logits [N, n_vocab],
           scores [alignment heads, N, frames/2]
The engine keeps each cache as one stacked array (engines/stacked.py) and feeds per-layer views of it
(no copies).
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.engines.base import check_decoder_inputs
from edge_asr.runtime.engines.stacked import HostPool, StackedAudioContext, StackedKVCache
from edge_asr.runtime.errors import BundleError
from edge_asr.runtime.threads import Threads

def _layer_values(name: str, stacked: np.ndarray) -> dict[str, ort.OrtValue]:
    """One OrtValue per layer, each a view of ``stacked[layer]`` (onnxruntime shares CPU numpy memory).

    Plain numpy feeds are copied on every run: at batch 5 that was half of a tiny.en decoder step.
    A layer view that is not C-contiguous would be copied once, silently, and later writes to the
    cache would never reach the graph; so every layer view must be contiguous (``stacked`` itself may
    be a range of rows of a larger pool, as the serving engine loop makes).
    """
    layers = [stacked[layer] for layer in range(len(stacked))]
    if not all(view.flags.c_contiguous for view in layers):
        raise ValueError(f"each layer of {name} must be C-contiguous to be shared with onnxruntime")
    return {f"{name}_{layer}": ort.OrtValue.ortvalue_from_numpy(view) for layer, view in enumerate(layers)}


class OrtAudioContext(StackedAudioContext):
    def _bind(self) -> dict[str, ort.OrtValue]:
        return _layer_values("cross_k", self.cross_k) | _layer_values("cross_v", self.cross_v)


class OrtKVCache(StackedKVCache):
    def _bind(self) -> dict[str, ort.OrtValue]:
        return _layer_values("self_k", self.self_k) | _layer_values("self_v", self.self_v)


class OrtEngine:
    verifies_drafts = True  # a pass with many logits wanted costs about a step (decoding/draft.py)
    broadcasts_audio = True  # an audio context of one row serves every token row (the graph's MatMul broadcasts)

    def __init__(self, encoder: Path, decoder: Path, dims: ModelDims, threads: Threads,
                 alignment: Callable[[], Path] | None = None):
        """``threads``: the entry point's (runtime/threads.py), whose helpers are made by now. ``alignment``: gives
        the alignment graph's path (checked) when word timestamps first need it."""
        self._alignment_file, self._aligner = alignment, None
        options = self._options = threads.engine_options()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Memory patterns plan one block per input shape; decoding sees many shapes (prompt, steps,
        # beams), and with patterns on the peak RSS of a transcription was 390 MB instead of 287 MB,
        # at the same speed (tiny.en int8, 2 threads, developer clips).
        options.enable_mem_pattern = False
        try:  # the two sessions are built at once: onnxruntime lets go of the GIL while it builds one
            with ThreadPoolExecutor(1) as pool:
                decoding = pool.submit(ort.InferenceSession, str(decoder), options, providers=["CPUExecutionProvider"])
                self.encoder = ort.InferenceSession(str(encoder), options, providers=["CPUExecutionProvider"])
                self.decoder = decoding.result()
        except Exception as err:  # onnxruntime raises its own exception types for unreadable graphs
            raise BundleError(f"onnxruntime cannot load {encoder.parent}: {str(err).splitlines()[0]}") from None
        self.dims = dims
        mel_bins = {i.name: i.shape for i in self.encoder.get_inputs()}.get("mel", [None, None])[1]
        if isinstance(mel_bins, int) and mel_bins != dims.n_mels:
            raise BundleError(f"{encoder.parent}'s manifest says {dims.n_mels} Mel bins but its encoder graph "
                              f"reads {mel_bins}: the bundle is inconsistent; compile it again.")
        check_decoder_inputs({i.name for i in self.decoder.get_inputs()}, dims.n_text_layer, decoder)

    def align(self, tokens: np.ndarray, audio: OrtAudioContext) -> tuple[np.ndarray, np.ndarray]:
        """Word timing's graph (decoding/calls.py, Align), loaded on first use."""
        if self._aligner is None:
            if self._alignment_file is None:
                raise BundleError("this bundle has no alignment graph for word timestamps: compile it again with "
                                  "`edge-asr compile`.")
            path = self._alignment_file()
            try:
                self._aligner = ort.InferenceSession(str(path), self._options, providers=["CPUExecutionProvider"])
            except Exception as err:  # onnxruntime's own exception types
                raise BundleError(f"onnxruntime cannot load {path}: {str(err).splitlines()[0]}") from None
        if audio.batch != 1:
            raise ValueError("word timing aligns one window at a time")
        tokens = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
        logits, scores = self._aligner.run_with_ort_values(None, {"tokens": tokens} | audio.values)
        return logits.numpy(), scores.numpy()

    def encode(self, mel: np.ndarray) -> OrtAudioContext:
        cross_k, cross_v = self.encoder.run(None, {"mel": np.ascontiguousarray(mel, dtype=np.float32)})
        return OrtAudioContext(cross_k, cross_v)

    def new_cache(self, batch: int) -> OrtKVCache:
        shape = (self.dims.n_text_layer, batch, self.dims.n_text_ctx, self.dims.n_text_state)
        return OrtKVCache(np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    @staticmethod
    def pool_key(audio: OrtAudioContext) -> tuple:
        """Decodings share a pool when their audio contexts have one shape (the graph takes no audio lengths)."""
        return audio.cross_k.shape[2:]

    def new_pool(self, audio: OrtAudioContext, capacity: int) -> HostPool:
        return HostPool(self, audio, capacity, OrtKVCache, OrtAudioContext)

    def decode(self, tokens, offsets, cache: OrtKVCache, audio: OrtAudioContext, select) -> np.ndarray:
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        if int(offsets.max()) + tokens.shape[1] > self.dims.n_text_ctx:
            raise ValueError(f"decoder positions past the text context of {self.dims.n_text_ctx} tokens")
        small = {"tokens": np.ascontiguousarray(tokens, dtype=np.int64), "offsets": offsets,
                 "select": np.ascontiguousarray(select, dtype=np.int64)}  # alive while the OrtValues are used
        feeds = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in small.items()}
        outputs = self.decoder.run_with_ort_values(None, feeds | cache.values | audio.values)
        logits, new_k, new_v = (value.numpy() for value in outputs)
        cache.write(offsets, new_k, new_v)
        return logits
