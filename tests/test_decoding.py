"""Decoding above the engine interface, against a fake engine with scripted logits and the real
tiny.en tokenizer."""
from dataclasses import dataclass, field, replace

import numpy as np
import pytest

from edge_asr.runtime.decoding.decode import compression_ratio, decode_window, initial_tokens
from edge_asr.runtime.decoding.logit_filters import (
    ApplyTimestampRules,
    SuppressBlank,
    SuppressTokens,
    build_logit_filters,
    suppressed_token_ids,
)
from edge_asr.runtime.decoding.options import DecodingOptions, TranscribeOptions
from edge_asr.runtime.decoding.repetition import MIN_TOKEN_CAP, is_looping, token_cap
from edge_asr.runtime.decoding.search import BeamSearchDecoder, Candidate, GreedyDecoder, rank
from edge_asr.runtime.decoding.segments import split_segments
from edge_asr.runtime.decoding.transcribe import has_words, transcribe
from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.errors import EdgeAsrError

NEG = -np.inf


def ts(tok, seconds: float) -> int:
    return tok.timestamp_begin + round(seconds / 0.02)


def words(tok, text: str) -> list[int]:
    return tok.encode(text)


def segment_tokens(tok, start, text, end):
    return [ts(tok, start), *words(tok, text), ts(tok, end)]


# ---------------------------------------------------------------- the fake engine


@dataclass
class FakeAudio:
    windows: list[int]  # the seek (first Mel value) of each row's window

    @property
    def batch(self) -> int:
        return len(self.windows)

    def take(self, rows):
        return FakeAudio([self.windows[r] for r in rows])


@dataclass
class FakeCache:
    """Remembers the tokens at each position of each row, so logits depend on what the cache holds."""

    tokens: np.ndarray
    takes: list = field(default_factory=list)

    @property
    def batch(self) -> int:
        return len(self.tokens)

    def take(self, rows, filled=None):
        """Like a real cache, copies only the first ``filled`` slots: a prefix too short shows in the logits."""
        self.takes.append(np.asarray(rows).tolist())
        assert filled is None or (self.tokens[:, filled:] == -1).all(), "take() would drop written slots"
        tokens = np.full_like(self.tokens[np.asarray(rows)], -1)
        tokens[:, :filled] = self.tokens[np.asarray(rows), :filled]
        return FakeCache(tokens, self.takes)


class FakeEngine:
    """Logits come from ``respond(window, context, attempt)``: the window's seek, the tokens the
    cache holds up to and including the selected position, and the how-manyth prompt pass this is
    for the window (one per temperature tried)."""

    def __init__(self, tok, respond, n_text_ctx=448):
        self.dims = ModelDims(80, 1500, 384, 6, 4, tok.n_vocab, n_text_ctx, 384, 6, 4)
        self.respond = respond
        self.calls = []
        self.attempts: dict[int, int] = {}
        self.encoded = []
        self.takes = []

    def encode(self, mel):
        assert mel.shape[1:] == (80, 3000) and mel.dtype == np.float32
        self.encoded.append(mel)
        return FakeAudio([int(round(m[0, 0])) for m in mel])

    def new_cache(self, batch):
        return FakeCache(np.full((batch, self.dims.n_text_ctx), -1, dtype=np.int64), self.takes)

    def decode(self, tokens, offsets, cache, audio, select):
        assert tokens.dtype == offsets.dtype == select.dtype == np.int64
        assert len(tokens) == len(offsets) == cache.batch == audio.batch == len(select)
        self.calls.append((tokens.copy(), offsets.copy(), select.copy()))
        prompt_pass = tokens.shape[1] > 1 or not offsets.any()
        if prompt_pass:
            for window in set(audio.windows):
                self.attempts[window] = self.attempts.get(window, -1) + 1
        logits = np.empty((len(tokens), select.shape[1], self.dims.n_vocab), dtype=np.float32)
        for row in range(len(tokens)):
            start = offsets[row]
            assert start + tokens.shape[1] <= self.dims.n_text_ctx, "fed past the text context"
            cache.tokens[row, start : start + tokens.shape[1]] = tokens[row]
            for k, index in enumerate(select[row]):
                context = cache.tokens[row, : start + index + 1]
                window = audio.windows[row]
                logits[row, k] = self.respond(window, tuple(context.tolist()), self.attempts.get(window, 0))
        return logits

    def steps(self):
        return [call for call in self.calls if call[0].shape[1] == 1 and call[1].any()]


