"""Length-adaptive students: the window policy from checkpoint to manifest to runtime, encoder windows that
follow the audio offline and streaming (stock bundles as before), and `edge-asr compile --adapter`."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_asr.runtime.decoding.options import TranscribeOptions
from edge_asr.runtime.decoding.transcribe import _resume_point, transcribe
from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.errors import BundleError, EdgeAsrError, ModelSourceError
from edge_asr.runtime.streaming.recognizer import StreamOptions, StreamRecognizer
from edge_asr.runtime.tokenizer import WhisperTokenizer
from edge_asr.runtime.windows import WindowPolicy, encoder_frames

from conftest import compiled_bundle, require, run_cli, save_tiny_whisper

STUDENT = WindowPolicy(needs_30s_padding=False, margin_s=1.0)
STOCK = WindowPolicy()


@pytest.fixture(scope="module")
def student_pt(tmp_path_factory) -> Path:
    return save_tiny_whisper(tmp_path_factory.mktemp("student") / "student.pt", STUDENT)


@pytest.fixture(scope="module")
def student_bundle(tmp_path_factory, student_pt) -> Path:
    require("onnx")
    return compiled_bundle(tmp_path_factory, "student-bundle", "--model", student_pt, "--precision", "fp32")


@dataclass
class _Rows:
    batch: int

    def take(self, rows, filled=None) -> "_Rows":
        return _Rows(len(rows))


class HearsNothing:
    """An engine whose every decoding ends at once: what is checked here is the windows, not the text."""

    def __init__(self, tokenizer: WhisperTokenizer):
        self.dims = ModelDims(80, 1500, 384, 6, 4, tokenizer.n_vocab, 448, 384, 6, 4)
        self.eot = tokenizer.eot

    def encode(self, mel: np.ndarray) -> _Rows:
        return _Rows(len(mel))

    def new_cache(self, batch: int) -> _Rows:
        return _Rows(batch)

    def decode(self, tokens, offsets, cache, audio, select) -> np.ndarray:
        logits = np.zeros((len(tokens), select.shape[1], self.dims.n_vocab), np.float32)
        logits[..., self.eot] = 30.0
        return logits


class Recording:
    """Passes every call on to ``engine`` and notes the Mel frames of each window it encodes, and the
    window's last frame, which lies in the padding after the audio."""

    def __init__(self, engine):
        self.engine, self.dims, self.windows, self.last_frames = engine, engine.dims, [], []

    def encode(self, mel: np.ndarray):
        self.windows.append(mel.shape[2])
        self.last_frames.append((mel[0, :, -1].copy(), float(mel.max())))
        return self.engine.encode(mel)

    def new_cache(self, batch: int):
        return self.engine.new_cache(batch)

    def decode(self, *args) -> np.ndarray:
        return self.engine.decode(*args)


