"""A draft of what a greedy decoding will write, and the logits of the passes that fed it (decode.py).

The draft is a stream's previous decoding of the same utterance: text tokens, with the first timestamp in
front when the decoding writes timestamps. ``at`` is the draft's next expected token; ``pending`` holds, for
the draft's tokens from ``at`` on that a decoder pass fed, the logits that pass returned after each. A
sampled token that equals the first pending one takes its logits; any other token drops what is pending (the
pass fed something else at that position). A timestamp the draft does not hold there is an insertion (the
draft goes on after it); a text token it does not foresee ends the draft.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class Draft:
    def __init__(self, tokens: Sequence[int], timestamp_begin: int, n_text_ctx: int):
        self.tokens = [int(t) for t in tokens]
        self.timestamp_begin, self.n_text_ctx = timestamp_begin, n_text_ctx
        self.at = 0
        self.pending: list[tuple[int, np.ndarray]] = []

    def ahead(self, position: int, limit: int) -> list[int]:
        """The draft's next tokens for a pass that feeds them from ``position`` on (at most ``limit``).

        Once it offers none it never offers any again (``at`` only grows; the positions and limits a decoding
        asks with only grow and shrink): so the passes that feed a draft all come before the decoding's first
        one-token step, and never write a cache that a serving pool holds (serving/step_pools.py)."""
        room = min(limit, self.n_text_ctx - position)
        return self.tokens[self.at : self.at + room] if room > 0 else []

    def fed(self, tokens: list[int], logits: np.ndarray) -> None:
        """A pass fed ``tokens`` (the draft's from ``at``) and returned ``logits`` [len(tokens), n_vocab] after them."""
        self.pending = list(zip(tokens, logits, strict=True))

    def follow(self, token: int) -> np.ndarray | None:
        """The sampled ``token``'s following logits when a pass fed it in its place (else None); moves the draft on."""
        if self.pending and self.pending[0][0] == token:
            self.at += 1
            return self.pending.pop(0)[1]
        self.pending = []
        expected = self.tokens[self.at] if self.at < len(self.tokens) else None
        if token == expected:
            self.at += 1
        elif token >= self.timestamp_begin:
            # Another time than the draft's here: the draft goes on after it. A timestamp where the draft holds a
            # word (or nothing): inserted, the draft goes on from where it was.
            if expected is not None and expected >= self.timestamp_begin:
                self.at += 1
        else:
            self.at = len(self.tokens)  # a word the draft does not foresee: the draft ends
        return None