def sampled_part(tok, context):
    """The tokens after the last <|startoftranscript|>, or None at <|startoftranscript|> itself."""
    sot = len(context) - 1 - context[::-1].index(tok.sot)
    return None if sot == len(context) - 1 else list(context[sot + 1 :])


def script_logits(tok, script, context, *, no_speech=-10.0, confident=True):
    """Logits that make ``script`` (then <|endoftext|>) the likely continuation of ``context``.

    Not confident: the scripted token barely beats a crowd of 200 text tokens (logprob near -3)."""
    logits = np.full(tok.n_vocab, NEG, dtype=np.float32)
    done = sampled_part(tok, context)
    step = len(done) if done is not None else 0
    target = script[step] if step < len(script) else tok.eot
    if not confident:
        logits[1000:1200] = 0.0
    logits[target] = 30.0 if confident else 2.0
    if done is None:
        logits[tok.no_speech] = no_speech
    return logits


def scripted_engine(tok, scripts, **kwargs):
    """``scripts`` maps a window's seek to its tokens, or to a list of tokens per attempt."""

    def respond(window, context, attempt):
        script = scripts[window]
        if script and isinstance(script[0], list):
            script = script[min(attempt, len(script) - 1)]
        return script_logits(tok, script, context, **kwargs)

    return FakeEngine(tok, respond)


def fake_mel(seconds: float) -> np.ndarray:
    """A Mel whose first band counts frames, so a window's first value is its seek."""
    frames = round(seconds * 100)
    mel = np.zeros((80, frames), dtype=np.float32)
    mel[0] = np.arange(frames)
    return mel


def one_window(engine, tok):
    return engine.encode(fake_mel(30)[None, :, :3000])


# ---------------------------------------------------------------- logit filters


def test_suppress_blank_only_at_first_token(tok):
    logits = np.zeros((1, tok.n_vocab), dtype=np.float32)
    SuppressBlank(tok).apply(logits, np.zeros((1, 0), np.int64))
    assert logits[0, tok.eot] == NEG and logits[0, tok.encode(" ")[0]] == NEG
    later = np.zeros((1, tok.n_vocab), dtype=np.float32)
    SuppressBlank(tok).apply(later, np.array([[ts(tok, 0)]]))
    assert np.isfinite(later).all()


def test_suppress_tokens_covers_non_speech_and_specials(tok):
    ids = suppressed_token_ids(tok, (-1, 7))
    assert set(tok.non_speech_tokens) <= set(ids) and 7 in ids
    assert {tok.sot, tok.sot_prev, tok.sot_lm, tok.transcribe, tok.translate, tok.no_speech} <= set(ids)
    assert tok.eot not in ids and tok.encode(" ")[0] not in ids
    logits = np.zeros((2, tok.n_vocab), dtype=np.float32)
    SuppressTokens(ids).apply(logits, np.zeros((2, 0), np.int64))
    assert (logits[:, list(ids)] == NEG).all() and np.isfinite(logits[:, tok.eot]).all()


def timestamp_rules(tok, max_initial=50):
    return ApplyTimestampRules(tok, max_initial)


def test_first_token_must_be_an_early_timestamp(tok):
    logits = np.zeros((1, tok.n_vocab), dtype=np.float32)
    timestamp_rules(tok).apply(logits, np.zeros((1, 0), np.int64))
    allowed = np.flatnonzero(np.isfinite(logits[0]))
    assert allowed.min() == ts(tok, 0.0) and allowed.max() == ts(tok, 1.0)


def test_no_timestamps_token_is_never_sampled(tok):
    logits = np.zeros((1, tok.n_vocab), dtype=np.float32)
    timestamp_rules(tok).apply(logits, np.array([[ts(tok, 0), *words(tok, " Hi")]]))
    assert logits[0, tok.no_timestamps] == NEG


def test_after_a_timestamp_pair_text_must_follow(tok):
    logits = np.zeros((1, tok.n_vocab), dtype=np.float32)
    sampled = np.array([[ts(tok, 0), *words(tok, " Hi"), ts(tok, 1), ts(tok, 1)]])
    timestamp_rules(tok).apply(logits, sampled)
    assert (logits[0, tok.timestamp_begin :] == NEG).all()
    assert np.isfinite(logits[0, tok.eot]) and np.isfinite(logits[0, words(tok, " there")[0]])


