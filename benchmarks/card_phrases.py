"""Sentences for the LoRA domain demo: playing cards called out as in Debian pocketsphinx-testdata's
cards clips ("ten of clubs", "eight of spades four of clubs seven of hearts", "five five").

    python3 -m edge_asr.benchmarks.card_phrases 400 > cards.txt
    edge-asr corpus --sentence-file cards.txt ...

The clips themselves are never used for training: they are what the fine-tune is measured on.
"""
from __future__ import annotations

import sys

import numpy as np

RANKS = ("ace", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "jack", "queen", "king")
SUITS = ("clubs", "spades", "hearts", "diamonds")
BARE_RANK = 0.2  # share of calls that give a rank alone, as "five five" does


def card_phrases(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct phrases of one to three cards, written as Whisper writes ("Ten of clubs, five."):
    labels in lower case without punctuation teach a fine-tune to drop both everywhere."""
    rng = np.random.default_rng(seed)
    phrases: dict[str, None] = {}
    while len(phrases) < count:
        calls = []
        for _ in range(int(rng.integers(1, 4))):
            rank = RANKS[rng.integers(len(RANKS))]
            calls.append(rank if rng.random() < BARE_RANK else f"{rank} of {SUITS[rng.integers(len(SUITS))]}")
        phrase = ", ".join(calls)
        phrases[phrase[0].upper() + phrase[1:] + "."] = None
    return list(phrases)


if __name__ == "__main__":
    print("\n".join(card_phrases(int(sys.argv[1]) if len(sys.argv) > 1 else 400)))