def noise_mel(frames: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((80, frames)).astype(np.float32)


def speech_then_silence(speech_s: float = 3.0) -> np.ndarray:
    """1 s of silence, ``speech_s`` of noise (the fake VAD's speech), 2 s of silence."""
    noise = np.random.default_rng(0).normal(0, 0.1, round(speech_s * 16000)).astype(np.float32)
    return np.concatenate([np.zeros(16000, np.float32), noise, np.zeros(32000, np.float32)])


def loud_is_speech(window: np.ndarray) -> float:
    return float(np.abs(window).max() > 0.01)


def stream_windows(engine: Recording, tokenizer, transcribe_options, options: StreamOptions) -> list[int]:
    recognizer = StreamRecognizer(engine, tokenizer, loud_is_speech, transcribe_options, options)
    recognizer.push(speech_then_silence())
    recognizer.flush()
    return engine.windows


# -- the policy and the window it gives -----------------------------------------------------------

def test_window_follows_the_policy_and_the_users_choice():
    assert encoder_frames(300, STUDENT) == 400  # 3 s + the 1 s margin
    assert encoder_frames(301, STUDENT) == 402  # even
    assert encoder_frames(2950, STUDENT) == 3000  # never past 30 s
    assert encoder_frames(300, WindowPolicy(needs_30s_padding=False, margin_s=0.5)) == 350
    assert encoder_frames(300, STUDENT, "full") == 3000
    assert encoder_frames(300, STOCK) == 3000  # stock Whisper: padded, as before
    assert encoder_frames(300, STOCK, "utterance") == 1500  # stock streaming: 15 s at least, as before
    assert encoder_frames(300, STOCK, "utterance", min_s=0) == 400
    assert encoder_frames(300, STUDENT, "full", max_frames=2000) == 2000


def test_window_policy_reads_what_it_writes_and_refuses_nonsense():
    assert STUDENT.to_dict() == {"needs_30s_padding": False, "window_margin_s": 1.0}
    assert WindowPolicy.from_dict(STUDENT.to_dict()) == STUDENT
    assert WindowPolicy.from_dict({"name": "tiny.en"}) == STOCK  # nothing said: stock Whisper
    with pytest.raises(EdgeAsrError, match="needs_30s_padding must be true or false"):
        WindowPolicy.from_dict({"needs_30s_padding": "no"})
    with pytest.raises(EdgeAsrError, match="window margin must be 0 to 30 seconds"):
        WindowPolicy.from_dict({"needs_30s_padding": False, "window_margin_s": -1})
    gated = WindowPolicy(needs_30s_padding=False, silence_logprob=-0.8)
    assert gated.to_dict()["silence_logprob_threshold"] == -0.8 and WindowPolicy.from_dict(gated.to_dict()) == gated
    with pytest.raises(EdgeAsrError, match="silence log-probability must be -10 to 0"):
        WindowPolicy.from_dict({"silence_logprob_threshold": 0.5})
    with pytest.raises(EdgeAsrError, match="encoder_context must be None or one of utterance, full"):
        TranscribeOptions(encoder_context="half").validate()
    with pytest.raises(EdgeAsrError, match="min_context_s"):
        StreamOptions(min_context_s=-1).validate()


# -- checkpoint -> manifest -> Bundle ---------------------------------------------------------------

def test_student_checkpoint_records_its_window_policy(tmp_path):
    require("torch")
    import torch

    from edge_asr.models.openai_reader import read_openai

    assert read_openai(save_tiny_whisper(tmp_path / "student.pt", STUDENT)).window_policy == STUDENT
    stock = tmp_path / "stock.pt"
    assert read_openai(save_tiny_whisper(stock)).window_policy == STOCK
    raw = torch.load(stock, weights_only=True)
    assert "edge_asr" not in raw  # a plain OpenAI checkpoint, as openai-whisper writes them
    torch.save(raw | {"edge_asr": {"needs_30s_padding": False, "window_margin_s": "one"}}, tmp_path / "broken.pt")
    with pytest.raises(ModelSourceError, match='broken.pt has a broken "edge_asr" entry: the window margin'):
        read_openai(tmp_path / "broken.pt")


def test_student_bundle_says_it_needs_no_padding_and_older_bundles_mean_padded(student_bundle, tmp_path):
    from edge_asr.runtime.bundle import load_bundle

    manifest = json.loads((student_bundle / "manifest.json").read_text())
    assert manifest["model"]["needs_30s_padding"] is False and manifest["model"]["window_margin_s"] == 1.0
    assert load_bundle(student_bundle).window_policy == STUDENT

    older = shutil.copytree(student_bundle, tmp_path / "older")
    del manifest["model"]["needs_30s_padding"], manifest["model"]["window_margin_s"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(older).window_policy == STOCK

    manifest["model"]["window_margin_s"] = "long"
    (older / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"broken manifest.json \(its window policy is wrong: the window margin"):
        load_bundle(older)


# -- the windows the engine is given ------------------------------------------------------------------

@pytest.mark.parametrize("policy, context, windows", [
    (STUDENT, None, [400]),  # 3 s of audio + 1 s
    (STUDENT, "full", [3000]),
    (STOCK, None, [3000]),
])
def test_offline_window_of_a_3_s_utterance(tok, policy, context, windows):
    engine = Recording(HearsNothing(tok))
    list(transcribe(engine, tok, noise_mel(300), TranscribeOptions(window_policy=policy, encoder_context=context)))
    assert engine.windows == windows


@pytest.mark.parametrize("policy", [STUDENT, STOCK])
def test_window_padding_is_silence_for_a_student_and_zeros_for_stock_whisper(tok, policy):
    """A student learnt windows ending in the features of silent audio, 2 below the recording's normalised
    peak (Whisper's 80 dB floor); stock Whisper keeps openai's pad_or_trim zeros."""
    mel = noise_mel(300)
    expected = mel.max() - 2.0 if policy is STUDENT else 0.0
    engine = Recording(HearsNothing(tok))
    list(transcribe(engine, tok, mel, TranscribeOptions(window_policy=policy)))
    stream_windows(engine, tok, TranscribeOptions(window_policy=policy), StreamOptions(partial_interval_s=0))
    assert len(engine.last_frames) >= 2
    for last, peak in engine.last_frames:  # a stream's windows are normalised over their own peak
        assert np.all(last == (peak - 2.0 if policy is STUDENT else 0.0))
    assert np.all(engine.last_frames[0][0] == np.float32(expected))


def test_long_audio_still_goes_in_windows_of_at_most_30_s(tok):
    for policy, windows in ((STUDENT, [3000, 1600]), (STOCK, [3000, 3000])):
        engine = Recording(HearsNothing(tok))
        list(transcribe(engine, tok, noise_mel(4500), TranscribeOptions(window_policy=policy)))
        assert engine.windows == windows, policy


@pytest.mark.parametrize("policy, context, shortest, longest", [
    # 3 s of speech with the VAD's 0.4 s before and 0.15 s after (about 355 frames), plus 1 s.
    (STUDENT, "utterance", 440, 470),
    (STUDENT, "full", 3000, 3000),
    (STOCK, "utterance", 1500, 1500),  # today's default for stock Whisper: at least 15 s
    (STOCK, "full", 3000, 3000),
])
def test_streaming_window_of_a_3_s_utterance(tok, policy, context, shortest, longest):
    options = StreamOptions(partial_interval_s=0, encoder_context=context)
    windows = stream_windows(Recording(HearsNothing(tok)), tok, TranscribeOptions(window_policy=policy), options)
    assert windows and all(shortest <= frames <= longest for frames in windows), windows


def test_student_bundle_runs_its_engine_on_the_short_window(student_bundle, tok):
    """Offline and streaming through Transcriber.options(), which takes the policy from the bundle."""
    from edge_asr.runtime.transcriber import Transcriber

    transcriber = Transcriber(student_bundle, threads=2)
    transcriber.engine = engine = Recording(transcriber.engine)
    audio = np.random.default_rng(0).normal(0, 0.1, 3 * 16000).astype(np.float32)
    transcriber.transcribe(audio, transcriber.options(temperatures=(0.0,)))
    assert engine.windows == [400]
    engine.windows.clear()
    transcriber.transcribe(audio, transcriber.options(temperatures=(0.0,), encoder_context="full"))
    assert engine.windows == [3000]
    engine.windows.clear()
    options = transcriber.options(temperatures=(0.0,))
    windows = stream_windows(engine, transcriber.tokenizer, options, StreamOptions(partial_interval_s=0))
    assert windows and all(440 <= frames <= 470 for frames in windows), windows


def test_options_made_without_the_bundle_keep_the_models_facts(student_bundle):
    """TranscribeOptions(beam_size=2) leaves the window policy and the suppressed tokens to the model: a student
    keeps its audio-length windows (it once fell back to stock 30 s windows and the generic token list)."""
    from edge_asr.runtime.decoding.options import TranscribeOptions
    from edge_asr.runtime.transcriber import Transcriber

    transcriber = Transcriber(student_bundle, threads=2)
    transcriber.engine = engine = Recording(transcriber.engine)
    audio = np.random.default_rng(0).normal(0, 0.1, 3 * 16000).astype(np.float32)
    transcriber.transcribe(audio, TranscribeOptions(beam_size=2, temperatures=(0.0,)))
    assert engine.windows == [400]
    filled = transcriber.with_model_facts(TranscribeOptions(beam_size=2))
    assert filled.window_policy == STUDENT and filled.beam_size == 2
    assert filled.suppress_tokens == (tuple(transcriber.bundle.suppress_tokens) if transcriber.bundle.suppress_tokens
                                      else None)
    mine = transcriber.with_model_facts(TranscribeOptions(suppress_tokens=(5,), window_policy=STOCK))
    assert (mine.suppress_tokens, mine.window_policy) == ((5,), STOCK)  # what the user sets stays


def test_transcribe_cli_takes_the_encoder_context(student_bundle, jfk_wav):
    for context in ("utterance", "full"):
        done = run_cli("transcribe", "--no-progress", "--bundle", student_bundle, "--encoder-context", context, jfk_wav)
        assert done.returncode == 0, done.stderr


# -- compile --adapter --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adapter_dir(student_pt, tmp_path_factory) -> Path:
    """A LoRA adapter trained (here: set at random, B nonzero, so it changes the weights) on the student."""
    require("peft", "safetensors")
    import torch

    from edge_asr.models.lora import LoraAdapter, LoraSettings
    from edge_asr.models.openai_reader import read_openai
    from edge_asr.models.whisper_torch import from_checkpoint

    base = read_openai(student_pt)
    adapter = LoraAdapter(from_checkpoint(base), LoraSettings(rank=4, dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in adapter.model.parameters():
            if parameter.requires_grad:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return adapter.save(tmp_path_factory.mktemp("adapter") / "cards", base)


def test_compile_merges_the_adapter_and_records_it(adapter_dir, student_pt, student_bundle, tmp_path_factory):
    from edge_asr.runtime.bundle import load_bundle
    from edge_asr.runtime.file_stamps import sha256_of
    from edge_asr.runtime.engines import load_engine

    adapted = compiled_bundle(tmp_path_factory, "adapted", "--model", student_pt, "--adapter", adapter_dir,
                              "--precision", "fp32")
    manifest = json.loads((adapted / "manifest.json").read_text())
    info = json.loads((adapter_dir / "adapter.json").read_text())
    assert manifest["source"]["adapter"] == {"name": "cards", "sha256": info["weights_sha256"],
                                             "base_model": "student", "base_sha256": sha256_of([student_pt])}
    assert manifest["model"]["name"] == "student+cards" and manifest["model"]["needs_30s_padding"] is False
    mel = noise_mel(400)[None]
    plain, merged = (load_engine(load_bundle(b), 2).encode(mel).cross_k for b in (student_bundle, adapted))
    assert plain.shape == merged.shape and np.abs(plain - merged).max() > 1e-3


def test_compile_refuses_a_bad_adapter_in_one_sentence(adapter_dir, student_pt, tmp_path):
    require("peft", "onnx")
    damaged = shutil.copytree(adapter_dir, tmp_path / "damaged")
    (damaged / "adapter.safetensors").write_bytes(b"not tensors")
    other = save_tiny_whisper(tmp_path / "other.pt", seed=1)
    for model, adapter, words in (
        (student_pt, tmp_path / "nowhere", "adapter.json is missing"),
        (student_pt, damaged, "does not match the sha256 in adapter.json"),
        (other, adapter_dir, "was trained on student"),
    ):
        done = run_cli("compile", "--model", model, "--adapter", adapter, "--precision", "fp32", "-o", tmp_path / "out")
        assert done.returncode == 1, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("edge-asr: ") and words in last and "Traceback" not in done.stderr, done.stderr
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("policy, audio_frames, ended_s, consumed", [
    (STUDENT, 3000, 10.84, 1084),  # a full window whose text ended 19 s early: resumed where the text ended
    (STUDENT, 3000, 28.5, 3000),  # ended within EARLY_END_S of the window's end: openai's rule
    (STUDENT, 1600, 5.0, 1600),  # a file's last, shorter window: nothing after it to skip
    (STOCK, 3000, 10.84, 3000),  # stock Whisper keeps openai's rule
])
def test_a_students_full_window_that_ends_its_text_early_resumes_there(tok, policy, audio_frames, ended_s, consumed):
    from edge_asr.runtime.decoding.segments import split_segments

    ts = lambda s: tok.timestamp_begin + round(s / 0.02)  # noqa: E731
    tokens = [ts(0.0), *tok.encode(" And so my fellow Americans"), ts(ended_s)]  # a single timestamp ending
    spans, openai_consumed = split_segments(tokens, tok.timestamp_begin, audio_frames)
    assert openai_consumed == audio_frames
    options = TranscribeOptions(window_policy=policy).validate()
    assert _resume_point(spans, openai_consumed, audio_frames, options) == consumed


@pytest.mark.parametrize("policy, silent", [(STOCK, False), (WindowPolicy(False, 1.0, -0.8), True)])
def test_a_models_own_silence_gate_skips_a_confident_word_on_noise(policy, silent):
    """The tiny.en student's "You" on a tune-set noise clip: no-speech 0.95, average log-probability -0.92."""
    from edge_asr.runtime.decoding.decode import DecodingResult
    from edge_asr.runtime.decoding.transcribe import _is_silence

    result = DecodingResult(tokens=[], text=" You", avg_logprob=-0.92, no_speech_prob=0.95, temperature=0.0,
                            compression_ratio=1.0, language="en", finished=True)
    assert _is_silence(result, TranscribeOptions(window_policy=policy).validate()) is silent
