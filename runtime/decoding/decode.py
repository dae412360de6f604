"""Decoding one batch of windows: prompt, first pass, token-by-token search, ranked results.

The prompt of a row is [<|startofprev|> previous text] <|startoftranscript|> [language task]
[<|notimestamps|>]. One engine pass over the whole prompt fills the row's cache and yields logits
at two places only: <|startoftranscript|> (whose <|nospeech|> probability says whether anyone
speaks) and the prompt's last token (the first sampled token). Then each step feeds one token per
row at the row's own position.

A greedy decoding of one window may be given a **draft**: the text it is expected to write (a stream's
previous decoding of the same utterance, which the new one mostly repeats). The draft's tokens ride in the
decoder pass that needs to run anyway (the prompt, or the next step), with logits wanted at each: every
sampled token that equals the draft's next token takes its following logits from that pass instead of a
step of its own. The tokens are still chosen one by one, by the same rules, from logits of the same model
at the same positions, so the text is the greedy decoding's (a timestamp the draft lacks is taken as
inserted; a word it does not foresee ends the draft). Only an engine whose ``verifies_drafts`` says that a
pass with many logits wanted costs about one step (onnxruntime, PyTorch) is given drafts.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import numpy as np

from edge_asr.runtime.decoding.calls import Decode, Steps, run_sync
from edge_asr.runtime.decoding.draft import Draft
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
    draft: Sequence[int] = (),
) -> list[DecodingResult]:
    """Decodes each window of ``audio`` (an encoded batch); ``prompts`` holds each window's
    previous-text tokens; ``draft``, the text tokens one window is expected to write (see above).
    Returns one result per window."""
    steps = decode_window_steps(engine, tokenizer, audio, options, temperature=temperature, prompts=prompts, rng=rng,
                                draft=draft)
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
    draft: Sequence[int] = (),
) -> Steps[list[DecodingResult]]:
    """decode_window as a generator of engine calls (decoding/calls.py)."""
    n_windows = audio.batch
    languages = yield from _languages(engine, tokenizer, audio, options)
    prompts = prompts if prompts is not None else [[] for _ in range(n_windows)]
    rows = [
        initial_tokens(tokenizer, options, language, prompt, engine.dims.n_text_ctx)
        for language, prompt in zip(languages, prompts, strict=False)
    ]
    n_group = options.beam_size if temperature == 0 else options.best_of
    group_rows = np.repeat(np.arange(n_windows), n_group)
    offsets = np.array([len(row) for row in rows], dtype=np.int64)[group_rows]
    # The last sampled token is never fed back, so a row may sample one token past the context (as openai).
    room = engine.dims.n_text_ctx - int(offsets.max()) + 1
    sample_len = min(options.sample_len or engine.dims.n_text_ctx // 2, room)
    guide = None
    if len(draft) > 0 and n_windows == 1 and n_group == 1 and temperature == 0 and getattr(engine, "verifies_drafts", False):
        text = [t for t in draft if t < tokenizer.eot]
        guide = Draft(text if options.without_timestamps else [tokenizer.timestamp_begin, *text],
                      tokenizer.timestamp_begin, engine.dims.n_text_ctx)
    logits, no_speech_probs, cache = yield from _prompt_pass(engine, tokenizer, audio, rows, guide, sample_len - 1)

    if temperature == 0 and options.beam_size > 1:
        decoder = BeamSearchDecoder(options.beam_size, tokenizer.eot, options.patience)
    else:
        decoder = GreedyDecoder(temperature, tokenizer.eot, rng if rng is not None else np.random.default_rng(0))
    sampled, sum_logprobs = yield from _search(
        decoder,
        build_logit_filters(tokenizer, options),
        logits[group_rows],
        cache.take(group_rows),
        # One window's beams or samples read its one audio context where the engine broadcasts it (onnxruntime's
        # MatMul does): the same logits as copies, without a copy of its keys and values per row.
        audio if n_windows == 1 and getattr(engine, "broadcasts_audio", False) else audio.take(group_rows),
        offsets,
        sample_len,
        partial(_all_looping, eot=tokenizer.eot, options=options),
        guide,
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
    engine: Engine, tokenizer: WhisperTokenizer, audio: AudioContext, rows: list[list[int]], draft: Draft | None = None,
    draft_limit: int = 0,
) -> Steps[tuple[np.ndarray, np.ndarray, KVCache]]:
    """Runs the prompts in one pass. Shorter rows are padded at the end; the padding writes cache
    entries beyond the row's offset, which the row never attends to and its next tokens overwrite.
    A ``draft`` (one row) rides after its prompt (at most ``draft_limit`` tokens), its logits kept for the search."""
    guess = draft.ahead(len(rows[0]), draft_limit) if draft is not None else []
    width = max(len(row) for row in rows) + len(guess)
    tokens = np.full((len(rows), width), tokenizer.eot, dtype=np.int64)
    select = np.empty((len(rows), 2 + len(guess)), dtype=np.int64)
    for i, row in enumerate(rows):
        tokens[i, : len(row) + len(guess)] = row + guess
        select[i] = (row.index(tokenizer.sot), *range(len(row) - 1, len(row) + len(guess)))
    cache = engine.new_cache(len(rows))
    logits = yield Decode(tokens, np.zeros(len(rows), np.int64), cache, audio, select)
    no_speech_probs = np.exp(log_softmax(logits[:, 0])[:, tokenizer.no_speech])
    if guess:
        draft.fed(guess, logits[0, 2:])
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
    draft: Draft | None = None,
) -> Steps[tuple[np.ndarray, np.ndarray]]:
    """Samples until every row ends, the sample length runs out, or every row repeats itself. With a
    ``draft`` (one greedy row), a sampled token that a pass fed in its place takes its logits from that pass."""
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
        if draft is not None:
            token = int(sampled[0, -1])
            following = draft.follow(token)
            if following is None:
                # The next pass feeds the sampled token and, behind it, what the draft expects after it.
                guess = draft.ahead(int(offsets[0]) + step + 1, sample_len - step - 2)
                if guess:
                    out = yield Decode(np.array([[token, *guess]], np.int64), offsets + step, cache, audio,
                                       np.arange(len(guess) + 1, dtype=np.int64)[None])
                    draft.fed(guess, out[0, 1:])
                    following = out[0, 0]
            if following is not None:
                logits = np.array(following[None], dtype=np.float32)
                continue
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
