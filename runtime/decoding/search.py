"""How the next token is chosen: greedy (or sampling) and beam search, as in openai-whisper.

A decoder works on rows that come in groups: the n_group rows of one audio window are its beams or
its independent samples. update() takes the filtered logits of every row and returns the rows'
tokens one longer, plus which old row each new row continues (beam search moves rows around, and
the caller reorders the engine's cache the same way). finalize() returns each window's candidates.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edge_asr.runtime.decoding.logit_filters import log_softmax, logsumexp


class Step(NamedTuple):
    sampled: np.ndarray  # int64 [rows, n_sampled + 1]
    sum_logprobs: np.ndarray  # float64 [rows]
    source_rows: np.ndarray  # int64 [rows]: the old row each new row continues
    completed: bool  # every window has all the candidates it needs


class Candidate(NamedTuple):
    tokens: list[int]  # sampled tokens up to, not including, <|endoftext|>
    sum_logprob: float
    finished: bool  # ended with <|endoftext|>; False when the sample length ran out first


class GreedyDecoder:
    """Takes the most likely token, or at temperature > 0 samples from the softened distribution."""

    def __init__(self, temperature: float, eot: int, rng: np.random.Generator):
        self.temperature = temperature
        self.eot = eot
        self.rng = rng

    def update(self, sampled: np.ndarray, logits: np.ndarray, sum_logprobs: np.ndarray) -> Step:
        next_tokens = logits.argmax(axis=-1) if self.temperature == 0 else self._sample(logits)
        rows = np.arange(len(logits))
        # log_softmax(logits)[rows, next_tokens], the same float64 numbers, without the whole rows' subtraction
        logprobs = logits[rows, next_tokens].astype(np.float64) - logsumexp(logits)
        finished = sampled[:, -1] == self.eot if sampled.shape[1] else np.zeros(len(logits), bool)
        sum_logprobs = sum_logprobs + np.where(finished, 0.0, logprobs)
        next_tokens = np.where(finished, self.eot, next_tokens)
        sampled = np.concatenate([sampled, next_tokens[:, None]], axis=1)
        return Step(sampled, sum_logprobs, rows, bool((next_tokens == self.eot).all()))

    def _sample(self, logits: np.ndarray) -> np.ndarray:
        """One draw per row from softmax(logits / T), by inverting the cumulative distribution (one
        uniform number per row; a token of probability 0 is never drawn)."""
        cumulative = np.cumsum(np.exp(log_softmax(logits / self.temperature)), axis=-1)
        uniform = self.rng.random(len(logits)) * cumulative[:, -1]
        return (cumulative <= uniform[:, None]).sum(axis=-1)

    def finalize(self, sampled: np.ndarray, sum_logprobs: np.ndarray, n_group: int) -> list[list[Candidate]]:
        candidates = [
            Candidate(_until_eot(row, self.eot), float(lp), bool((row == self.eot).any()))
            for row, lp in zip(sampled, sum_logprobs, strict=False)
        ]
        return [candidates[i : i + n_group] for i in range(0, len(candidates), n_group)]


class BeamSearchDecoder:
    """Keeps beam_size live sequences per window; stops a window when beam_size * patience
    sequences have ended with <|endoftext|> (arxiv:2204.05424)."""

    def __init__(self, beam_size: int, eot: int, patience: float = 1.0):
        self.beam_size = beam_size
        self.eot = eot
        self.max_candidates = round(beam_size * patience)
        self.finished: list[dict[tuple[int, ...], float]] | None = None

    def update(self, sampled: np.ndarray, logits: np.ndarray, sum_logprobs: np.ndarray) -> Step:
        n_windows = len(logits) // self.beam_size
        if self.finished is None:
            self.finished = [{} for _ in range(n_windows)]
        logprobs = log_softmax(logits)
        next_sequences, next_logprobs, source_rows = [], [], []
        for window in range(n_windows):
            scores, sources = self._extensions(window, sampled, logprobs, sum_logprobs)
            kept = 0
            for sequence in sorted(scores, key=scores.get, reverse=True):
                if sequence[-1] == self.eot:
                    self._add_finished(window, sequence, scores[sequence])
                    continue
                next_sequences.append(sequence)
                next_logprobs.append(scores[sequence])
                source_rows.append(sources[sequence])
                kept += 1
                if kept == self.beam_size:
                    break
        completed = all(len(done) >= self.max_candidates for done in self.finished)
        return Step(
            np.array(next_sequences, dtype=np.int64).reshape(len(logits), -1),
            np.array(next_logprobs),
            np.array(source_rows, dtype=np.int64),
            completed,
        )

    def _extensions(self, window, sampled, logprobs, sum_logprobs):
        """The beam_size + 1 best one-token extensions of each beam of a window, with their scores."""
        scores: dict[tuple[int, ...], float] = {}
        sources: dict[tuple[int, ...], int] = {}
        for row in range(window * self.beam_size, (window + 1) * self.beam_size):
            prefix = tuple(sampled[row].tolist())
            for token in _top_k(logprobs[row], self.beam_size + 1):
                sequence = prefix + (int(token),)
                scores[sequence] = float(sum_logprobs[row] + logprobs[row, token])
                sources[sequence] = row
        return scores, sources

    def _add_finished(self, window: int, sequence: tuple[int, ...], score: float) -> None:
        # Candidates arrive best first within a step, so a full list keeps the best of them.
        done = self.finished[window]
        if len(done) < self.max_candidates:
            done[sequence] = score

    def finalize(self, sampled: np.ndarray, sum_logprobs: np.ndarray, n_group: int) -> list[list[Candidate]]:
        """Each window's finished sequences, topped up with its best unfinished beams when fewer
        than beam_size finished."""
        results = []
        for window, done in enumerate(self.finished):
            candidates = [Candidate(list(seq[:-1]), score, True) for seq, score in done.items()]
            rows = np.arange(window * n_group, (window + 1) * n_group)
            for row in rows[np.argsort(-sum_logprobs[rows], kind="stable")]:
                if len(candidates) >= self.beam_size:
                    break
                candidates.append(Candidate(sampled[row].tolist(), float(sum_logprobs[row]), False))
            results.append(candidates)
        return results


def rank(candidates: list[Candidate], length_penalty: float | None) -> int:
    """Index of the most likely candidate: logprob over length, or over Google NMT's length penalty."""

    def score(candidate: Candidate) -> float:
        length = max(len(candidate.tokens), 1)  # an empty candidate must not divide by zero
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        return candidate.sum_logprob / penalty

    return int(np.argmax([score(c) for c in candidates]))


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first."""
    top = np.argpartition(-values, k - 1)[:k]
    return top[np.argsort(-values[top], kind="stable")]


def _until_eot(tokens: np.ndarray, eot: int) -> list[int]:
    tokens = tokens.tolist()
    return tokens[: tokens.index(eot)] if eot in tokens else tokens
