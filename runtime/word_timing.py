"""Word timestamps, as openai-whisper computes them (its timing.py, 20250625): the cross-attention of the model's
alignment heads over a decoded window's tokens, normalised per head, median-filtered, averaged, then aligned to
the audio frames by dynamic time warping; a word starts where its first token's row of the path jumps.

The engine runs the alignment graph once per window that has text (``Align``, decoding/calls.py): the tokens
[sot sequence, no-timestamps, text, end-of-text] against the window's audio context give every position's logits
(for each word's probability) and the alignment heads' scores before the softmax. Plain decoding pays nothing.
The words never change the transcript's text or where the next window starts.
"""
from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from edge_asr.runtime.tokenizer import WhisperTokenizer
from edge_asr.runtime.transcript import Segment, Word

MEDIAN_FILTER_WIDTH = 7
TOKENS_PER_SECOND = 50  # one encoder position per 20 ms
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END_MARKS = ".。!！?？"
NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}  # words split by characters, not spaces


@dataclass
class _Timing:
    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


def alignment_tokens(tokenizer: WhisperTokenizer, sot_sequence: tuple[int, ...], text_tokens: list[int]) -> np.ndarray:
    """int64 [1, N]: what the alignment graph reads for a window's text tokens."""
    return np.array([[*sot_sequence, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]], np.int64)


def window_words(tokenizer: WhisperTokenizer, segments: list[Segment], logits: np.ndarray, scores: np.ndarray,
                 sot_length: int, audio_frames: int, window_start: float, last_speech: float, language: str = "en"
                 ) -> float:
    """Gives each of a window's ``segments`` (their times absolute) its words, as openai's add_word_timestamps does,
    from the alignment graph's ``logits`` [N, n_vocab] and ``scores`` [heads, N, T] for the tokens of
    ``alignment_tokens``; segment starts and ends move to their words where openai's rules say. Returns the
    end of the last speech, which the next window's rules read (``last_speech``: the previous window's)."""
    per_segment = [[t for t in segment.tokens if t < tokenizer.eot] for segment in segments]
    text_tokens = [t for tokens in per_segment for t in tokens]
    alignment = _find_alignment(tokenizer, text_tokens, logits, scores, sot_length, audio_frames, language)
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    if len(durations):  # words at sentence boundaries no longer than twice the median word
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > longest:
                if alignment[i].word in SENTENCE_END_MARKS:
                    alignment[i].end = alignment[i].start + longest
                elif alignment[i - 1].word in SENTENCE_END_MARKS:
                    alignment[i].start = alignment[i].end - longest
    _merge_punctuations(alignment)
    index = 0
    for segment, tokens in zip(segments, per_segment, strict=True):
        saved, words = 0, []
        while index < len(alignment) and saved < len(tokens):
            timing = alignment[index]
            if timing.word:
                words.append(Word(round(window_start + timing.start, 2), round(window_start + timing.end, 2),
                                  timing.word, timing.probability))
            saved += len(timing.tokens)
            index += 1
        if words:
            last_speech = _fit_segment(segment, words, median, longest, last_speech)
        segment.words = words
    return last_speech


def _fit_segment(segment: Segment, words: list[Word], median: float, longest: float, last_speech: float) -> float:
    """openai's rules for the first and last words of a segment and the segment's own times."""
    first = words[0]
    if first.end - last_speech > median * 4 and (
            first.end - first.start > longest or (len(words) > 1 and words[1].end - first.start > longest * 2)):
        if len(words) > 1 and words[1].end - words[1].start > longest:
            boundary = max(words[1].end / 2, words[1].end - longest)
            first.end = words[1].start = boundary
        first.start = max(0, first.end - longest)
    if segment.start < first.end and segment.start - 0.5 > first.start:
        first.start = max(0, min(first.end - median, segment.start))
    else:
        segment.start = first.start
    last = words[-1]
    if segment.end > last.start and segment.end + 0.5 < last.end:
        last.end = max(last.start + median, segment.end)
    else:
        segment.end = last.end
    return segment.end


