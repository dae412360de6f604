"""The report side of `edge-asr bench`: machine record, result document views, and the CI gate."""
from __future__ import annotations

import copy
import json
import re
import sys

import pytest

from edge_asr.benchmarks.gate import compare, parse_margin
from edge_asr.benchmarks.machine import machine_record
from edge_asr.benchmarks.report import SCHEMA, ResultError, load_result, markdown, plot, write_json, write_outputs

NVML_REASON = "NVML found no NVIDIA GPU on this machine."


def fake_root(tmp_path, files: dict[str, str]) -> str:
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


def power(source: str, watts: float | None) -> dict:
    if watts is None:
        return {"source": source, "describes": "NVIDIA GPU (NVML)", "available": False, "reason": NVML_REASON,
                "mean_w": None, "peak_w": None, "joules": None, "samples": 0, "seconds": 0.0, "joules_per_audio_s": None}
    return {"source": source, "describes": "CPU package (RAPL)", "available": True, "reason": None,
            "mean_w": watts, "peak_w": watts * 1.2, "joules": watts * 1.95, "samples": 20, "seconds": 1.95,
            "joules_per_audio_s": watts * 1.95 / 44.7}


def run(system: str, config: str, rtf: float, wer: float | None, edge: bool, latency: list[float] | None = None) -> dict:
    clips = [("jfk", 11.0), ("1284-1180-0001", 15.3), ("1284-1180-0002", 18.4)]
    return {
        "system": system, "config": config, "audio_s": 44.7, "seconds": rtf * 44.7, "rtf": rtf,
        "repeat_seconds": [rtf * 44.7] * 3, "load_s": 0.41,
        "encoder_s": 0.9 if edge else None, "decoder_s": 0.95 if edge else None,
        "tokens": 312 if edge else None, "tokens_per_s": 328.4 if edge else None,
        "peak_rss_mb": 262.0 if edge else 291.0, "gpu_peak_mb": None, "wer": wer,
        "clips": [{"name": name, "audio_s": s, "seconds": rtf * s * (1 + i / 10), "rtf": rtf * (1 + i / 10),
                   "text": "words", "reference": "words", "wer": 0.0} for i, (name, s) in enumerate(clips)],
        "latency": latency and {"p50_s": 0.299, "p90_s": 0.319, "p99_s": 0.324, "max_s": max(latency),
                                "values_s": latency, "kept_up": True},
        "power": [power("rapl", 12.3), power("nvml", None)] if edge else [],
    }


def sample_doc(mode: str = "offline") -> dict:
    """An edge-asr run and a faster-whisper run offline; one edge-asr run with latencies in stream mode."""
    offline = mode == "offline"
    runs = [run("edge-asr", "tiny.en int8 onnxruntime cpu, 2 threads", 0.0434, 3.23, edge=True,
                latency=None if offline else [0.28, 0.299, 0.31, 0.319, 0.325])]
    if offline:
        runs.append(run("faster-whisper", "tiny.en int8 ctranslate2 cpu, 2 threads", 0.0658, None, edge=False))
    return {
        "schema": SCHEMA, "created": "2026-11-21T12:00:00Z", "command": "edge-asr bench --bundle b",
        "machine": {"cpu_model": "ARM Cortex-A72", "board": "Raspberry Pi 4 Model B Rev 1.4", "cores": 4},
        "bundle": {"path": "b", "model": "tiny.en", "backend": "onnxruntime", "target": "cpu", "precision": "int8",
                   "files_sha256": {"encoder.onnx": "aa", "decoder.onnx": "bb"}, "source_sha256": "cc"},
        "settings": {"mode": mode, "clip_set": "developer", "clips": 3, "audio_s": 44.7, "threads": 2,
                     "warmup": 1, "repeats": 3, "streams": 1, "power": "auto"},
        "runs": runs,
        "ratios": {"faster-whisper": {"seconds": 0.66, "peak_rss": 0.9, "wer_points": None}} if offline else {},
    }


# --- machine -----------------------------------------------------------------------------------------

