"""Rules that forbid tokens before each sampling step, as in openai-whisper's decoding.py.

Each filter sets the logits of forbidden tokens to -inf in place. It sees the logits of the next
token, float32 [rows, n_vocab], and the tokens sampled so far, int64 [rows, n_sampled] (the prompt
and start-of-transcript tokens are not part of them).
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from edge_asr.runtime.decoding.options import DecodingOptions
from edge_asr.runtime.tokenizer import TIMESTAMP_SECONDS, WhisperTokenizer


class LogitFilter(Protocol):
    def apply(self, logits: np.ndarray, sampled: np.ndarray) -> None: ...


class SuppressBlank:
    """No blank and no <|endoftext|> as the first token: an empty transcript is never the answer."""

    def __init__(self, tokenizer: WhisperTokenizer):
        self.tokens = tokenizer.encode(" ") + [tokenizer.eot]

    def apply(self, logits: np.ndarray, sampled: np.ndarray) -> None:
        if sampled.shape[1] == 0:
            logits[:, self.tokens] = -np.inf


class SuppressTokens:
    def __init__(self, tokens: Sequence[int]):
        self.tokens = list(tokens)

    def apply(self, logits: np.ndarray, sampled: np.ndarray) -> None:
        logits[:, self.tokens] = -np.inf


class ApplyTimestampRules:
    """Keeps timestamp tokens well formed: the text starts with a timestamp no later than
    max_initial_timestamp, timestamps come in pairs (end of one segment, start of the next) except
    right before <|endoftext|>, they never go back in time, and a timestamp is forced whenever the
    timestamps together are more likely than any single text token."""

    def __init__(self, tokenizer: WhisperTokenizer, max_initial_timestamp_index: int | None):
        self.eot = tokenizer.eot
        self.no_timestamps = tokenizer.no_timestamps
        self.timestamp_begin = tokenizer.timestamp_begin
        self.max_initial_timestamp_index = max_initial_timestamp_index

    def apply(self, logits: np.ndarray, sampled: np.ndarray) -> None:
        # <|notimestamps|> is the without_timestamps option's business, never a sampled token
        logits[:, self.no_timestamps] = -np.inf
        for row in range(sampled.shape[0]):
            self._apply_pairing(logits[row], sampled[row])
        if sampled.shape[1] == 0:
            self._apply_initial(logits)
        self._prefer_timestamps(logits)

    def _apply_pairing(self, logits: np.ndarray, sampled: np.ndarray) -> None:
        is_timestamp = sampled >= self.timestamp_begin
        last_was_timestamp = len(sampled) >= 1 and is_timestamp[-1]
        penultimate_was_timestamp = len(sampled) < 2 or is_timestamp[-2]
        if last_was_timestamp:
            if penultimate_was_timestamp:  # a segment just closed and the next opened: text must follow
                logits[self.timestamp_begin :] = -np.inf
            else:  # a segment's text just ended with its closing timestamp: no more text
                logits[: self.eot] = -np.inf
        timestamps = sampled[is_timestamp]
        if len(timestamps) > 0:
            # Time never goes back; a closing timestamp may repeat the opening one's time only
            # when it directly follows it, so that every segment has a nonzero length.
            if last_was_timestamp and not penultimate_was_timestamp:
                earliest_allowed = timestamps[-1]
            else:
                earliest_allowed = timestamps[-1] + 1
            logits[self.timestamp_begin : earliest_allowed] = -np.inf

    def _apply_initial(self, logits: np.ndarray) -> None:
        logits[:, : self.timestamp_begin] = -np.inf
        if self.max_initial_timestamp_index is not None:
            logits[:, self.timestamp_begin + self.max_initial_timestamp_index + 1 :] = -np.inf

    def _prefer_timestamps(self, logits: np.ndarray) -> None:
        """openai's rule compares log-probabilities: the timestamps' total against the likeliest text token. Both
        sides share the softmax's normaliser, so the logits decide alone, without an exp over the whole vocabulary;
        a row whose two sides lie within 1e-9 (the normalised sums' rounding is ~1e-13) is decided as openai does."""
        begin = self.timestamp_begin
        timestamps = logsumexp(logits[:, begin:])
        text = logits[:, :begin].max(axis=-1).astype(np.float64)
        with np.errstate(invalid="ignore"):  # -inf on both sides: not clear, decided below
            clear = np.abs(timestamps - text) > 1e-9
        prefer = timestamps > text
        if not clear.all():
            with np.errstate(invalid="ignore"):  # a row with nothing allowed is nan here: never preferred
                logprobs = log_softmax(logits[~clear])
                prefer[~clear] = logsumexp(logprobs[:, begin:]) > logprobs[:, :begin].max(axis=-1)
        logits[prefer, :begin] = -np.inf


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis, in float64; -inf logits stay -inf."""
    return logits.astype(np.float64) - logsumexp(logits)[..., None]


def logsumexp(values: np.ndarray) -> np.ndarray:
    """log(sum(exp(values))) over the last axis, in float64 whatever ``values`` hold: float32 values are widened
    inside the subtraction (exactly, without a float64 copy of the whole array first)."""
    peak = values.max(axis=-1).astype(np.float64)
    finite_peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):  # an all -inf row sums to 0, whose log is -inf
        return finite_peak + np.log(np.exp(values - finite_peak[..., None]).sum(axis=-1))


def suppressed_token_ids(tokenizer: WhisperTokenizer, suppress_tokens: Sequence[int]) -> tuple[int, ...]:
    """The options' suppress_tokens with -1 expanded, plus the special tokens that are never text
    (no-speech is read from the start-of-transcript logits, not sampled)."""
    tokens = {t for t in suppress_tokens if t >= 0}
    if -1 in suppress_tokens:
        tokens.update(tokenizer.non_speech_tokens)
    tokens.update([tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev, tokenizer.sot_lm])
    tokens.add(tokenizer.no_speech)
    return tuple(sorted(tokens))


def build_logit_filters(tokenizer: WhisperTokenizer, options: DecodingOptions) -> list[LogitFilter]:
    filters: list[LogitFilter] = []
    if options.suppress_blank:
        filters.append(SuppressBlank(tokenizer))
    suppress = (-1,) if options.suppress_tokens is None else options.suppress_tokens
    filters.append(SuppressTokens(suppressed_token_ids(tokenizer, suppress)))
    if not options.without_timestamps:
        max_initial = options.max_initial_timestamp
        max_index = None if max_initial is None else round(max_initial / TIMESTAMP_SECONDS)
        filters.append(ApplyTimestampRules(tokenizer, max_index))
    return filters
