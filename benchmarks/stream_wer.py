"""Words of streaming against offline transcription on the developer clips.

Each clip is streamed as fast as possible (the same code path as `edge-asr stream --input`), with
the encoder given the whole 30 s window or only the utterance plus a margin, and its final text
scored against the reference next to the offline transcript of the same bundle. Encoder calls and
the Mel frames they covered say what the shorter context saves.

    python3 -m edge_asr.benchmarks.stream_wer --bundle DIR [--threads 2] [--min-context S]
        [--pad-before-ms MS] [--pad-after-ms MS]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edge_asr.models.clips import Clip, developer_clips
from edge_asr.runtime.engines.timed import TimedEngine
from edge_asr.models.wer import corpus_wer
from edge_asr.runtime.audio import load_audio
from edge_asr.runtime.streaming.recognizer import StreamOptions, StreamRecognizer
from edge_asr.runtime.streaming.segmenter import VadOptions
from edge_asr.runtime.streaming.vad import SileroVad
from edge_asr.runtime.threads import Threads
from edge_asr.runtime.transcriber import Transcriber
from edge_asr.runtime.windows import STOCK_MIN_CONTEXT_S

BLOCK = 512


@dataclass
class StreamRun:
    texts: list[str]
    encoder_calls: int
    encoder_frames: int
    encoder_seconds: float
    seconds: float


def stream_text(recognizer: StreamRecognizer, audio) -> str:
    """The clip's final text, streamed in BLOCK-sample pushes as `edge-asr stream --input` does."""
    events = []
    for start in range(0, len(audio), BLOCK):
        events += recognizer.push(audio[start : start + BLOCK])
    events += recognizer.flush()
    return " ".join(e.text for e in events if e.type == "final" and e.text)


def stream_clips(transcriber: Transcriber, vad: SileroVad, clips: list[Clip], options: StreamOptions) -> StreamRun:
    engine = TimedEngine(transcriber.engine)
    texts, started = [], time.perf_counter()
    for clip in clips:
        vad.reset()
        recognizer = StreamRecognizer(engine, transcriber.tokenizer, vad, transcriber.options(), options)
        texts.append(stream_text(recognizer, load_audio(clip.path)))
    return StreamRun(texts, engine.encoder_calls, engine.encoder_frames, engine.encoder_seconds,
                     time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-context", type=float, metavar="S",
                        help="the shortest encoder input with --encoder-context utterance (default: the model's: "
                        f"{STOCK_MIN_CONTEXT_S:g} s for stock Whisper, none for a model that needs no padding)")
    parser.add_argument("--pad-before-ms", type=int, default=VadOptions().pad_before_ms, metavar="MS")
    parser.add_argument("--pad-after-ms", type=int, default=VadOptions().pad_after_ms, metavar="MS")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    clips = developer_clips()
    threads = Threads(args.threads)
    vad = SileroVad(threads=threads)  # before the engine (runtime/threads.py)
    transcriber = Transcriber(args.bundle, threads=threads)
    references = [c.reference for c in clips]
    offline = [transcriber.transcribe(c.path).text for c in clips]
    report = {"clips": len(clips), "offline_wer": corpus_wer(list(zip(references, offline, strict=True)))}
    print(f"{len(clips)} clips; offline WER {report['offline_wer']:.2f} %")
    for context in ("full", "utterance"):
        vad = VadOptions(pad_before_ms=args.pad_before_ms, pad_after_ms=args.pad_after_ms)
        options = StreamOptions(vad, partial_interval_s=0, encoder_context=context, min_context_s=args.min_context)
        run = stream_clips(transcriber, vad, clips, options)
        wer = corpus_wer(list(zip(references, run.texts, strict=True)))
        report[context] = {"wer": wer, "encoder_calls": run.encoder_calls, "encoder_frames": run.encoder_frames,
                           "encoder_seconds": run.encoder_seconds, "seconds": run.seconds}
        print(f"stream, encoder context {context:9}: WER {wer:.2f} %, {run.encoder_calls} encoder calls over "
              f"{run.encoder_frames} frames in {run.encoder_seconds:.2f} s; total {run.seconds:.2f} s")
        for clip, text, ref in zip(clips, run.texts, offline, strict=True):
            if text != ref.strip():
                print(f"  {clip.name}: stream {text!r}\n  {' ' * len(clip.name)}  offline {ref.strip()!r}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
