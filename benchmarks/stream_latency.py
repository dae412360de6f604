"""Latency of `edge-asr stream` from the end of speech to the final text, and its CPU use in silence.

Latency: the developer clips, each followed by 1.5 s of faint noise (-60 dBFS), make one stream that
FileSource plays at real-time pace into one StreamRecognizer, as `edge-asr stream --input FILE
--realtime` does. A final's latency is the time.monotonic() at which push() returns it less the moment
its speech ended (the source's start plus the event's voiced_end). It splits into the wait for the
pause (the audio that ends the utterance arrives min_silence after the speech), the backlog (that
block was handed over late because earlier pushes, the partials and the decoding at the pause,
overran real time) and the push() call that returned the final. The finals, joined, are scored
against the references joined, to show that the run produced the right words.

Idle: N seconds of the same faint noise at real-time pace through a fresh recognizer: process CPU
time (all threads) over wall time, in percent of one core, and the encoder calls, which must be 0.

    python3 -m edge_asr.benchmarks.stream_latency --bundle DIR [--threads 2] [--idle-seconds 20]
        [--json FILE] [--compare-context]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_asr.benchmarks.dev_clips import Clip, developer_clips
from edge_asr.benchmarks.stream_wer import CountingEngine
from edge_asr.benchmarks.wer import corpus_wer
from edge_asr.runtime.audio import SAMPLE_RATE, load_audio
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.streaming.recognizer import StreamOptions, StreamRecognizer
from edge_asr.runtime.streaming.sources import FileSource
from edge_asr.runtime.streaming.vad import SileroVad
from edge_asr.runtime.transcriber import Transcriber

GAP_S = 1.5  # silence after each clip: longer than any pause that ends an utterance
NOISE_DBFS = -60.0


@dataclass
class Final:
    voiced_end: float  # stream seconds at which the VAD says the speech stopped
    wait_s: float  # until the block that ended the utterance was due
    late_s: float  # that block handed over after it was due
    push_s: float  # inside the push() that returned the final
    text: str

    @property
    def latency_s(self) -> float:
        return self.wait_s + self.late_s + self.push_s


@dataclass
class Playback:
    finals: list[Final]
    partials: int
    wall_s: float
    cpu_s: float


def faint_noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at NOISE_DBFS RMS: a quiet room rather than digital zeros."""
    return (rng.standard_normal(round(seconds * SAMPLE_RATE)) * 10 ** (NOISE_DBFS / 20)).astype(np.float32)


def speech_stream(clips: list[Clip], rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([part for clip in clips for part in (load_audio(clip.path), faint_noise(GAP_S, rng))])


def play(recognizer: StreamRecognizer, audio: np.ndarray) -> Playback:
    """Plays the audio through FileSource's real-time pacing into the recognizer, timing each final."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "stream.wav"
        sf.write(path, audio, SAMPLE_RATE, subtype="FLOAT")
        source = FileSource(path, realtime=True)
    timed, heard = [], 0
    cpu, wall = time.process_time(), time.monotonic()
    for block in source.blocks():
        heard += len(block)
        timed += _timed(lambda: recognizer.push(block), source.started_at + heard / SAMPLE_RATE)
    timed += _timed(recognizer.flush, source.started_at + heard / SAMPLE_RATE)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    finals = [Final(e.voiced_end, due - source.started_at - e.voiced_end, called - due, returned - called, e.text)
              for e, due, called, returned in timed if e.type == "final"]
    return Playback(finals, sum(e.type == "partial" for e, *_ in timed), wall, cpu)


def _timed(call, due: float) -> list[tuple]:
    """(event, when its audio was due, when the call began, when it returned) for each event returned."""
    called = time.monotonic()
    events = call()
    returned = time.monotonic()
    return [(event, due, called, returned) for event in events]


def counted_recognizer(transcriber: Transcriber, vad: SileroVad,
                       options: StreamOptions) -> tuple[StreamRecognizer, CountingEngine]:
    vad.reset()
    engine = CountingEngine(transcriber.engine)
    return StreamRecognizer(engine, transcriber.tokenizer, vad, transcriber.options(), options), engine


def latency_run(transcriber: Transcriber, vad: SileroVad, options: StreamOptions, audio: np.ndarray,
                references: list[str]) -> dict:
    recognizer, engine = counted_recognizer(transcriber, vad, options)
    run = play(recognizer, audio)
    latencies = [f.latency_s for f in run.finals]
    return {
        "encoder_context": options.encoder_context,
        "wer": corpus_wer([(" ".join(references), " ".join(f.text for f in run.finals))]),
        "partials": run.partials, "encoder_calls": engine.encoder_calls, "encoder_seconds": engine.encoder_seconds,
        "p50_s": float(np.percentile(latencies, 50)), "p90_s": float(np.percentile(latencies, 90)),
        "max_s": max(latencies),
        "finals": [asdict(f) | {"latency_s": f.latency_s} for f in run.finals],
    }


def idle_run(transcriber: Transcriber, vad: SileroVad, options: StreamOptions, seconds: float,
             rng: np.random.Generator) -> dict:
    recognizer, engine = counted_recognizer(transcriber, vad, options)
    run = play(recognizer, faint_noise(seconds, rng))
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
    # Before the engine, as `edge-asr stream` makes it: so the VAD gets a thread of its own. Made after,
    # it runs on the engine's shared onnxruntime pool, whose idle thread spins after every 32 ms window.
    vad = SileroVad()
    transcriber = Transcriber(args.bundle, threads=args.threads)
    transcriber.transcribe(clips[0].path)  # warm-up: the first utterance should not pay for the engine's first run
    contexts = ("full", "utterance") if args.compare_context else (options.encoder_context,)
    references = [clip.reference for clip in clips]
    runs = [latency_run(transcriber, vad, replace(options, encoder_context=context), audio, references)
            for context in contexts]
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
