"""`edge-asr bench`: RTF, encoder and decoder time, memory, watts, WER and latency of a bundle over a
clip set, next to faster-whisper on the same weights; JSON, markdown and a plot; a regression gate.

Each system runs in a child process (benchmarks/bench_run.py) so that its peak memory is its own and
a failing peer cannot take the edge-asr figures with it.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import shlex
import subprocess
import sys
import threading
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from edge_asr.models.clips import developer_clips, folder_clips
from edge_asr.runtime.cli_args import positive_int
from edge_asr.runtime.errors import EdgeAsrError

if TYPE_CHECKING:
    from edge_asr.benchmarks.bench_run import BenchRun, BenchSpec

MODES = ("offline", "stream")
REGRESSION_EXIT = 3
DEFAULT_REPEATS = {"offline": 3, "stream": 1}  # a stream pass takes as long as its audio


class BenchError(EdgeAsrError):
    pass


def add_bench_parser(commands, add_model_arguments) -> None:
    be = commands.add_parser(
        "bench", help="measure RTF, latency, memory, watts and WER",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure a bundle over a clip set: real-time factor (processing seconds / audio seconds; "
        "below 1 is faster than real time), encoder and decoder time, decoded tokens per second, load time, "
        "peak memory, power, WER with the Whisper English normaliser, and in stream mode the latency from "
        "end of speech to final text. faster-whisper runs the same clips on the same weights when installed.",
        epilog="Exit status: 0 done (and within --max-regression of --baseline), 1 an error, "
        f"{REGRESSION_EXIT} RTF or WER worse than the baseline by more than the margin.\n"
        "Clips: the developer clips (JFK and the LibriVox clips of Debian pocketsphinx-testdata) unless "
        "--clips DIR; references from DIR/references.tsv (`name<TAB>text` lines) or --references.")
    add_model_arguments(be)
    be.add_argument("--clips", type=Path, metavar="DIR", help="a folder of audio clips (default: the developer clips)")
    be.add_argument("--references", type=Path, metavar="TSV", help="references, `name<TAB>text` per line")
    be.add_argument("--mode", choices=MODES, default="offline",
                    help="offline: each clip transcribed whole; stream: the clips played at real-time pace "
                    "through `edge-asr stream`'s recognizer (default: %(default)s)")
    be.add_argument("--vad", action="store_true",
                    help="offline: edge-asr transcribes only the speech the VAD finds (`transcribe --vad`), and "
                    "faster-whisper runs twice, without and with its vad_filter")
    be.add_argument("--streams", type=positive_int, default=1, metavar="N",
                    help="concurrent streams on one engine: clips transcribed N at a time (offline), or N "
                    "real-time streams (stream) (default: %(default)s)")
    be.add_argument("--warmup", type=int, default=1, metavar="N",
                    help="untimed transcriptions of the first clip before timing (default: %(default)s)")
    be.add_argument("--repeats", type=positive_int, metavar="N",
                    help="timed passes over the clips; figures are their median (default: 3 offline, 1 stream)")
    be.add_argument("--peer", choices=("auto", "faster-whisper", "none"), default="auto",
                    help="auto: faster-whisper when it is installed and the weights are found (default: %(default)s)")
    be.add_argument("--peer-model", type=Path, metavar="DIR",
                    help="the CTranslate2 model folder for faster-whisper (default: the bundle's source checkpoint)")
    be.add_argument("--power", default="auto", metavar="SOURCE",
                    help="auto, none, or a comma list of ina3221, tegrastats, rpi-pmic, usb-meter[:PORT], rapl, "
                    "nvml (default: %(default)s)")
    be.add_argument("--power-interval", type=float, default=0.1, metavar="S", help="seconds between power readings")
    be.add_argument("--out", type=Path, default=Path("bench-out"), metavar="DIR",
                    help="where bench.json, bench.md and bench.png go (default: %(default)s)")
    be.add_argument("--baseline", type=Path, metavar="FILE", help="a bench.json to compare with")
    be.add_argument("--max-regression", default="10%", metavar="PCT",
                    help="with --baseline: the largest RTF or WER increase allowed (default: %(default)s)")


def run(bundle: Path, args) -> int:
    from edge_asr.benchmarks.bench_run import BenchSpec
    from edge_asr.benchmarks.gate import compare, parse_margin
    from edge_asr.benchmarks.power import choose
    from edge_asr.benchmarks.report import load_result, markdown, write_outputs
    from edge_asr.runtime.bundle import load_bundle
    from edge_asr.runtime.threads import default_threads

    margin = _checked(parse_margin, args.max_regression)
    if args.power not in ("auto", "none"):
        _checked(choose, args.power)  # a misspelt source is refused now, not in the child
    baseline = load_result(args.baseline) if args.baseline else None  # refused before a long run, not after
    clips = folder_clips(args.clips, args.references) if args.clips else developer_clips()
    require_scoring(clips)
    manifest = load_bundle(Path(bundle)).manifest
    threads = args.threads or default_threads()
    if args.vad and args.mode != "offline":
        raise BenchError("--vad is for offline mode: streaming always runs the VAD.")
    spec = BenchSpec(
        system="edge-asr", mode=args.mode, clips=clips, bundle=str(bundle), precision=manifest["precision"],
        threads=threads, warmup=args.warmup, repeats=args.repeats or DEFAULT_REPEATS[args.mode],
        streams=args.streams, beam=args.beam, language=args.language or _implied_language(manifest), task=args.task,
        power=args.power, power_interval_s=args.power_interval, vad=args.vad,
        config=f"{manifest['model']['name']} {manifest['precision']} {manifest['backend']} {manifest['target']}, "
        f"{threads} threads" + (f", {args.streams} streams" if args.streams > 1 else "") + (", --vad" if args.vad else ""))
    runs = [measure_in_child(spec)]
    for peer in _peer_specs(spec, manifest, args):
        try:
            runs.append(measure_in_child(peer))
        except BenchError as err:  # the edge-asr figures are kept and reported
            print(f"edge-asr bench: {err}", file=sys.stderr)
    doc = document(spec, manifest, bundle, runs, clips, args)
    written = write_outputs(doc, args.out)
    print(markdown(doc))
    print("wrote " + ", ".join(str(p) for p in written.values()) +
          ("" if "png" in written else " (no plot: pip install matplotlib)"), file=sys.stderr)
    if baseline is None:
        return 0
    result = compare(doc, baseline, margin)
    for line in result.warnings:
        print(f"warning: {line}")
    print("\n".join(result.lines))
    return 0 if result.passed else REGRESSION_EXIT


def _checked(parse, text: str):
    """parse(text), its ValueError as one sentence from edge-asr."""
    try:
        return parse(text)
    except ValueError as err:
        raise BenchError(str(err)) from None


def require_scoring(clips) -> None:
    missing = [m for m in ("jiwer", "whisper_normalizer") if importlib.util.find_spec(m) is None]
    if missing and any(c.reference for c in clips):
        raise BenchError(f"scoring WER needs {', '.join(missing)}: pip install 'edge-asr[bench]'.")


def _implied_language(manifest: dict) -> str | None:
    return None if manifest["model"].get("multilingual") else "en"


def _peer_specs(spec: BenchSpec, manifest: dict, args) -> list[BenchSpec]:
    """faster-whisper on the bundle's own weights (with --vad: without and with its vad_filter), or none with a
    line that says why not."""
    if args.peer == "none":
        return []
    reason = None
    folder = args.peer_model or Path(manifest.get("source", {}).get("checkpoint", ""))
    if spec.mode != "offline":
        reason = "faster-whisper has no streaming mode; compare offline with --mode offline"
    elif importlib.util.find_spec("faster_whisper") is None:
        reason = "faster-whisper is not installed (pip install 'edge-asr[peers]')"
    elif not (folder / "model.bin").is_file():
        reason = f"{folder} is not a CTranslate2 model folder (no model.bin); pass --peer-model DIR"
    if reason is not None:
        if args.peer == "faster-whisper":
            raise BenchError(f"cannot run the peer: {reason}.")
        print(f"edge-asr bench: peer skipped: {reason}.", file=sys.stderr)
        return []
    compute = "int8" if spec.precision == "int8" else "float32"
    config = f"faster-whisper {compute} ctranslate2 cpu, {spec.threads} threads" + (
        f", {spec.streams} streams" if spec.streams > 1 else "")
    peer = {**vars(spec), "system": "faster-whisper", "bundle": None, "peer_model": str(folder), "vad": False,
            "config": config}
    peers = [type(spec)(**peer)]
    if spec.vad:
        peers.append(type(spec)(**{**peer, "system": "faster-whisper vad_filter", "vad": True,
                                   "config": config + ", vad_filter"}))
    return peers


def measure_in_child(spec: BenchSpec) -> BenchRun:
    """The run's figures from a child process, with its peak RSS (and GPU memory, when it used any)."""
    from edge_asr.benchmarks.bench_run import BenchRun

    from edge_asr.runtime.threads import Threads

    command = [sys.executable, "-m", "edge_asr.benchmarks.bench_run"]
    env = None if spec.system == "edge-asr" else Threads.environment_as_given()  # a peer starts as it ships
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    gpu = GpuMemoryWatch(proc.pid)
    proc.stdin.write(spec.to_json())
    proc.stdin.close()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    gpu.stop()
    if proc.returncode != 0:
        raise BenchError(f"the {spec.system} run failed (exit status {proc.returncode}); its error is above.")
    run = BenchRun.from_json(out)
    peak_rss_mb = run.peak_rss_mb if run.peak_rss_mb is not None else usage.ru_maxrss / 1024  # kilobytes on Linux
    return replace(run, peak_rss_mb=peak_rss_mb, gpu_peak_mb=gpu.peak_mb)