def test_machine_record_names_a_raspberry_pi_4(tmp_path):
    core = "processor\t: {}\nBogoMIPS\t: 108.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n"
    root = fake_root(tmp_path, {
        "proc/cpuinfo": "".join(core.format(i) for i in range(4)) + "Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n",
        "proc/device-tree/model": "Raspberry Pi 4 Model B Rev 1.4\0",
        "proc/meminfo": "MemTotal:        3884432 kB\nMemFree:  1000 kB\n",
    })
    record = machine_record(root)
    assert record["cpu_model"] == "ARM Cortex-A72"
    assert record["board"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert record["memory_mb"] == 3793
    assert record["l4t"] is None


def test_machine_record_reads_the_jetson_release(tmp_path):
    root = fake_root(tmp_path, {
        "proc/cpuinfo": "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd42\n",
        "proc/device-tree/model": "NVIDIA Jetson AGX Orin Developer Kit\0",
        "etc/nv_tegra_release": "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n",
    })
    record = machine_record(root, gpu="Orin (nvgpu)")
    assert (record["l4t"], record["cpu_model"], record["gpu"]) == ("R35.4.1", "ARM Cortex-A78AE", "Orin (nvgpu)")
    assert record["board"] == "NVIDIA Jetson AGX Orin Developer Kit"


def test_machine_record_on_an_empty_root_is_all_nulls(tmp_path):
    record = machine_record(str(tmp_path))
    assert [record[k] for k in ("cpu_model", "board", "l4t", "memory_mb", "gpu")] == [None] * 5
    assert record["python"] and record["cores"] >= 1


def test_machine_record_of_this_machine():
    record = machine_record()
    assert isinstance(record["cpu_model"], str) and record["cpu_model"]
    assert record["cores"] >= 1 and 1 <= record["usable_cores"] <= record["cores"]
    assert record["libraries"]["edge-asr"] and record["libraries"]["numpy"]
    json.dumps(record)


# --- result document ---------------------------------------------------------------------------------

def test_write_json_and_load_result_round_trip(tmp_path):
    doc = sample_doc()
    assert load_result(write_json(doc, tmp_path / "bench.json")) == doc


@pytest.mark.parametrize("content, message", [
    (None, "no result file"),
    ("{not json", "not JSON"),
    (json.dumps({"schema": "edge-asr-bench/2", "runs": []}),
     "edge-asr-bench/2, newer than this edge-asr reads (edge-asr-bench/1)"),
    (json.dumps({"schema": "whisper-bench", "runs": []}), "not an edge-asr bench result"),
    (json.dumps({"schema": "edge-asr-bench/0", "runs": []}), "not an edge-asr bench result"),
    ("[]", "not an edge-asr bench result"),
    (json.dumps({"schema": SCHEMA}), "no \"runs\""),
])
def test_load_result_explains_in_one_sentence(tmp_path, content, message):
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ResultError, match=re.escape(message)) as raised:
        load_result(path)
    text = str(raised.value)
    assert "\n" not in text and text.endswith(".") and text.count(". ") == 0


def test_markdown_has_a_row_per_run_and_no_zero_for_missing_power():
    text = markdown(sample_doc())
    header = next(line for line in text.splitlines() if line.startswith("| system"))
    rows = [line for line in text.splitlines() if line.startswith(("| edge-asr", "| faster-whisper"))]
    assert len(rows) == 2 and "0.0434" in rows[0] and "0.0658" in rows[1]
    assert "| – |" in rows[1]  # faster-whisper has no encoder time
    assert f"[^1]: nvml unavailable: {NVML_REASON}" in text and "unavailable[^1]" in rows[0]
    assert "0.00 W" not in text and "| 0.00 |" not in text
    assert "edge-asr / faster-whisper: time 0.66×" in text
    assert "p50 ms" not in header and "GPU MB" not in header and "rapl mean W" in header
    assert "| jfk | 0.0434 | 0.0658 |" in text


