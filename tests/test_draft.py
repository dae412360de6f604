"""Drafts (decoding/draft.py): a greedy decoding given what it is expected to write writes what it writes
without one, in fewer engine calls; the logits of a pass that fed other tokens are never used."""
import numpy as np
import pytest

from edge_asr.runtime.decoding.decode import decode_window
from edge_asr.runtime.decoding.draft import Draft
from edge_asr.runtime.decoding.options import DecodingOptions
from test_decoding import FakeEngine, one_window, sampled_part, script_logits, scripted_engine, ts, words

WRONG = " Wrong"


def strict_engine(tok, script, drafts=True):
    """Logits point at the script's next token only while everything sampled so far is the script; after any
    other token they point at " Wrong", so logits computed behind a wrongly guessed token show in the text."""

    def respond(window, context, attempt):
        done = sampled_part(tok, context)
        if done is not None and done != script[: len(done)]:
            logits = np.full(tok.n_vocab, -np.inf, dtype=np.float32)
            logits[words(tok, WRONG)[0]] = 30.0
            return logits
        return script_logits(tok, script, context)

    engine = FakeEngine(tok, respond)
    engine.verifies_drafts = drafts
    return engine


def decoded(tok, script, draft=(), drafts=True, **options):
    engine = strict_engine(tok, script, drafts)
    (result,) = decode_window(engine, tok, one_window(engine, tok), DecodingOptions(**options), draft=draft)
    return result, engine


def test_a_right_draft_writes_the_same_text_in_one_pass_and_a_step(tok):
    text = words(tok, " And so my fellow Americans.")
    script = [ts(tok, 0), *text, ts(tok, 2.5)]
    alone, plain = decoded(tok, script)
    drafted, engine = decoded(tok, script, draft=text)
    assert drafted == alone and drafted.tokens == script
    assert len(plain.calls) == 1 + len(script)  # the prompt, then a step per token
    # The prompt pass fed the first timestamp and the words; the closing timestamp was not foreseen: one step.
    assert len(engine.calls) == 2 and engine.calls[0][0].shape[1] == 1 + 1 + len(text)
    assert engine.steps() and len(engine.steps()) == 1


def test_without_timestamps_the_draft_is_the_text_alone(tok):
    text = words(tok, " Ask not what your country can do for you.")
    script = [tok.no_timestamps, *text]  # what follows <|startoftranscript|>
    alone, _ = decoded(tok, script, without_timestamps=True)
    drafted, engine = decoded(tok, script, draft=text, without_timestamps=True)
    assert drafted == alone and drafted.tokens == text
    assert len(engine.calls) == 1  # <|endoftext|> came from the prompt pass's last logits


@pytest.mark.parametrize("change", ["a word replaced", "a word missing", "longer", "shorter", "unrelated"])
def test_a_wrong_draft_writes_greedy_decodings_text(tok, change):
    text = words(tok, " one two three four five six seven")
    script = [ts(tok, 0), *text, ts(tok, 3)]
    draft = {
        "a word replaced": text[:3] + words(tok, " nine") + text[4:],
        "a word missing": text[:3] + text[4:],
        "longer": text + words(tok, " eight nine"),
        "shorter": text[:4],
        "unrelated": words(tok, " Hello there."),
    }[change]
    alone, plain = decoded(tok, script)
    drafted, engine = decoded(tok, script, draft=draft)
    assert drafted == alone and drafted.tokens == script
    assert len(engine.calls) <= len(plain.calls)


def test_a_timestamp_the_draft_lacks_is_taken_as_inserted(tok):
    first, second = words(tok, " First part."), words(tok, " And the second one.")
    script = [ts(tok, 0), *first, ts(tok, 1.5), ts(tok, 1.5), *second, ts(tok, 3)]
    alone, plain = decoded(tok, script)
    drafted, engine = decoded(tok, script, draft=first + second)
    assert drafted == alone and drafted.tokens == script
    # The prompt pass, a pass after each inserted timestamp (the draft's rest behind it), the closing step.
    assert len(engine.calls) == 4 and len(engine.steps()) == 1
    fed = [tokens[0].tolist() for tokens, _, _ in engine.calls[1:3]]
    assert fed == [[ts(tok, 1.5), *second], [ts(tok, 1.5), *second]]


