"""Engine calls as values, so that decoding is written once and runs two ways.

The decoding code (decode.py, transcribe.py, streaming/recognizer.py) is written as generators that
``yield`` each engine call they need (an ``Encode`` or a ``Decode``) and receive its result. Run with
``run_sync`` against an engine, a generator is ordinary straight-line decoding. Run by a loop that
holds many of them (serving/engine_loop.py), the calls of every stream meet: the loop encodes their
windows together and runs their decoder steps as one batched step, with no thread per stream.
"""
from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TypeVar, Union

import numpy as np

from edge_asr.runtime.engines.base import AudioContext, Engine, KVCache
from edge_asr.runtime.errors import EdgeAsrError

T = TypeVar("T")


@dataclass(frozen=True)
class Encode:
    """engine.encode(mel): a batch of Mel windows -> their AudioContext."""

    mel: np.ndarray


@dataclass(frozen=True)
class Decode:
    """engine.decode(...): one decoder pass -> logits [batch, len(select[b]), n_vocab]."""

    tokens: np.ndarray
    offsets: np.ndarray
    cache: KVCache
    audio: AudioContext
    select: np.ndarray

    @property
    def is_step(self) -> bool:
        """One token a row, one logit row back, after a prompt: what a pool can batch across decodings."""
        return self.tokens.shape[1] == 1 and self.select.shape[1] == 1 and bool(np.any(self.offsets))


@dataclass(frozen=True)
class Align:
    """engine.align(tokens, audio): one window's whole token sequence [1, N] against its audio context (batch 1)
    -> (logits [N, n_vocab], the alignment heads' cross-attention scores [heads, N, frames]): word timestamps."""

    tokens: np.ndarray
    audio: AudioContext


EngineCall = Union[Encode, Decode, Align]
Steps = Generator[EngineCall, object, T]


def call_engine(engine: Engine, call: EngineCall):
    if isinstance(call, Encode):
        return engine.encode(call.mel)
    if isinstance(call, Align):
        align = getattr(engine, "align", None)
        if align is None:
            raise EdgeAsrError("word timestamps need an onnxruntime bundle with an alignment graph; this bundle's "
                               "engine has none.")
        return align(call.tokens, call.audio)
    return engine.decode(call.tokens, call.offsets, call.cache, call.audio, call.select)


def run_sync(steps: Steps[T], engine: Engine) -> T:
    """Drive a decoding generator to its end, each call straight on ``engine``; its return value."""
    reply = None
    while True:
        try:
            call = steps.send(reply)
        except StopIteration as done:
            return done.value
        reply = call_engine(engine, call)