def _merge_punctuations(alignment: list[_Timing]) -> None:
    """Opening punctuation joins the word after it, closing punctuation the word before (openai's rule)."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in PREPEND_PUNCTUATIONS:
            following.word, following.tokens = previous.word + following.word, previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in APPEND_PUNCTUATIONS:
            previous.word, previous.tokens = previous.word + following.word, previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def _find_alignment(tokenizer: WhisperTokenizer, text_tokens: list[int], logits: np.ndarray, scores: np.ndarray,
                    sot_length: int, audio_frames: int, language: str) -> list[_Timing]:
    if not text_tokens:
        return []
    sampled = logits[sot_length : sot_length + len(text_tokens), : tokenizer.eot].astype(np.float64)
    sampled = np.exp(sampled - sampled.max(axis=-1, keepdims=True))
    probabilities = (sampled / sampled.sum(axis=-1, keepdims=True))[np.arange(len(text_tokens)), text_tokens]

    weights = scores[:, :, : audio_frames // 2].astype(np.float32)
    weights = np.exp(weights - weights.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    mean = weights.mean(axis=-2, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)
    weights = median_filter((weights - mean) / std, MEDIAN_FILTER_WIDTH)
    matrix = weights.mean(axis=0)[sot_length:-1]
    text_indices, time_indices = dtw(-matrix.astype(np.float64))

    words, word_tokens = split_to_word_tokens(tokenizer, text_tokens + [tokenizer.eot], language)
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    starts, ends = jump_times[boundaries[:-1]], jump_times[boundaries[1:]]
    return [_Timing(word, tokens, float(start), float(end), float(np.mean(probabilities[i:j])))
            for word, tokens, start, end, i, j in zip(words, word_tokens, starts, ends, boundaries[:-1], boundaries[1:],
                                                      strict=False)]


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """The median over a window of ``width`` (odd) along the last axis, the edges reflected (as openai's)."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.sort(windows, axis=-1)[..., pad]


def dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path through the cost matrix ``x`` [N, M]: (row indices, column indices), one pair
    per step. openai's dtw_cpu cell for cell (float32 running costs, its tie-breaking), computed one
    anti-diagonal at a time so that numpy does each diagonal at once."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, np.float32)
    trace = np.full((n + 1, m + 1), -1, np.int8)
    cost[0, 0] = 0
    for diagonal in range(2, n + m + 1):
        i = np.arange(max(1, diagonal - m), min(n, diagonal - 1) + 1)
        j = diagonal - i
        c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
        take0 = (c0 < c1) & (c0 < c2)
        take1 = ~take0 & (c1 < c0) & (c1 < c2)
        best = np.where(take0, c0, np.where(take1, c1, c2))
        cost[i, j] = (x[i - 1, j - 1] + best).astype(np.float32)
        trace[i, j] = np.where(take0, 0, np.where(take1, 1, 2))
    return _backtrace(trace)


def _backtrace(trace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    trace[0, :] = 2
    trace[:, 0] = 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    rows, columns = np.array(path[::-1]).T
    return rows, columns


def split_to_word_tokens(tokenizer: WhisperTokenizer, tokens: list[int], language: str = "en"
                         ) -> tuple[list[str], list[list[int]]]:
    """Words and their tokens: at spaces and punctuation, or at characters for languages written without spaces."""
    subwords, subword_tokens = _split_on_unicode(tokenizer, tokens)
    if language in NO_SPACE_LANGUAGES:
        return subwords, subword_tokens
    words: list[str] = []
    word_tokens: list[list[int]] = []
    for subword, group in zip(subwords, subword_tokens, strict=True):
        special = group[0] >= tokenizer.eot
        if special or subword.startswith(" ") or subword.strip() in string.punctuation or not words:
            words.append(subword)
            word_tokens.append(list(group))
        else:
            words[-1] += subword
            word_tokens[-1].extend(group)
    return words, word_tokens


def _split_on_unicode(tokenizer: WhisperTokenizer, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
    """Tokens grouped so that each group decodes to whole characters (a character may span tokens)."""
    def decode(group: list[int]) -> str:  # as openai's decode_with_timestamps: the end-of-text token written out
        return tokenizer.decode(group) + "<|endoftext|>" * sum(t >= tokenizer.eot for t in group)

    full = decode(tokens)
    words, word_tokens, current, offset = [], [], [], 0
    for token in tokens:
        current.append(token)
        decoded = decode(current)
        if "\ufffd" not in decoded or full[offset + decoded.index("\ufffd")] == "\ufffd":
            words.append(decoded)
            word_tokens.append(current)
            current = []
            offset += len(decoded)
    return words, word_tokens