def test_after_a_closing_timestamp_no_text(tok):
    """Text then a timestamp: the next is another timestamp (no earlier) or the end."""
    logits = np.zeros((1, tok.n_vocab), dtype=np.float32)
    logits[0, tok.eot] = 10.0  # likelier than all timestamps together, so the end stays possible
    sampled = np.array([[ts(tok, 0), *words(tok, " Hi"), ts(tok, 1)]])
    timestamp_rules(tok).apply(logits, sampled)
    assert (logits[0, : tok.eot] == NEG).all()
    assert logits[0, tok.eot] == 10.0
    assert logits[0, ts(tok, 0.98)] == NEG and np.isfinite(logits[0, ts(tok, 1.0)])


def test_timestamps_never_go_back(tok):
    """Inside a segment's text, a closing timestamp must be later than the opening one."""
    logits = np.zeros((1, tok.n_vocab), dtype=np.float32)
    sampled = np.array([[ts(tok, 0), *words(tok, " Hi"), ts(tok, 2), ts(tok, 2), *words(tok, " there")]])
    timestamp_rules(tok).apply(logits, sampled)
    assert (logits[0, tok.timestamp_begin : ts(tok, 2.02)] == NEG).all()
    assert np.isfinite(logits[0, ts(tok, 2.02) :]).all()


def test_timestamp_forced_when_timestamps_outweigh_text(tok):
    logits = np.full((2, tok.n_vocab), NEG, dtype=np.float32)
    text = words(tok, " Hi")[0]
    logits[:, text] = 5.0
    logits[0, tok.timestamp_begin + 100 : tok.timestamp_begin + 200] = 2.0  # 100 * e^2 > e^5: timestamps win
    logits[1, tok.timestamp_begin + 100 : tok.timestamp_begin + 110] = 2.0  # 10 * e^2 < e^5: text stays
    sampled = np.array([[ts(tok, 0), *words(tok, " a")]] * 2)
    timestamp_rules(tok).apply(logits, sampled)
    assert logits[0, text] == NEG
    assert logits[1, text] == 5.0


