"""Latency of `edge-asr stream` from the end of speech to the final text, and its CPU use in silence.

Latency: the developer clips, each followed by 1.5 s of faint noise (-60 dBFS), make one stream
played at real-time pace into one StreamRecognizer (benchmarks/realtime_play.py says how a final's
latency is taken and split). The finals, joined, are scored against the references joined, to show
that the run produced the right words. `edge-asr bench --mode stream` gives the same percentiles for
any clip set and stream count; this script adds the split per utterance, the encoder-context
comparison and the idle CPU.

Idle: N seconds of the same faint noise at real-time pace through a fresh recognizer: process CPU
time (all threads) over wall time, in percent of one core, and the encoder calls, which must be 0.

    python3 -m edge_asr.benchmarks.stream_latency --bundle DIR [--threads 2] [--idle-seconds 20]
        [--json FILE] [--compare-context]
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from edge_asr.models.clips import developer_clips
from edge_asr.benchmarks.realtime_play import faint_noise, play, speech_stream
from edge_asr.benchmarks.report import latency_figures
from edge_asr.runtime.engines.timed import TimedEngine
from edge_asr.models.wer import corpus_wer
from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.streaming.recognizer import StreamOptions, StreamRecognizer
from edge_asr.runtime.streaming.vad import SileroVad
from edge_asr.runtime.threads import Threads
from edge_asr.runtime.transcriber import Transcriber


def counted_recognizer(transcriber: Transcriber, vad: SileroVad,
                       options: StreamOptions) -> tuple[StreamRecognizer, TimedEngine]:
    vad.reset()
    engine = TimedEngine(transcriber.engine)
    return StreamRecognizer(engine, transcriber.tokenizer, vad, transcriber.options(), options), engine


def latency_run(transcriber: Transcriber, vad: SileroVad, options: StreamOptions, audio: np.ndarray,
                references: list[str]) -> dict:
    recognizer, engine = counted_recognizer(transcriber, vad, options)
    run = play([recognizer], [audio])
    latency = latency_figures([f.latency_s for f in run.finals], run.kept_up)
    if latency is None:
        raise EdgeAsrError(f"the {options.encoder_context} run gave no final text: no latency to report.")
    return {
        "encoder_context": options.encoder_context,
        "wer": corpus_wer([(" ".join(references), " ".join(f.text for f in run.finals))]),
        "partials": run.partials, "encoder_calls": engine.encoder_calls, "encoder_seconds": engine.encoder_seconds,
        **asdict(latency),
        "finals": [asdict(f) | {"latency_s": f.latency_s} for f in run.finals],
    }


def idle_run(transcriber: Transcriber, vad: SileroVad, options: StreamOptions, seconds: float,
             rng: np.random.Generator) -> dict:
    recognizer, engine = counted_recognizer(transcriber, vad, options)
    run = play([recognizer], [faint_noise(seconds, rng)])
    return {"seconds": run.wall_s, "cpu_percent": 100 * run.cpu_s / run.wall_s, "encoder_calls": engine.encoder_calls,
            "finals": len(run.finals), "partials": run.partials}


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f}"


def print_report(runs: list[dict], idle: dict) -> None:
    for run in runs:
        print(f"\nencoder context {run['encoder_context']}: per utterance (ms)\n\n"
              "| speech ended s | latency | wait for pause | backlog | in push() | text |\n|---:|---:|---:|---:|---:|---|")
        for f in run["finals"]:
            print(f"| {f['voiced_end']:.2f} | {ms(f['latency_s'])} | {ms(f['wait_s'])} | {ms(f['late_s'])} | "
                  f"{ms(f['push_s'])} | {f['text'][:40]} |")
    print("\n| encoder context | finals | partials | WER % | p50 ms | p90 ms | max ms | encoder calls |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        print(f"| {run['encoder_context']} | {len(run['finals'])} | {run['partials']} | {run['wer']:.2f} | "
              f"{ms(run['p50_s'])} | {ms(run['p90_s'])} | {ms(run['max_s'])} | {run['encoder_calls']} |")
    print(f"\n| idle s | CPU % of one core | encoder calls | finals |\n|---:|---:|---:|---:|\n"
          f"| {idle['seconds']:.1f} | {idle['cpu_percent']:.1f} | {idle['encoder_calls']} | {idle['finals']} |")


def main(argv: list[str] | None = None) -> int:
    defaults = StreamOptions()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--compare-context", action="store_true", help="latency with both encoder contexts")
    parser.add_argument("--encoder-context", choices=("utterance", "full"), default=defaults.encoder_context)
    parser.add_argument("--min-silence-ms", type=int, default=defaults.vad.min_silence_ms)
    parser.add_argument("--pad-after-ms", type=int, default=defaults.vad.pad_after_ms)
    parser.add_argument("--partial-interval", type=float, default=defaults.partial_interval_s)
    args = parser.parse_args(argv)

    vad_options = replace(defaults.vad, min_silence_ms=args.min_silence_ms, pad_after_ms=args.pad_after_ms)
    try:
        options = replace(defaults, vad=vad_options, partial_interval_s=args.partial_interval,
                          encoder_context=args.encoder_context).validate()
    except EdgeAsrError as err:
        parser.error(str(err))
    clips, rng = developer_clips(), np.random.default_rng(0)
    audio = speech_stream(clips, rng)
    threads = Threads(args.threads)
    vad = SileroVad(threads=threads)  # before the engine, as `edge-asr stream` makes it (runtime/threads.py)
    transcriber = Transcriber(args.bundle, threads=threads)
    transcriber.transcribe(clips[0].path)  # warm-up: the first utterance should not pay for the engine's first run
    contexts = ("full", "utterance") if args.compare_context else (options.encoder_context,)
    references = [clip.reference for clip in clips]
    try:
        runs = [latency_run(transcriber, vad, replace(options, encoder_context=context), audio, references)
                for context in contexts]
    except EdgeAsrError as err:
        sys.exit(f"stream_latency: {err}")
    idle = idle_run(transcriber, vad, options, args.idle_seconds, rng)
    print(f"{len(clips)} clips, {len(audio) / SAMPLE_RATE:.1f} s at real-time pace; {args.threads} threads; "
          f"min_silence {args.min_silence_ms} ms, pad_after {args.pad_after_ms} ms, partials every "
          f"{args.partial_interval} s")
    print_report(runs, idle)
    if args.json:
        args.json.write_text(json.dumps({"options": vars(args), "runs": runs, "idle": idle}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