def test_engines_that_do_not_verify_drafts_step_as_before(tok):
    text = words(tok, " Hello world.")
    script = [ts(tok, 0), *text, ts(tok, 1)]
    _, plain = decoded(tok, script)
    _, engine = decoded(tok, script, draft=text, drafts=False)
    assert [c[0].tolist() for c in engine.calls] == [c[0].tolist() for c in plain.calls]


@pytest.mark.parametrize("options", [{"beam_size": 2}, {"best_of": 1}])
def test_only_greedy_decoding_at_temperature_zero_takes_a_draft(tok, options):
    text = words(tok, " Hello world.")
    engine = scripted_engine(tok, {0: [ts(tok, 0), *text, ts(tok, 1)]}, confident=False)
    engine.verifies_drafts = True
    temperature = 0.0 if "beam_size" in options else 0.5
    decode_window(engine, tok, one_window(engine, tok), DecodingOptions(**options), temperature=temperature,
                  draft=text)
    assert engine.calls[0][0].shape[1] == 1  # the prompt alone (<|startoftranscript|>), no draft behind it


def test_the_sample_length_and_the_text_context_bound_the_draft(tok):
    text = words(tok, " one two three four five six seven eight")
    script = [ts(tok, 0), *text]
    alone, _ = decoded(tok, script, sample_len=5)
    drafted, engine = decoded(tok, script, draft=text, sample_len=5)
    assert drafted == alone and len(drafted.tokens) == 5
    assert engine.calls[0][0].shape[1] == 1 + 4  # the last sampled token is never fed


def test_a_draft_offers_nothing_once_it_has_offered_nothing(tok):
    """So its passes all come before a decoding's first one-token step (a serving pool never holds their cache)."""
    draft = Draft([5, 6, 7], tok.timestamp_begin, n_text_ctx=448)
    assert draft.ahead(10, 8) == [5, 6, 7]
    assert draft.follow(9) is None  # a word the draft does not foresee
    assert draft.ahead(11, 8) == [] and draft.follow(5) is None and draft.ahead(12, 8) == []
    full = Draft([5, 6, 7], tok.timestamp_begin, n_text_ctx=12)
    assert full.ahead(10, 8) == [5, 6] and full.ahead(12, 8) == []


# ---------------------------------------------------------------- on a real engine (tiny.en fp32, onnxruntime)


def test_a_streams_drafts_give_its_words_in_fewer_steps(tiny_fp32_bundle, vad_model, jfk_wav):
    """Each partial and final after an utterance's first decoding is drafted from the one before: the same events
    (fp32: a pass of many tokens and single steps differ only in the order of float operations)."""
    from edge_asr.runtime.audio import load_audio
    from edge_asr.runtime.engines.timed import TimedEngine
    from edge_asr.runtime.streaming.recognizer import StreamOptions, StreamRecognizer
    from edge_asr.runtime.streaming.vad import SileroVad
    from edge_asr.runtime.transcriber import Transcriber

    transcriber = Transcriber(tiny_fp32_bundle, threads=2)
    audio = load_audio(jfk_wav)
    runs = {}
    for drafts in (False, True):
        engine = TimedEngine(transcriber.engine)
        engine.verifies_drafts = drafts
        recognizer = StreamRecognizer(engine, transcriber.tokenizer, SileroVad(vad_model), transcriber.options(),
                                      StreamOptions(partial_interval_s=1.0))
        events = [e for start in range(0, len(audio), 512) for e in recognizer.push(audio[start : start + 512])]
        events += recognizer.flush()
        runs[drafts] = ([(e.type, e.text, getattr(e, "unstable", "")) for e in events], engine.tally())
    (plain, plain_calls), (drafted, drafted_calls) = runs[False], runs[True]
    assert drafted == plain and sum(kind == "partial" for kind, _, _ in plain) >= 5
    assert drafted_calls["encode"].calls == plain_calls["encode"].calls
    assert drafted_calls["step"].calls < 0.7 * plain_calls["step"].calls  # 39 against 64 steps when written


def test_another_time_than_the_drafts_moves_past_it_and_a_word_ends_it(tok):
    first = tok.timestamp_begin
    draft = Draft([first, 5, 6], first, n_text_ctx=448)
    assert draft.follow(first + 1) is None and draft.at == 1  # <|0.02|> where the draft says <|0.00|>
    assert draft.follow(first + 7) is None and draft.at == 1  # a timestamp where it holds a word: inserted
    assert draft.follow(5) is None and draft.at == 2
    assert draft.follow(9) is None and draft.ahead(20, 8) == []