class GpuMemoryWatch:
    """The peak GPU memory NVML reports for one process; None when there is no GPU or it used none."""

    def __init__(self, pid: int, interval_s: float = 0.2):
        from edge_asr.runtime.gpu_memory import gpu_memory_used_mb

        self.pid, self.peak_mb, self._read = pid, None, gpu_memory_used_mb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(interval_s,), daemon=True)
        self._thread.start()

    def _watch(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            used = self._read(pid=self.pid)
            if used is None:
                continue
            self.peak_mb = used if self.peak_mb is None else max(self.peak_mb, used)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def document(spec: BenchSpec, manifest: dict, bundle: Path, runs: list[BenchRun], clips, args) -> dict:
    from edge_asr.benchmarks.machine import machine_record
    from edge_asr.benchmarks.report import SCHEMA

    edge = runs[0]
    ratios = {}
    for peer in runs[1:]:
        wer_points = edge.wer - peer.wer if edge.wer is not None and peer.wer is not None else None
        ratios[peer.system] = {"seconds": edge.seconds / peer.seconds,
                               "peak_rss": edge.peak_rss_mb / peer.peak_rss_mb, "wer_points": wer_points}
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join(["edge-asr", *sys.argv[1:]]),
        "machine": machine_record(),
        "bundle": {"path": str(bundle), "model": manifest["model"]["name"], "backend": manifest["backend"],
                   "target": manifest["target"], "precision": manifest["precision"],
                   "files_sha256": {f["path"]: f["sha256"] for f in manifest["files"].values()},
                   "source_sha256": manifest.get("source", {}).get("sha256")},
        "settings": {"mode": spec.mode, "clip_set": str(args.clips) if args.clips else "developer",
                     "clips": len(clips), "audio_s": edge.audio_s, "threads": spec.threads,
                     "warmup": spec.warmup, "repeats": spec.repeats, "streams": spec.streams, "power": spec.power},
        "runs": [asdict(run) for run in runs],
        "ratios": ratios,
    }