def test_markdown_of_a_stream_run_shows_latency():
    text = markdown(sample_doc("stream"))
    header = next(line for line in text.splitlines() if line.startswith("| system"))
    assert "p50 ms" in header and "p99 ms" in header
    assert "| 299 | 319 | 324 | yes |" in text


@pytest.mark.parametrize("mode", ["offline", "stream"])
def test_plot_writes_a_png(tmp_path, mode):
    pytest.importorskip("matplotlib")
    path = plot(sample_doc(mode), tmp_path / "bench.png")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and path.stat().st_size > 1000


def test_write_outputs_writes_json_markdown_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    written = write_outputs(sample_doc(), tmp_path / "out")
    assert {k: p.name for k, p in written.items()} == {"json": "bench.json", "md": "bench.md", "png": "bench.png"}
    assert all(p.stat().st_size > 0 for p in written.values())


def test_without_matplotlib_there_is_no_png(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import raises ImportError
    assert plot(sample_doc(), tmp_path / "bench.png") is None
    assert sorted(write_outputs(sample_doc(), tmp_path)) == ["json", "md"]


# --- gate --------------------------------------------------------------------------------------------

def with_edge(doc: dict, **changes) -> dict:
    doc = copy.deepcopy(doc)
    doc["runs"][0].update(changes)
    return doc


def test_gate_passes_an_equal_baseline():
    result = compare(sample_doc(), sample_doc(), 0.10)
    assert result.passed and not result.warnings
    assert result.lines[0] == "RTF 0.0434 vs baseline 0.0434: +0.0 % (limit +10 %) ok"


@pytest.mark.parametrize("factor, passed", [(1.15, False), (1.05, True), (0.8, True)])
def test_gate_on_rtf(factor, passed):
    baseline = sample_doc()
    result = compare(with_edge(baseline, rtf=0.0434 * factor), baseline, 0.10)
    assert result.passed is passed
    assert result.lines[0].endswith("ok" if passed else "REGRESSION")


@pytest.mark.parametrize("wer, passed", [(4.0, False), (3.5, True), (2.0, True)])
def test_gate_on_wer(wer, passed):
    baseline = sample_doc()
    assert compare(with_edge(baseline, wer=wer), baseline, 0.10).passed is passed


def test_gate_wer_floor_forgives_one_word():
    baseline = sample_doc()
    assert compare(with_edge(baseline, wer=4.0), baseline, 0.10, wer_floor_points=1.0).passed


def test_gate_skips_a_missing_wer_with_a_note():
    baseline = sample_doc()
    result = compare(with_edge(baseline, wer=None), baseline, 0.10)
    assert result.passed and result.lines[1].startswith("WER not checked")


def test_gate_needs_an_edge_asr_run():
    peers_only = sample_doc()
    peers_only["runs"] = peers_only["runs"][1:]
    with pytest.raises(ResultError, match="no edge-asr run"):
        compare(peers_only, sample_doc(), 0.10)
    with pytest.raises(ResultError, match="baseline has no edge-asr run"):
        compare(sample_doc(), peers_only, 0.10)


def test_gate_warns_when_the_comparison_is_not_like_for_like():
    current = sample_doc()
    current["settings"]["threads"] = 4
    current["bundle"]["files_sha256"]["encoder.onnx"] = "dd"
    current["machine"]["cpu_model"] = "Intel(R) Xeon(R) Processor"
    result = compare(current, sample_doc(), 0.10)
    assert result.passed and len(result.warnings) == 3
    settings, bundle, machine = result.warnings
    assert "threads 4 vs 2" in settings and "encoder.onnx" in bundle and "meaningless" in machine


@pytest.mark.parametrize("text, margin", [("10%", 0.10), ("10", 0.10), ("0.1", 0.1), (" 2.5 % ", 0.025), ("0", 0.0)])
def test_parse_margin(text, margin):
    assert parse_margin(text) == pytest.approx(margin)


@pytest.mark.parametrize("text", ["-5%", "ten", "", "inf", "%"])
def test_parse_margin_rejects_garbage(text):
    with pytest.raises(ValueError, match="percentage such as 10%"):
        parse_margin(text)
