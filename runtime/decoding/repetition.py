"""The repetition guard: signs that the decoder is looping instead of transcribing.

Whisper on too little audio, on noise, or after a bad prompt can repeat one phrase until the
sample length runs out. Two signs catch it before the compression ratio does: more tokens than
the audio's length can hold, and an n-gram repeated back to back.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Even a one-second window needs room for a short sentence between its timestamps.
MIN_TOKEN_CAP = 16


def token_cap(seconds: float, max_tokens_per_second: float | None) -> int | None:
    """Most tokens worth sampling for a window holding ``seconds`` of audio (None: no cap)."""
    if max_tokens_per_second is None:
        return None
    return max(MIN_TOKEN_CAP, math.ceil(seconds * max_tokens_per_second))


def is_looping(text_tokens: Sequence[int], min_repeats: int, min_tokens: int) -> bool:
    """True when some n-gram repeats back to back at least ``min_repeats`` times and the
    repetition spans at least ``min_tokens`` tokens; ``min_repeats`` 0 turns the check off."""
    tokens = np.asarray(text_tokens, dtype=np.int64)
    if min_repeats == 0 or len(tokens) < max(min_tokens, 2):
        return False
    for n in range(1, len(tokens) // max(min_repeats, 2) + 1):
        # tokens[i] == tokens[i + n] over a run of r positions: a stretch of r + n tokens with period n
        periodic_span = _longest_true_run(tokens[:-n] == tokens[n:]) + n
        if periodic_span >= max(min_repeats * n, min_tokens):
            return True
    return False


def _longest_true_run(mask: np.ndarray) -> int:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max()) if len(starts) else 0
