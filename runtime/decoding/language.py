"""Spoken-language identification: the language tokens' probabilities after <|startoftranscript|>."""
from __future__ import annotations

import numpy as np

from edge_asr.runtime.decoding.calls import Decode, Steps, run_sync
from edge_asr.runtime.decoding.logit_filters import log_softmax
from edge_asr.runtime.engines.base import AudioContext, Engine
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.tokenizer import WhisperTokenizer


def detect_language(
    engine: Engine, tokenizer: WhisperTokenizer, audio: AudioContext
) -> list[tuple[str, dict[str, float]]]:
    """For each window of ``audio``: the most probable language code and every language's probability."""
    return run_sync(detect_language_steps(engine, tokenizer, audio), engine)


def detect_language_steps(
    engine: Engine, tokenizer: WhisperTokenizer, audio: AudioContext
) -> Steps[list[tuple[str, dict[str, float]]]]:
    """detect_language as a generator of engine calls (decoding/calls.py)."""
    if not tokenizer.multilingual:
        raise EdgeAsrError("This model is English-only; it cannot identify languages.")
    rows = audio.batch
    tokens = np.full((rows, 1), tokenizer.sot, dtype=np.int64)
    logits = (yield Decode(
        tokens, np.zeros(rows, np.int64), engine.new_cache(rows), audio, np.zeros((rows, 1), np.int64)
    ))[:, 0]
    language_tokens = list(tokenizer.language_tokens)
    probs = np.exp(log_softmax(logits[:, language_tokens]))
    results = []
    for row_probs in probs:
        by_code = dict(zip(tokenizer.language_codes, row_probs.tolist(), strict=False))
        results.append((max(by_code, key=by_code.get), by_code))
    return results
