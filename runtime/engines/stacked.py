"""Audio contexts and self-attention caches kept as stacked numpy arrays on the host, for the CPU engines.

Each holds [n_text_layer, batch, ...] arrays and ``values``: the views of them its backend's graphs take,
made once by the subclass's ``_bind`` (onnxruntime wants one value per layer, TVM one per layer and row),
so a decoder step passes the cache without copying it.
"""
from __future__ import annotations

import numpy as np


def _rows(stacked: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of a [n_text_layer, B, ...] array as a new C-contiguous array (axis-1 indexing is not)."""
    return np.ascontiguousarray(stacked[:, rows])


class StackedAudioContext:
    """Cross-attention keys and values [n_text_layer, B, n_text_head, frames/2, head_dim]."""

    def __init__(self, cross_k: np.ndarray, cross_v: np.ndarray):
        self.cross_k, self.cross_v = cross_k, cross_v
        self.values = self._bind()

    def _bind(self):
        raise NotImplementedError

    @property
    def batch(self) -> int:
        return self.cross_k.shape[1]

    def take(self, rows: np.ndarray) -> "StackedAudioContext":
        if np.array_equal(rows, np.arange(self.batch)):
            return self
        return type(self)(_rows(self.cross_k, rows), _rows(self.cross_v, rows))


class StackedKVCache:
    """Self-attention keys and values [n_text_layer, B, n_text_ctx, n_text_state]."""

    def __init__(self, self_k: np.ndarray, self_v: np.ndarray):
        self.self_k, self.self_v = self_k, self_v
        self.values = self._bind()

    def _bind(self):
        raise NotImplementedError

    @property
    def batch(self) -> int:
        return self.self_k.shape[1]

    def take(self, rows: np.ndarray, filled: int | None = None) -> "StackedKVCache":
        if filled is None or len(rows) != self.batch:
            if filled is None and np.array_equal(rows, np.arange(self.batch)):
                return self  # greedy decoding: each window's one row (the prompt pass's cache is not used again)
            return type(self)(_rows(self.self_k, rows), _rows(self.self_v, rows))
        # Beam search reorders every step: permuting the filled prefix in place keeps the arrays and
        # their bound views; copying whole 448-slot caches cost ~3 ms of a ~12 ms step at beam 5.
        self.self_k[:, :, :filled] = self.self_k[:, rows, :filled]
        self.self_v[:, :, :filled] = self.self_v[:, rows, :filled]
        return self

    def write(self, offsets: np.ndarray, new_k: np.ndarray, new_v: np.ndarray) -> None:
        """Store the keys and values [n_text_layer, B, N, n_text_state] of N new tokens at each row's offset."""
        n = new_k.shape[2]
        if np.all(offsets == offsets[0]):
            at = slice(int(offsets[0]), int(offsets[0]) + n)
            self.self_k[:, :, at] = new_k
            self.self_v[:, :, at] = new_v
            return
        for row, offset in enumerate(offsets):
            self.self_k[:, row, offset : offset + n] = new_k[:, row]
            self.self_v[:, row, offset : offset + n] = new_v[:, row]


class HostPool:
    """Decoder pool slots in host memory for the stacked-array engines (engines/base.py, DecoderPool).

    Its arrays come from np.zeros, whose pages the OS maps only when written: the capacity costs address
    space, and memory only for the slots used. Each step runs ``engine.decode`` over views of the span.
    """

    def __init__(self, engine, audio: StackedAudioContext, capacity: int, cache_type, context_type):
        dims = engine.dims
        self.engine, self.capacity = engine, capacity
        self.cache_type, self.context_type = cache_type, context_type
        self_shape = (dims.n_text_layer, capacity, dims.n_text_ctx, dims.n_text_state)
        cross_shape = (audio.cross_k.shape[0], capacity, *audio.cross_k.shape[2:])
        self.self_k, self.self_v = np.zeros(self_shape, np.float32), np.zeros(self_shape, np.float32)
        self.cross_k = np.zeros(cross_shape, audio.cross_k.dtype)
        self.cross_v = np.zeros(cross_shape, audio.cross_v.dtype)

    def admit(self, slots: slice, cache: StackedKVCache, audio: StackedAudioContext, filled: int) -> None:
        self.self_k[:, slots, :filled] = cache.self_k[:, :, :filled]
        self.self_v[:, slots, :filled] = cache.self_v[:, :, :filled]
        self.cross_k[:, slots] = audio.cross_k
        self.cross_v[:, slots] = audio.cross_v

    def point(self, cache: StackedKVCache, slots: slice) -> None:
        # Re-initialised over the slots, the object keeps its type and methods (take, write), and the
        # decoding that holds it sees nothing change.
        cache.__init__(self.self_k[:, slots], self.self_v[:, slots])

    def span(self, first: int, stop: int) -> tuple[int, int]:
        return first, stop

    def step(self, tokens: np.ndarray, offsets: np.ndarray, first: int, stop: int) -> np.ndarray:
        rows = slice(first, stop)
        cache = self.cache_type(self.self_k[:, rows], self.self_v[:, rows])
        audio = self.context_type(self.cross_k[:, rows], self.cross_v[:, rows])
        select = np.zeros((stop - first, 1), np.int64)
        return self.engine.decode(tokens[:, None], offsets, cache, audio, select)[:, 0]
