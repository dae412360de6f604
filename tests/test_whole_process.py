"""benchmarks/whole_process.py: fresh processes alternated ABBA, bytecode allowed for the untimed first runs only,
ratios and WER from what each process printed; and one real round against faster-whisper."""
import json
import os
import sys

import pytest

from edge_asr.benchmarks import whole_process
from edge_asr.benchmarks.whole_process import SystemRuns, alternate, report, texts_of
from edge_asr.models.clips import JFK, JFK_TEXT, Clip
from conftest import require


def recorder(name: str, log) -> list[str]:
    """A process that appends its name and whether it may write bytecode to ``log``, and prints one clip's JSON."""
    script = ("import json, os, sys; open(sys.argv[1], 'a').write(sys.argv[2] + ('-' if "
              "os.environ.get('PYTHONDONTWRITEBYTECODE') else '+') + ' '); "
              "print(json.dumps({'file': 'a.wav', 'text': sys.argv[2]}))")
    return [sys.executable, "-c", script, str(log), name]


def test_rounds_alternate_abba_after_one_untimed_run_each_with_bytecode_allowed(tmp_path):
    log = tmp_path / "order"
    a, b = SystemRuns("A", recorder("A", log)), SystemRuns("B", recorder("B", log))
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    alternate([a, b], [env, env], rounds=4, log=lambda line: None)
    assert log.read_text().split() == ["A+", "B+", "A-", "B-", "B-", "A-", "A-", "B-", "B-", "A-"]
    assert len(a.wall_s) == len(b.cpu_s) == 4 and all(t > 0 for t in a.wall_s)
    assert a.texts == {"a.wav": "A"} and b.texts == {"a.wav": "B"}


def test_ratio_is_taken_per_round():
    edge, peer = SystemRuns("edge-asr", []), SystemRuns("faster-whisper", [])
    edge.wall_s, peer.wall_s = [1.0, 2.0, 1.5], [4.0, 2.0, 3.0]
    edge.cpu_s = peer.cpu_s = [1.0, 1.0, 1.0]
    doc = report(edge, peer, {})
    assert doc["ratio_per_round"] == {"median": 0.5, "min": 0.25, "max": 1.0}
    assert doc["systems"][0]["wall_median_s"] == 1.5 and doc["systems"][1]["wall_min_s"] == 2.0


def test_texts_come_from_json_lines_only():
    out = 'progress\n{"file": "a.wav", "text": "one"}\n{"file": "b.wav", "text": ""}\n'
    assert texts_of(out) == {"a.wav": "one", "b.wav": ""}


def test_words_on_clips_without_speech_are_counted_apart_from_wer():
    system = SystemRuns("edge-asr", [])
    system.texts = {"a.wav": "ask not", "noise.wav": "Thank you.", "hum.wav": ""}
    whole_process.score(system, [Clip("a", "a.wav", "Ask not."), Clip("noise", "noise.wav", ""),
                                 Clip("hum", "hum.wav", ""), Clip("unknown", "b.wav", None)])
    assert system.wer == 0.0 and system.nonspeech_words == 2


def test_a_failing_process_is_one_sentence(tmp_path):
    failing = SystemRuns("A", [sys.executable, "-c", "import sys; sys.exit('no such bundle')"])
    with pytest.raises(Exception, match=r"failed \(exit status 1\): no such bundle"):
        alternate([failing], [{}], rounds=1)


def test_one_round_against_faster_whisper(tiny_bundle, tmp_path):
    require("faster_whisper", "jiwer", "whisper_normalizer")
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    peer_model = manifest["source"]["checkpoint"]
    edge = SystemRuns("edge-asr", whole_process.edge_command(tiny_bundle, 2, [str(JFK)]))
    peer = SystemRuns("faster-whisper", whole_process.peer_command(peer_model, "int8", 2, "en", [str(JFK)]))
    alternate([edge, peer], [dict(os.environ)] * 2, rounds=1, log=lambda line: None)
    for system in (edge, peer):
        whole_process.score(system, [Clip("jfk", JFK, JFK_TEXT)])
        assert system.wer == 0.0 and system.nonspeech_words is None, system.texts
    assert 0 < report(edge, peer, {})["ratio_per_round"]["median"] < 10
