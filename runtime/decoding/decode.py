"""Decoding one batch of windows: prompt, first pass, token-by-token search, ranked results.

The prompt of a row is [<|startofprev|> previous text] <|startoftranscript|> [language task]
[<|notimestamps|>]. One engine pass over the whole prompt fills the row's cache and yields logits
at two places only: <|startoftranscript|> (whose <|nospeech|> probability says whether anyone
speaks) and the prompt's last token (the first sampled token). Then each step feeds one token per
row at the row's own position.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import numpy as np

from edge_asr.runtime.decoding.calls import Decode, Steps, run_sync
from edge_asr.runtime.decoding.language import detect_language_steps
from edge_asr.runtime.decoding.logit_filters import LogitFilter, build_logit_filters, log_softmax
from edge_asr.runtime.decoding.options import DecodingOptions
from edge_asr.runtime.decoding.repetition import is_looping
from edge_asr.runtime.decoding.search import BeamSearchDecoder, Candidate, GreedyDecoder, rank
from edge_asr.runtime.engines.base import AudioContext, Engine, KVCache
from edge_asr.runtime.tokenizer import WhisperTokenizer, language_code

# Steps between checks for a repetition loop; a check scans every row for repeated n-grams.
LOOP_CHECK_INTERVAL = 8


@dataclass(frozen=True)
class DecodingResult:
    tokens: list[int]  # sampled tokens, timestamps included, <|endoftext|> excluded
    text: str
    language: str
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float
    finished: bool  # ended with <|endoftext|> rather than at the sample length


def compression_ratio(text: str) -> float:
    """How well zlib compresses the text; repeated phrases compress well (openai's measure)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


def initial_tokens(
    tokenizer: WhisperTokenizer, options: DecodingOptions, language: str, prompt: Sequence[int], n_text_ctx: int
) -> list[int]:
    """The tokens before the first sampled one; the previous text keeps at most half the context."""
    tokens = list(tokenizer.sot_sequence(language, options.task))
    if options.without_timestamps:
        tokens.append(tokenizer.no_timestamps)
    if len(prompt) > 0:
        tokens = [tokenizer.sot_prev, *list(prompt)[-(n_text_ctx // 2 - 1) :], *tokens]
    return tokens


def decode_window(
    engine: Engine,
    tokenizer: WhisperTokenizer,
    audio: AudioContext,
    options: DecodingOptions,
    *,
    temperature: float = 0.0,
    prompts: Sequence[Sequence[int]] | None = None,
    rng: np.random.Generator | None = None,
) -> list[DecodingResult]:
    """Decodes each window of ``audio`` (an encoded batch); ``prompts`` holds each window's
    previous-text tokens. Returns one result per window."""
    steps = decode_window_steps(engine, tokenizer, audio, options, temperature=temperature, prompts=prompts, rng=rng)
    return run_sync(steps, engine)


def decode_window_steps(
    engine: Engine,
    tokenizer: WhisperTokenizer,
    audio: AudioContext,
    options: DecodingOptions,
    *,
    temperature: float = 0.0,
    prompts: Sequence[Sequence[int]] | None = None,
    rng: np.random.Generator | None = None,
) -> Steps[list[DecodingResult]]:
    """decode_window as a generator of engine calls (decoding/calls.py)."""
    n_windows = audio.batch
    languages = yield from _languages(engine, tokenizer, audio, options)
    prompts = prompts if prompts is not None else [[] for _ in range(n_windows)]
    rows = [
        initial_tokens(tokenizer, options, language, prompt, engine.dims.n_text_ctx)
        for language, prompt in zip(languages, prompts, strict=False)
    ]
    logits, no_speech_probs, cache = yield from _prompt_pass(engine, tokenizer, audio, rows)

    n_group = options.beam_size if temperature == 0 else options.best_of
    if temperature == 0 and options.beam_size > 1:
        decoder = BeamSearchDecoder(options.beam_size, tokenizer.eot, options.patience)
    else:
        decoder = GreedyDecoder(temperature, tokenizer.eot, rng if rng is not None else np.random.default_rng(0))
    group_rows = np.repeat(np.arange(n_windows), n_group)
    offsets = np.array([len(row) for row in rows], dtype=np.int64)[group_rows]
    # The last sampled token is never fed back, so a row may sample one token past the context (as openai).
    room = engine.dims.n_text_ctx - int(offsets.max()) + 1
    sample_len = min(options.sample_len or engine.dims.n_text_ctx // 2, room)
    sampled, sum_logprobs = yield from _search(
        decoder,
        build_logit_filters(tokenizer, options),
        logits[group_rows],
        cache.take(group_rows),
        audio.take(group_rows),
        offsets,
        sample_len,
        partial(_all_looping, eot=tokenizer.eot, options=options),
    )
    groups = decoder.finalize(sampled, sum_logprobs, n_group)
    return [
        _result(tokenizer, candidates[rank(candidates, options.length_penalty)], language, no_speech, temperature)
        for candidates, language, no_speech in zip(groups, languages, no_speech_probs, strict=False)
    ]


def _languages(engine: Engine, tokenizer: WhisperTokenizer, audio: AudioContext, options: DecodingOptions
               ) -> Steps[list[str]]:
    if options.language is not None or not tokenizer.multilingual:
        return [language_code(options.language or "en")] * audio.batch
    return [code for code, _ in (yield from detect_language_steps(engine, tokenizer, audio))]


def _prompt_pass(
    engine: Engine, tokenizer: WhisperTokenizer, audio: AudioContext, rows: list[list[int]]
) -> Steps[tuple[np.ndarray, np.ndarray, KVCache]]:
    """Runs the prompts in one pass. Shorter rows are padded at the end; the padding writes cache
    entries beyond the row's offset, which the row never attends to and its next tokens overwrite."""
    width = max(len(row) for row in rows)
    tokens = np.full((len(rows), width), tokenizer.eot, dtype=np.int64)
    select = np.empty((len(rows), 2), dtype=np.int64)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
        select[i] = (row.index(tokenizer.sot), len(row) - 1)
    cache = engine.new_cache(len(rows))
    logits = yield Decode(tokens, np.zeros(len(rows), np.int64), cache, audio, select)
    no_speech_probs = np.exp(log_softmax(logits[:, 0])[:, tokenizer.no_speech])
    return np.array(logits[:, 1], dtype=np.float32), no_speech_probs, cache


def _search(
    decoder: GreedyDecoder | BeamSearchDecoder,
    filters: list[LogitFilter],
    logits: np.ndarray,
    cache: KVCache,
    audio: AudioContext,
    offsets: np.ndarray,
    sample_len: int,
    all_looping: Callable[[np.ndarray], bool],
) -> Steps[tuple[np.ndarray, np.ndarray]]:
    """Samples until every row ends, the sample length runs out, or every row repeats itself."""
    n_rows = len(logits)
    sampled = np.zeros((n_rows, 0), dtype=np.int64)
    sum_logprobs = np.zeros(n_rows)
    select = np.zeros((n_rows, 1), dtype=np.int64)
    for step in range(sample_len):
        for logit_filter in filters:
            logit_filter.apply(logits, sampled)
        sampled, sum_logprobs, source_rows, completed = decoder.update(sampled, logits, sum_logprobs)
        if completed or step == sample_len - 1:
            break
        if step % LOOP_CHECK_INTERVAL == LOOP_CHECK_INTERVAL - 1 and all_looping(sampled):
            break
        # Beams move only within their window's group, whose rows share the audio and the offsets,
        # so only the cache needs reordering.
        if not np.array_equal(source_rows, np.arange(n_rows)):
            cache = cache.take(source_rows, filled=int(offsets.max()) + step)
        logits = np.array((yield Decode(sampled[:, -1:], offsets + step, cache, audio, select))[:, 0], dtype=np.float32)
    return sampled, sum_logprobs


def _all_looping(rows: np.ndarray, eot: int, options: DecodingOptions) -> bool:
    """Whether every row's text (timestamps and <|endoftext|> left out) repeats itself."""
    return all(is_looping(row[row < eot], options.loop_min_repeats, options.loop_min_tokens) for row in rows)


def _result(
    tokenizer: WhisperTokenizer, candidate: Candidate, language: str, no_speech_prob: float, temperature: float
) -> DecodingResult:
    text = tokenizer.decode(candidate.tokens).strip()
    return DecodingResult(
        tokens=candidate.tokens,
        text=text,
        language=language,
        avg_logprob=candidate.sum_logprob / (len(candidate.tokens) + 1),
        no_speech_prob=float(no_speech_prob),
        temperature=temperature,
        compression_ratio=compression_ratio(text),
        finished=candidate.finished,
    )
