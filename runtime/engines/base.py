"""The engine interface every backend implements; decoding is written once above it.

An engine runs two graphs of a bundle:

* ``encode(mel)``: a batch of log-Mel windows ``float32 [batch, n_mels, frames]`` (frames even,
  at most ``2 * n_audio_ctx``) becomes an :class:`AudioContext`, the cross-attention keys and values
  of every decoder layer, computed once per window and kept where the backend wants them.
* ``decode(tokens, offsets, cache, audio, select)``: one decoder pass for a batch of token rows
  ``int64 [batch, n_tokens]``. Token ``i`` of row ``b`` sits at position ``offsets[b] + i``; it sees
  the cached self-attention entries ``[0, offsets[b])`` and the new tokens ``0..i`` of its row. The
  engine writes the new keys and values into ``cache`` at those positions and returns the logits
  ``float32 [batch, len(select[b]), n_vocab]`` of the token indices in ``select`` (``int64 [batch, k]``),
  so a long prompt costs one projection to the vocabulary only where logits are wanted.

Rows carry their own positions, so rows from different utterances can share a step. Both the cache
and the audio context are opaque to callers except for ``take(rows)``, which gathers rows (beam
search reorders with it, and repeats one window's context for several beams). A cache's
``take(rows, filled)`` may copy only the first ``filled`` slots: the slots past a row's offset are
never attended to.

An engine that can batch the steps of many decodings (serving/engine_loop.py) also keeps
**pools**: ``new_pool(audio, capacity)`` gives slots in the engine's own memory (host arrays, or GPU
memory) for decodings whose audio contexts share ``pool_key(audio)``; a decoding's cache and audio
context are copied into its slots once, its cache object is re-pointed at them, and each step is one
``DecoderPool.step`` over a span of slots. The batcher never sees a backend's types.

An engine whose ``verifies_drafts`` is true runs a pass of many tokens with a logit wanted at each in about
the time of a one-token step, so decoding may feed it a draft of what it expects to write (decoding/draft.py);
engines that compute a few logits a call (TVM's prompt chunks, TensorRT's profiles) leave it out. An engine whose
``broadcasts_audio`` is true takes an audio context of one row for any number of token rows: a window's beams
or samples share it instead of a copy each (18 MB a row for tiny.en's 1500 frames).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.errors import BundleError

CACHE_INPUTS = ("self_k", "self_v", "cross_k", "cross_v")


def cache_input_names(layers: int) -> list[str]:
    """The decoder graph's per-layer cache and audio inputs, in the order the export gives them."""
    return [f"{name}_{layer}" for name in CACHE_INPUTS for layer in range(layers)]


def check_decoder_inputs(inputs: set[str], layers: int, graph) -> None:
    """A decoder ``graph`` must take exactly the inputs every engine feeds for ``layers`` layers."""
    if inputs != {"tokens", "offsets", "select", *cache_input_names(layers)}:
        raise BundleError(f"{graph} does not take the inputs of a {layers}-layer decoder as this edge-asr feeds "
                          "them: recompile the bundle with `edge-asr compile`.")


class AudioContext(Protocol):
    batch: int

    def take(self, rows: np.ndarray) -> "AudioContext": ...


class KVCache(Protocol):
    batch: int

    def take(self, rows: np.ndarray, filled: int | None = None) -> "KVCache": ...


class DecoderPool(Protocol):
    capacity: int

    def admit(self, slots: slice, cache: KVCache, audio: AudioContext, filled: int) -> None:
        """Copy a decoding's cache (its first ``filled`` slots) and audio context into pool ``slots``."""

    def point(self, cache: KVCache, slots: slice) -> None:
        """Re-point the decoding's cache object at its pool slots, so its later writes and reorders go there."""

    def span(self, first: int, stop: int) -> tuple[int, int]:
        """The slots a step over [first, stop) computes (at least those): some engines run fixed spans."""

    def step(self, tokens: np.ndarray, offsets: np.ndarray, first: int, stop: int) -> np.ndarray:
        """One token per slot of the span [first, stop) at its offset -> logits float32 [stop - first, n_vocab]."""


class Engine(Protocol):
    dims: ModelDims
    verifies_drafts: bool  # optional: False when absent
    broadcasts_audio: bool  # optional: False when absent

    def encode(self, mel: np.ndarray) -> AudioContext: ...

    def new_cache(self, batch: int) -> KVCache: ...

    def decode(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        cache: KVCache,
        audio: AudioContext,
        select: np.ndarray,
    ) -> np.ndarray: ...
