"""`edge-asr stream`: one source through one recognizer into one sink, until the input ends or
the user stops it. Either way the audio already heard is flushed into final text."""
from __future__ import annotations

import sys
from pathlib import Path

from edge_asr.runtime.cli_args import decoding_options, vad_options
from edge_asr.runtime.decoding.options import TranscribeOptions
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.streaming.events import SINKS
from edge_asr.runtime.streaming.recognizer import StreamOptions, StreamRecognizer
from edge_asr.runtime.streaming.microphone import MicSource, check_microphone
from edge_asr.runtime.streaming.sources import AudioSource, FileSource, StdinSource
from edge_asr.runtime.streaming.vad import SileroVad
from edge_asr.runtime.threads import Threads


def open_source(args) -> AudioSource:
    if args.input is not None:
        return FileSource(args.input, realtime=args.realtime)
    if args.stdin:
        return StdinSource(sample_rate=args.stdin_rate)
    check_microphone(args.device)
    return MicSource(device=args.device)


def stream_options(args) -> StreamOptions:
    return StreamOptions(vad=vad_options(args), partial_interval_s=args.partial_interval,
                         encoder_context=args.encoder_context)


def stream(bundle: Path, args) -> int:
    """`edge-asr stream`: its flags made into options and a source, then run."""
    options = stream_options(args).validate()  # a bad option is refused before anything loads
    threads = Threads(args.threads)
    vad = SileroVad(args.vad_model, threads=threads)  # before the engine: see runtime/threads.py
    source = open_source(args)
    decoding = decoding_options(args, word_timestamps=args.word_timestamps)
    recognizer = new_recognizer(bundle, decoding, options, vad, threads)
    return run(source, recognizer, SINKS[args.format](sys.stdout))


def new_recognizer(bundle: Path, decoding: TranscribeOptions, options: StreamOptions, vad: SileroVad,
                   threads: int | Threads | None = None) -> StreamRecognizer:
    """A recognizer on the bundle's engine, the bundle's model facts filled into ``decoding``."""
    from edge_asr.runtime.transcriber import Transcriber

    transcriber = Transcriber(bundle, threads=threads)
    decoding = transcriber.with_model_facts(decoding).validate()
    return StreamRecognizer(transcriber.engine, transcriber.tokenizer, vad, decoding, options)


def run(source: AudioSource, recognizer: StreamRecognizer, sink) -> int:
    """Pushes the source's blocks through the recognizer. Ctrl-C or an audio error stops capture,
    and whatever was captured still becomes final text before the exit."""
    status, error = 0, None
    try:
        for block in source.blocks():
            for event in recognizer.push(block):
                sink.write(event)
    except KeyboardInterrupt:  # the way to end a microphone stream: not a failure
        pass
    except EdgeAsrError as err:
        status, error = 1, err
    source.stop()
    for event in [*recognizer.push(source.drain()), *recognizer.flush()]:
        sink.write(event)
    sink.close()
    if error is not None:
        print(f"edge-asr: {error}", file=sys.stderr)
    return status