def test_timestamp_preference_is_openais_log_probability_rule_exactly(tok):
    """The rule is decided on the logits (the normaliser cancels); rows where the two sides nearly tie, or are both
    -inf, take openai's path. Decisions and the greedy step's log-probabilities equal openai's formulas."""
    begin = tok.timestamp_begin
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((64, tok.n_vocab)) * 3).astype(np.float32)
    logits[:, begin:] += rng.uniform(-12, 3, (64, 1)).astype(np.float32)  # both outcomes, some close
    logits[1, :begin] = NEG  # text all forbidden
    logits[2, begin:] = NEG  # timestamps all forbidden
    logits[3, begin:] = NEG
    logits[3, :begin] = NEG  # nothing allowed: both sides -inf
    logits[4, begin:] = NEG
    logits[4, begin] = logits[4, :begin].max()  # an exact tie of one timestamp and the best text token
    reference = logits.astype(np.float64)
    with np.errstate(invalid="ignore"):  # the row with nothing allowed is nan: never preferred
        logprobs = reference - np.log(np.exp(reference - reference.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - reference.max(-1, keepdims=True)
        peak = np.nan_to_num(logprobs[:, begin:].max(-1, keepdims=True), neginf=0.0)
        with np.errstate(divide="ignore"):
            timestamp_logprob = np.log(np.exp(logprobs[:, begin:] - peak).sum(-1)) + peak[:, 0]
        openai = timestamp_logprob > logprobs[:, :begin].max(-1)
    assert 10 < openai.sum() < 54
    filtered = logits.copy()
    ApplyTimestampRules(tok, None)._prefer_timestamps(filtered)
    assert ((filtered[:, :begin] == NEG).all(-1) == (openai | (logits[:, :begin] == NEG).all(-1))).all()
    assert (filtered[~openai] == logits[~openai]).all() and (filtered[:, begin:] == logits[:, begin:]).all()

    step = GreedyDecoder(0.0, tok.eot, rng).update(np.zeros((60, 0), np.int64), logits[4:], np.zeros(60))
    from edge_asr.runtime.decoding.logit_filters import log_softmax
    assert (step.sum_logprobs == log_softmax(logits[4:])[np.arange(60), logits[4:].argmax(-1)]).all()


def test_filters_follow_options(tok):
    kinds = lambda options: [type(f).__name__ for f in build_logit_filters(tok, options)]  # noqa: E731
    assert kinds(DecodingOptions()) == ["SuppressBlank", "SuppressTokens", "ApplyTimestampRules"]
    assert kinds(DecodingOptions(suppress_blank=False, without_timestamps=True)) == ["SuppressTokens"]


# ---------------------------------------------------------------- search


def test_greedy_takes_the_argmax_and_stays_ended(tok):
    decoder = GreedyDecoder(0.0, tok.eot, np.random.default_rng(0))
    logits = np.full((2, 10), NEG)
    logits[0, [3, 4]] = [1.0, 0.0]
    logits[1, [4, 5]] = [2.0, 0.0]
    step = decoder.update(np.array([[7], [tok.eot]]), logits.astype(np.float32), np.zeros(2))
    assert step.sampled[:, -1].tolist() == [3, tok.eot]
    assert step.sum_logprobs[0] == pytest.approx(-np.log1p(np.exp(-1.0)))
    assert step.sum_logprobs[1] == 0.0  # an ended row adds nothing


def test_sampling_is_reproducible_and_follows_temperature(tok):
    logits = np.log(np.array([[0.5, 0.3, 0.2]], dtype=np.float32)).repeat(4000, axis=0)
    draw = lambda seed: GreedyDecoder(1.0, tok.eot, np.random.default_rng(seed)).update(  # noqa: E731
        np.zeros((4000, 0), np.int64), logits, np.zeros(4000)
    ).sampled[:, 0]
    first, again = draw(3), draw(3)
    assert (first == again).all()
    assert np.bincount(first, minlength=3) / 4000 == pytest.approx([0.5, 0.3, 0.2], abs=0.03)


def test_rank_uses_length_normalised_scores():
    short = Candidate([1, 2], -2.0, True)  # -1.0 per token
    long = Candidate([1, 2, 3, 4], -3.0, True)  # -0.75 per token
    assert rank([short, long], None) == 1
    # alpha 0 turns the penalty into 1: the plain sum wins
    assert rank([short, long], 0.0) == 0


def beam_logits(vocab: int, choices: dict[int, float]) -> np.ndarray:
    row = np.full(vocab, NEG, dtype=np.float32)
    for token, prob in choices.items():
        row[token] = np.log(prob)
    return row


def test_beam_search_finds_the_better_sequence_greedy_misses(tok):
    """Greedy takes A (0.6), after which ten tokens are equally likely; B (0.4) leads to a sure end."""
    eot, a, b = tok.eot, 10, 11
    vocab = tok.n_vocab

    def logits_for(sampled):
        if sampled == []:
            return beam_logits(vocab, {a: 0.6, b: 0.4})
        if sampled == [a]:
            return beam_logits(vocab, {token: 0.1 for token in range(100, 110)})
        if sampled == [b]:
            return beam_logits(vocab, {eot: 0.99, 12: 0.01})
        return beam_logits(vocab, {eot: 1.0})

    decoder = BeamSearchDecoder(beam_size=2, eot=eot, patience=1.0)
    sampled = np.zeros((2, 0), np.int64)
    sums = np.zeros(2)
    for _ in range(4):
        logits = np.stack([logits_for(row.tolist()) for row in sampled])
        sampled, sums, sources, completed = decoder.update(sampled, logits, sums)
        if completed:
            break
    candidates = decoder.finalize(sampled, sums, 2)[0]
    best = candidates[rank(candidates, None)]
    assert best.tokens == [b] and best.finished
    assert best.sum_logprob == pytest.approx(np.log(0.4 * 0.99))


def test_beam_search_reports_where_rows_come_from(tok):
    decoder = BeamSearchDecoder(beam_size=2, eot=tok.eot)
    logits = np.stack([beam_logits(20, {5: 0.1, 6: 0.9}), beam_logits(20, {7: 0.95, 8: 0.05})])
    step = decoder.update(np.array([[1], [2]]), logits, np.zeros(2))
    assert step.sampled.tolist() == [[2, 7], [1, 6]]
    assert step.source_rows.tolist() == [1, 0]


# ---------------------------------------------------------------- one window


def test_prompt_holds_previous_text_then_sot(tok):
    prompt = list(range(300))
    tokens = initial_tokens(tok, DecodingOptions(), "en", prompt, 448)
    assert tokens[0] == tok.sot_prev and tokens[1:-1] == prompt[-223:] and tokens[-1] == tok.sot
    assert initial_tokens(tok, DecodingOptions(without_timestamps=True), "en", [], 448) == [tok.sot, tok.no_timestamps]


def test_greedy_window_decodes_the_script(tok):
    script = [ts(tok, 0), *words(tok, " Hello world."), ts(tok, 2.5), tok.eot]
    engine = scripted_engine(tok, {0: script})
    (result,) = decode_window(engine, tok, one_window(engine, tok), DecodingOptions())
    assert result.tokens == script[:-1] and result.text == "Hello world." and result.finished
    assert result.avg_logprob == pytest.approx(0.0, abs=1e-6)
    assert result.no_speech_prob < 1e-6
    assert result.compression_ratio == compression_ratio("Hello world.")


def test_window_uses_one_prompt_pass_then_single_token_steps(tok):
    script = [ts(tok, 0), *words(tok, " Hi there."), ts(tok, 1)]
    engine = scripted_engine(tok, {0: script})
    prompt = words(tok, " Before.")
    decode_window(engine, tok, one_window(engine, tok), DecodingOptions(), prompts=[prompt])
    first_tokens, first_offsets, first_select = engine.calls[0]
    expected = [tok.sot_prev, *prompt, tok.sot]
    assert first_tokens.tolist() == [expected] and first_offsets.tolist() == [0]
    assert first_select.tolist() == [[len(expected) - 1, len(expected) - 1]]  # sot is the last prompt token
    steps = engine.calls[1:]
    assert [offsets.tolist() for _, offsets, _ in steps] == [[len(expected) + i] for i in range(len(steps))]
    assert all(tokens.shape == (1, 1) for tokens, _, _ in steps)
    assert len(steps) == len(script)  # every scripted token fed once; <|endoftext|> needs no step


def test_rows_with_prompts_of_different_lengths_share_a_batch(tok):
    scripts = {0: segment_tokens(tok, 0, " Zero.", 1), 3000: segment_tokens(tok, 0, " One here.", 2)}
    engine = scripted_engine(tok, scripts)
    mel = fake_mel(60)
    audio = engine.encode(np.stack([mel[:, :3000], mel[:, 3000:6000]]))
    results = decode_window(engine, tok, audio, DecodingOptions(), prompts=[words(tok, " a b c d e"), []])
    assert [r.text for r in results] == ["Zero.", "One here."]


def test_sample_len_caps_the_tokens(tok):
    engine = scripted_engine(tok, {0: [ts(tok, 0), *words(tok, " one two three four five six")]})
    (result,) = decode_window(engine, tok, one_window(engine, tok), DecodingOptions(sample_len=4))
    assert len(result.tokens) == 4 and not result.finished


def test_decoding_never_feeds_past_the_text_context(tok):
    """The fake engine asserts every position fits; the prompt keeps 31 tokens of previous text."""
    looping = [ts(tok, 0)] + words(tok, " la") * 400
    engine = scripted_engine(tok, {0: looping})
    engine.dims = replace(engine.dims, n_text_ctx=64)
    prompt = words(tok, " word") * 40
    options = DecodingOptions(loop_min_repeats=0)
    (result,) = decode_window(engine, tok, one_window(engine, tok), options, prompts=[prompt])
    assert engine.calls[0][0].shape == (1, 1 + 31 + 1)
    assert not result.finished and len(result.tokens) == 64 - 33 + 1  # the last one is never fed back


def test_no_speech_probability_is_read_at_sot(tok):
    engine = scripted_engine(tok, {0: segment_tokens(tok, 0, " Hm.", 1)}, no_speech=40.0)
    (result,) = decode_window(engine, tok, one_window(engine, tok), DecodingOptions())
    assert result.no_speech_prob > 0.99
    assert tok.no_speech not in result.tokens  # suppressed for sampling


def test_beam_search_window_reorders_the_cache(tok):
    """The fake engine's logits depend on the tokens its cache holds, so beams only find the better
    path if every reordering reaches the cache."""
    a, b, c, d = (words(tok, w)[0] for w in (" yes", " no", " maybe", " so"))
    start = ts(tok, 0)

    def respond(window, context, attempt):
        sampled = sampled_part(tok, context) or []
        table = {
            (): {start: 1.0},
            (start,): {a: 0.55, b: 0.45},
            (start, a): {c: 0.25, d: 0.25, 1000: 0.25, 1001: 0.25},
            (start, b): {ts(tok, 1): 0.99, 1002: 0.01},
            (start, b, ts(tok, 1)): {tok.eot: 1.0},
        }
        return beam_logits(tok.n_vocab, table.get(tuple(sampled), {tok.eot: 1.0}))

    engine = FakeEngine(tok, respond)
    greedy = decode_window(engine, tok, one_window(engine, tok), DecodingOptions())[0]
    assert greedy.tokens[:2] == [start, a]
    engine = FakeEngine(tok, respond)
    (beam,) = decode_window(engine, tok, one_window(engine, tok), DecodingOptions(beam_size=2))
    assert beam.tokens == [start, b, ts(tok, 1)]
    assert any(rows != sorted(rows) for rows in engine.takes)  # some step swapped rows in the cache


def test_options_validate_explains(tok):
    with pytest.raises(EdgeAsrError, match="beam_size must be at least 1"):
        DecodingOptions(beam_size=0).validate()
    with pytest.raises(EdgeAsrError, match="length_penalty must be None or between 0 and 1"):
        TranscribeOptions(length_penalty=2.0).validate()
    with pytest.raises(EdgeAsrError, match="window_frames must be an even number"):
        TranscribeOptions(window_frames=2999).validate()
    with pytest.raises(EdgeAsrError, match="Unknown language"):
        TranscribeOptions(language="xx").validate()
    assert TranscribeOptions(beam_size=5).validate().beam_size == 5


# ---------------------------------------------------------------- long form


def run(engine, tok, seconds, **options):
    return list(transcribe(engine, tok, fake_mel(seconds), TranscribeOptions(**options)))


def test_split_segments_by_consecutive_timestamps(tok):
    tokens = [*segment_tokens(tok, 0, " A", 5), *segment_tokens(tok, 5, " B", 12), ts(tok, 12), *words(tok, " C")]
    spans, consumed = split_segments(tokens, tok.timestamp_begin, 3000)
    assert [(s.start, s.end) for s in spans] == [(0.0, 5.0), (5.0, 12.0)]
    assert consumed == 1200  # the unfinished " C" is decoded again from 12 s


def test_split_segments_single_timestamp_ending_consumes_window(tok):
    tokens = [*segment_tokens(tok, 0, " A", 5), *segment_tokens(tok, 5, " B", 9)]
    spans, consumed = split_segments(tokens, tok.timestamp_begin, 2500)
    assert [(s.start, s.end) for s in spans] == [(0.0, 5.0), (5.0, 9.0)] and consumed == 2500


def test_split_segments_without_pairs_is_one_segment(tok):
    spans, consumed = split_segments([ts(tok, 0), *words(tok, " A"), ts(tok, 7)], tok.timestamp_begin, 3000)
    assert [(s.start, s.end) for s in spans] == [(0.0, 7.0)] and consumed == 3000


def test_long_form_seeks_by_timestamps_over_70_seconds(tok):
    scripts = {
        # 0 s: two segments, then text cut off at the window's end: next window from 12 s
        0: [*segment_tokens(tok, 0, " One.", 5), *segment_tokens(tok, 5, " Two.", 12), ts(tok, 12), *words(tok, " T")],
        # 12 s: ends on a lone timestamp, so the whole window is done: next from 42 s
        1200: [*segment_tokens(tok, 0, " Three.", 10), *segment_tokens(tok, 10, " Four.", 20)],
        # 42 s: the last 28 s
        4200: segment_tokens(tok, 1, " Five.", 8),
    }
    engine = scripted_engine(tok, scripts)
    windows = run(engine, tok, 70)
    assert [(w.start, w.end) for w in windows] == [(0.0, 12.0), (12.0, 42.0), (42.0, 70.0)]
    segments = [s for w in windows for s in w.segments]
    assert [(s.start, s.end, s.text) for s in segments] == [
        (0.0, 5.0, " One."),
        (5.0, 12.0, " Two."),
        (12.0, 22.0, " Three."),
        (22.0, 32.0, " Four."),
        (42.0, 50.0, " Five."),  # without a timestamp pair a segment starts with its window (openai)
    ]
    # the last window holds 28 s of audio and zeros after it
    assert engine.encoded[2][0, 0, 2799] == 6999 and not engine.encoded[2][0, :, 2800:].any()


def test_long_form_prompts_with_previous_text(tok):
    first = [*segment_tokens(tok, 0, " One.", 5), *segment_tokens(tok, 5, " Two.", 30)]
    engine = scripted_engine(tok, {0: first, 3000: segment_tokens(tok, 0, " Three.", 4)})
    run(engine, tok, 40)
    second_prompt = [tokens for tokens, offsets, _ in engine.calls if tokens.shape[1] > 1][-1][0].tolist()
    assert second_prompt == [tok.sot_prev, *first, tok.sot]
    engine = scripted_engine(tok, {0: first, 3000: segment_tokens(tok, 0, " Three.", 4)})
    run(engine, tok, 40, condition_on_previous_text=False)
    assert [tokens.shape[1] for tokens, offsets, _ in engine.calls if not offsets.any()] == [1, 1]


def test_silent_window_is_skipped_and_reported_empty(tok):
    babble = segment_tokens(tok, 0, " Thank you.", 2)
    engine = scripted_engine(tok, {0: babble}, no_speech=40.0, confident=False)
    windows = run(engine, tok, 20)
    assert len(windows) == 1 and windows[0].segments == [] and windows[0].end == 20.0
    assert engine.attempts[0] == 0  # silence is not retried at higher temperatures


def test_confident_text_overrules_a_high_no_speech_probability(tok):
    engine = scripted_engine(tok, {0: segment_tokens(tok, 0, " Quiet words.", 2)}, no_speech=40.0)
    windows = run(engine, tok, 20)
    assert [s.text for s in windows[0].segments] == [" Quiet words."]


def test_temperature_fallback_after_a_repetitive_result(tok):
    repetitive = [ts(tok, 0), *words(tok, " over and over and") * 20, ts(tok, 20)]
    clean = segment_tokens(tok, 0, " Fine.", 3)
    engine = scripted_engine(tok, {0: [repetitive, clean]})
    windows = run(engine, tok, 25)
    (segment,) = windows[0].segments
    assert segment.text == " Fine." and segment.temperature == 0.2
    assert engine.attempts[0] == 1


def test_temperature_fallback_after_an_improbable_result(tok):
    engine = scripted_engine(tok, {0: segment_tokens(tok, 0, " Unsure.", 3)}, confident=False)
    windows = run(engine, tok, 25, temperatures=(0.0, 0.5))
    assert engine.attempts[0] == 1  # retried once, then the most probable result is kept
    assert windows[0].segments[0].temperature == 0.5


def test_repetition_guard_stops_a_loop_on_a_short_window(tok):
    """A 3 s window that never ends: capped at the token rate, judged a loop at every
    temperature, and left without text."""
    loop = [ts(tok, 0)] + words(tok, " la") * 300
    engine = scripted_engine(tok, {0: loop})
    windows = run(engine, tok, 3)
    assert windows[0].segments == [] and windows[0].end == 3.0
    assert engine.attempts[0] == 5  # all six temperatures tried
    assert max(int(offsets[0]) for _, offsets, _ in engine.steps()) < 1 + token_cap(3.0, 10.0)
    assert token_cap(3.0, 10.0) == 30


def test_decoding_stops_early_once_every_row_loops(tok):
    loop = [ts(tok, 0)] + words(tok, " la") * 300
    engine = scripted_engine(tok, {0: loop})
    (result,) = decode_window(engine, tok, one_window(engine, tok), DecodingOptions())
    assert not result.finished and len(result.tokens) <= 1 + 20 + 8  # loop_min_tokens, then the next check
    engine = scripted_engine(tok, {0: loop})
    (result,) = decode_window(engine, tok, one_window(engine, tok), DecodingOptions(loop_min_repeats=0))
    assert len(result.tokens) == 224


def test_repeated_phrase_counts_as_a_loop_without_the_compression_ratio(tok):
    phrase = words(tok, " I think we should all go home now.")
    repeated = [ts(tok, 0), *phrase * 3, ts(tok, 9)]
    assert is_looping([t for t in repeated if t < tok.eot], 3, 20)
    assert compression_ratio(tok.decode(repeated)) < 2.4
    engine = scripted_engine(tok, {0: [repeated, segment_tokens(tok, 0, " Go home.", 2)]})
    windows = run(engine, tok, 25)
    assert [s.text for s in windows[0].segments] == [" Go home."]


def test_is_looping_spares_ordinary_repetition():
    assert not is_looping([5, 5, 5, 6, 7], 3, 20)  # "no no no" is speech
    assert not is_looping(list(range(40)), 3, 20)
    assert is_looping([1, 2, 3, 4, 5] * 5, 3, 20)
    assert is_looping([9] * 25, 3, 20)
    assert not is_looping([9] * 25, 0, 20)  # turned off


def test_token_cap_has_a_floor():
    assert token_cap(0.5, 10.0) == MIN_TOKEN_CAP and token_cap(30.0, None) is None


def test_flat_windows_are_skipped_without_decoding(tok):
    """Digital silence (one Mel value everywhere) makes Whisper write " you"; it is never decoded."""
    mel = fake_mel(70)
    mel[:, 3000:] = -1.5  # from 30 s on, silence up to the end
    engine = scripted_engine(tok, {0: segment_tokens(tok, 0, " Speech.", 29.5)})
    windows = list(transcribe(engine, tok, mel, TranscribeOptions()))
    assert [(w.start, w.end, len(w.segments)) for w in windows] == [(0.0, 30.0, 1), (30.0, 60.0, 0), (60.0, 70.0, 0)]
    assert len(engine.encoded) == 1


def test_wordless_output_is_not_retried_and_gives_no_text(tok):
    dots = [ts(tok, 0), *words(tok, " ."), ts(tok, 3), ts(tok, 3), *words(tok, " . ."), ts(tok, 6)]
    engine = scripted_engine(tok, {0: dots}, confident=False)
    windows = run(engine, tok, 25)
    assert windows[0].segments == [] and engine.attempts[0] == 0


def test_has_words():
    assert has_words(" 42.") and has_words(" 你好") and has_words("Hi")
    assert not has_words(" . . .") and not has_words(" -") and not has_words("")


def test_text_in_the_padding_after_the_audio_is_dropped(tok):
    script = [*segment_tokens(tok, 0, " Real.", 4), *segment_tokens(tok, 12, " Invented.", 16)]
    engine = scripted_engine(tok, {0: script})
    windows = run(engine, tok, 10)
    assert [(s.text, s.end) for s in windows[0].segments] == [(" Real.", 4.0)]


def test_seeded_runs_are_reproducible(tok):
    def respond(window, context, attempt):
        logits = np.full(tok.n_vocab, NEG, dtype=np.float32)
        sampled = sampled_part(tok, context)
        if not sampled:
            logits[ts(tok, 0)] = 0.0
        elif len(sampled) < 6:
            logits[1000:1100] = 0.0  # any of 100 tokens: sampling decides
        else:
            logits[tok.eot] = 0.0
        return logits

    texts = [
        [s.text for w in run(FakeEngine(tok, respond), tok, 25, seed=seed, temperatures=(0.5,)) for s in w.segments]
        for seed in (1, 1, 2)
    ]
    assert texts[0] == texts[1] != texts[2]


def test_english_only_model_refuses_other_languages_before_decoding(tok):
    engine = scripted_engine(tok, {})
    with pytest.raises(EdgeAsrError, match="English-only"):
        list(transcribe(engine, tok, fake_mel(5), TranscribeOptions(language="de")))
    assert engine.calls == []


def test_mel_of_the_wrong_shape_is_explained(tok):
    engine = scripted_engine(tok, {})
    with pytest.raises(EdgeAsrError, match=r"must be \[80, frames\]"):
        list(transcribe(engine, tok, np.zeros((128, 4000), np.float32)))
    with pytest.raises(EdgeAsrError, match="window buffer must be float32"):
        list(transcribe(engine, tok, np.zeros((80, 100), np.float32), window_buffer=np.zeros(80 * 100, np.float32)))
