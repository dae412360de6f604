"""Partial text that does not flicker: LocalAgreement-2 (Machacek et al., 2023, whisper_streaming).

A word becomes stable once two consecutive hypotheses agree on it and on every word before it;
stable words are never withdrawn while the utterance lasts. Words are compared without case and
punctuation, so "world," and "world." agree; the stable text keeps the spelling first agreed on.
"""
from __future__ import annotations


def _key(word: str) -> str:
    return "".join(char for char in word.lower() if char.isalnum())


class LocalAgreement:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.stable: list[str] = []
        self._previous: list[str] = []

    def update(self, hypothesis: str) -> tuple[str, str]:
        """Takes the newest hypothesis of the whole utterance; returns (stable text, unstable rest)."""
        words = hypothesis.split()
        agreed = 0
        for old, new in zip(self._previous, words, strict=False):
            if _key(old) != _key(new):
                break
            agreed += 1
        # A hypothesis that contradicts the stable words cannot withdraw them: they stay, and its
        # words past them are shown as the unstable rest.
        if agreed > len(self.stable) and self._extends_stable(words):
            self.stable = self.stable + words[len(self.stable) : agreed]
        self._previous = words
        return " ".join(self.stable), " ".join(words[len(self.stable) :])

    def _extends_stable(self, words: list[str]) -> bool:
        return len(words) >= len(self.stable) and all(
            _key(a) == _key(b) for a, b in zip(self.stable, words, strict=False)
        )
