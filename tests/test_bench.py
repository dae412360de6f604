"""`edge-asr bench`: clip sets, the timed engine, real-time playback, and whole runs on tiny.en."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import require, run_cli
from edge_asr.models.clips import JFK, JFK_TEXT, folder_clips, read_references
from edge_asr.benchmarks.realtime_play import BLOCK, play
from edge_asr.runtime.engines.timed import TimedEngine
from edge_asr.models.wer import normalise
from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.streaming.events import StreamEvent


def clip_folder(tmp_path: Path, references: str | None = f"jfk\t{JFK_TEXT}\n") -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(JFK, folder / "jfk.wav")
    if references is not None:
        (folder / "references.tsv").write_text(references)
    return folder


def test_folder_clips_take_references_by_stem_or_name(tmp_path):
    folder = clip_folder(tmp_path, "# comment\n\njfk.wav\tAsk not.\n")
    (folder / "notes.txt").write_text("not audio")
    clips = folder_clips(folder)
    assert [(c.name, c.reference) for c in clips] == [("jfk", "Ask not.")]
    assert read_references(folder / "references.tsv") == {"jfk.wav": "Ask not."}


def test_folder_clips_without_references(tmp_path):
    assert folder_clips(clip_folder(tmp_path, None))[0].reference is None


@pytest.mark.parametrize("references, message", [
    ("jfk Ask not\n", "expected `name<TAB>text`"),
    ("jfk\tAsk not\nkennedy\tnot here\n", "names clips that are not in"),
])
def test_bad_references_are_one_sentence(tmp_path, references, message):
    with pytest.raises(EdgeAsrError, match=message):
        folder_clips(clip_folder(tmp_path, references))


def test_folder_without_audio_is_refused(tmp_path):
    with pytest.raises(EdgeAsrError, match="holds no audio files"):
        folder_clips(tmp_path)
    with pytest.raises(EdgeAsrError, match="is not a folder"):
        folder_clips(tmp_path / "missing")
    with pytest.raises(EdgeAsrError, match="does not exist"):
        folder_clips(clip_folder(tmp_path, None), tmp_path / "missing.tsv")


class SleepyEngine:
    """An engine whose calls take known time, to check what TimedEngine adds up."""

    dims = None

    def encode(self, mel):
        time.sleep(0.02)
        return "audio"

    def decode(self, tokens, offsets, cache, audio, select):
        time.sleep(0.01)
        return np.zeros((1, 1, 4), np.float32)

    def new_cache(self, batch):
        return f"cache{batch}"


def test_timed_engine_counts_and_times_calls_by_kind():
    engine = TimedEngine(SleepyEngine())
    assert engine.encode(np.zeros((2, 80, 100), np.float32)) == "audio"
    engine.decode(np.zeros((2, 5), np.int64), None, None, None, None)  # a prompt pass: 5 tokens a row
    for _ in range(3):
        engine.decode(np.zeros((2, 1), np.int64), None, None, None, None)  # a step: one token a row
    assert engine.new_cache(2) == "cache2"  # everything else passes through
    tally = engine.tally()
    assert [(tally[op].calls, tally[op].rows) for op in ("encode", "prompt", "step")] == [(1, 2), (1, 2), (3, 6)]
    assert (engine.encoder_calls, engine.encoder_frames) == (1, 200)
    assert 0.02 <= engine.encoder_seconds < 0.2 and 0.04 <= engine.decoder_seconds < 0.4
    assert 0.03 <= tally["step"].seconds < tally["step"].seconds + tally["prompt"].seconds == engine.decoder_seconds
    engine.reset()
    assert [engine.tally()[op].calls for op in ("encode", "prompt", "step")] == [0, 0, 0]
    assert engine.decoder_seconds == 0.0


class ScriptedRecognizer:
    """Says a final when it has heard `final_at` samples, whose speech ended `speech_end` s in."""

    def __init__(self, final_at: int, speech_end: float, work_s: float = 0.0):
        self.heard, self.final_at, self.speech_end, self.work_s = 0, final_at, speech_end, work_s

    def push(self, samples):
        before, self.heard = self.heard, self.heard + len(samples)
        time.sleep(self.work_s)
        if before < self.final_at <= self.heard:
            return [StreamEvent("final", 0.0, self.speech_end, "words", voiced_end=self.speech_end)]
        return [StreamEvent("partial", 0.0, self.heard / SAMPLE_RATE, "wor")] if before == 0 else []

    def flush(self):
        return [StreamEvent("final", 0.0, self.heard / SAMPLE_RATE, "end", voiced_end=self.heard / SAMPLE_RATE)]


def test_play_paces_streams_and_splits_latency():
    audio = np.zeros(8 * BLOCK, np.float32)  # 256 ms
    recognizers = [ScriptedRecognizer(4 * BLOCK, 2 * BLOCK / SAMPLE_RATE), ScriptedRecognizer(6 * BLOCK, 0.1)]
    started = time.monotonic()
    run = play(recognizers, [audio, audio[: 7 * BLOCK]])
    assert time.monotonic() - started >= 0.25  # real-time pace, not as fast as possible
    assert run.texts == ["words end", "words end"] and run.partials == 2 and run.kept_up
    first = run.finals[0]
    assert first.stream == 0 and first.text == "words"
    # The block that ended its utterance was due 4 blocks in; the speech ended 2 blocks in.
    assert first.wait_s == pytest.approx(2 * BLOCK / SAMPLE_RATE)
    assert first.latency_s == pytest.approx(first.wait_s + first.late_s + first.push_s)
    assert first.late_s < 0.05 and first.push_s < 0.05
    ends = [f for f in run.finals if f.text == "end"]  # flushed as each stream's audio ran out
    assert [f.stream for f in ends] == [1, 0]
    assert run.audio_s == pytest.approx(8 * BLOCK / SAMPLE_RATE)


def test_play_says_when_a_stream_falls_behind():
    audio = np.zeros(40 * BLOCK, np.float32)  # 1.28 s, and each 32 ms block costs 70 ms
    run = play([ScriptedRecognizer(10**9, 0.0, work_s=0.07)], [audio])
    assert not run.kept_up and run.max_lag_s > 1.0
    assert run.busy_s[0] >= 40 * 0.07


@pytest.fixture(scope="module")
def bench_out(tiny_bundle, tmp_path_factory) -> Path:
    """One offline bench run of the JFK clip, with the faster-whisper peer when it is installed."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "out"
    done = run_cli("bench", "--bundle", tiny_bundle, "--clips", clip_folder(tmp), "--warmup", "1", "--repeats", "2",
                   "--power", "none", "--out", out, "--threads", "2")
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_bench_writes_json_markdown_and_plot(bench_out):
    doc = json.loads((bench_out / "bench.json").read_text())
    assert doc["schema"] == "edge-asr-bench/1" and doc["settings"]["clips"] == 1
    edge = doc["runs"][0]
    assert edge["system"] == "edge-asr" and edge["audio_s"] == pytest.approx(11.0, abs=0.01)
    assert len(edge["repeat_seconds"]) == 2 and edge["rtf"] == pytest.approx(edge["seconds"] / edge["audio_s"])
    assert edge["wer"] == 0.0 and normalise(edge["clips"][0]["text"]) == normalise(JFK_TEXT)
    assert 0 < edge["encoder_s"] + edge["decoder_s"] < edge["seconds"]
    assert edge["tokens"] > 20 and edge["tokens_per_s"] == pytest.approx(edge["tokens"] / edge["decoder_s"])
    assert 50 < edge["peak_rss_mb"] < 2000 and edge["load_s"] > 0
    assert edge["power"] == [] and edge["latency"] is None
    assert "edge-asr" in (bench_out / "bench.md").read_text()
    if (bench_out / "bench.png").exists():
        assert (bench_out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_runs_the_peer_on_the_same_weights(bench_out):
    require("faster_whisper")
    doc = json.loads((bench_out / "bench.json").read_text())
    assert [r["system"] for r in doc["runs"]] == ["edge-asr", "faster-whisper"]
    peer = doc["runs"][1]
    assert peer["wer"] == 0.0 and peer["encoder_s"] is None
    ratio = doc["ratios"]["faster-whisper"]
    assert ratio["seconds"] == pytest.approx(doc["runs"][0]["seconds"] / peer["seconds"])
    assert ratio["wer_points"] == 0.0


def test_bench_gate_exit_status(bench_out, tiny_bundle, tmp_path):
    doc = json.loads((bench_out / "bench.json").read_text())
    faster = json.loads(json.dumps(doc))
    for run in faster["runs"]:
        run["rtf"] /= 1000  # a baseline a thousand times faster: any real run is a regression
    (tmp_path / "fast.json").write_text(json.dumps(faster))
    args = ["bench", "--bundle", tiny_bundle, "--clips", clip_folder(tmp_path), "--warmup", "0", "--repeats", "1",
            "--power", "none", "--peer", "none", "--out", tmp_path / "out", "--baseline"]
    worse = run_cli(*args, tmp_path / "fast.json")
    assert worse.returncode == 3, worse.stderr
    assert "REGRESSION" in worse.stdout


def test_bench_refuses_bad_input_in_one_sentence(tiny_bundle, tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    for args, message in [
        (["--baseline", tmp_path / "broken.json"], "broken.json"),
        (["--clips", tmp_path / "nowhere"], "is not a folder"),
        (["--max-regression", "lots"], "lots"),
    ]:
        done = run_cli("bench", "--bundle", tiny_bundle, "--out", tmp_path / "out", *args)
        assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.slow
def test_bench_stream_mode_reports_latency_per_stream(tiny_bundle, tmp_path):
    """Two real-time streams of the JFK clip (12.5 s of wall time): the finals' latency and the words."""
    out = tmp_path / "out"
    done = run_cli("bench", "--bundle", tiny_bundle, "--clips", clip_folder(tmp_path), "--mode", "stream",
                   "--streams", "2", "--power", "none", "--out", out, "--threads", "2")
    assert done.returncode == 0, done.stderr
    assert "peer skipped: faster-whisper has no streaming mode" in done.stderr
    doc = json.loads((out / "bench.json").read_text())
    (edge,) = doc["runs"]
    assert doc["settings"]["streams"] == 2 and [c["name"] for c in edge["clips"]] == ["stream-0", "stream-1"]
    assert edge["wer"] == 0.0 and all(c["wer"] == 0.0 for c in edge["clips"])
    latency = edge["latency"]
    assert len(latency["values_s"]) >= 2 and latency["kept_up"] is True
    # A final cannot come before the pause that ends the utterance (min_silence 250 ms) has been heard.
    assert 0.25 <= latency["p50_s"] <= latency["p90_s"] <= latency["p99_s"] <= latency["max_s"]
    assert edge["audio_s"] == pytest.approx(2 * 12.5, abs=0.05)
    assert sum(c["seconds"] for c in edge["clips"]) == pytest.approx(edge["seconds"])
    assert "p50 ms" in (out / "bench.md").read_text()


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="VmHWM is Linux's")
def test_a_childs_peak_memory_is_its_own_not_its_parents():
    """A bench child of a parent that just compiled a bundle reported the parent's 1.4 GB (Linux keeps the maximum
    RSS across exec); the child's own VmHWM does not carry it."""
    import subprocess
    import sys

    child = ("import subprocess, sys, numpy; big = numpy.ones(300_000_000 // 8); "  # the parent: 300 MB touched
             "print(subprocess.run([sys.executable, '-c', 'from edge_asr.benchmarks.bench_run import own_peak_rss_mb; "
             "print(own_peak_rss_mb())'], capture_output=True, text=True, check=True).stdout)")
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    assert 0 < float(done.stdout) < 150  # 32 MB here; getrusage in the same child said 313
