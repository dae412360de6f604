"""Argument types and argument groups shared by the parsers of `edge-asr` commands (each imports what its
defaults come from when it is called, so that importing this module costs nothing)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

THREADS_PER_CORE = 2  # above this, threads only wait for each other: 64 on 2 cores ran 18x slower than 2
# Each beam is a decoder row with its own cross-attention cache (18 MB for tiny's 30 s window, 37 MB for base's):
# --beam 1000 asked for 22 GB and was killed. Whisper's own beam is 5; 32 is far past where WER stops improving.
MAX_BEAM = 32


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def thread_count(text: str) -> int:
    """CPU threads: at least 1, at most THREADS_PER_CORE times the cores this process may run on."""
    value = positive_int(text)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if value > THREADS_PER_CORE * cores:
        raise argparse.ArgumentTypeError(f"{value} threads is more than this machine's {cores} cores can use "
                                         f"(at most {THREADS_PER_CORE * cores})")
    return value


def beam_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_BEAM:
        raise argparse.ArgumentTypeError(f"a beam of {value} would need a decoder row and its cache per beam; "
                                         f"the most is {MAX_BEAM} (Whisper's own is 5)")
    return value


def add_model_arguments(parser: argparse.ArgumentParser, files: bool = False) -> None:
    """Which model (zoo name, checkpoint or bundle) and how to decode with it: every command that transcribes.
    ``files``: the command transcribes files, whose default model is the length-adaptive one."""
    from edge_asr.runtime.bundle import PRECISIONS
    from edge_asr.runtime.bundle_cache import DEFAULT_MODEL, DEFAULT_PRECISION, FILE_MODEL

    why = (f"{FILE_MODEL}, tiny.en's weights reading each window's audio against a cached and probed 30 s padding: "
           "tiny.en's words on files in 0.54-0.59x the time; --model tiny.en for stock Whisper" if files else
           f"{DEFAULT_MODEL}: live streams, whose stock windows are 15 s, and servers run no faster with "
           f"{FILE_MODEL}, the default of `transcribe`")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="zoo name (tiny.en, base, tiny.en-adaptive), student delta or checkpoint "
                        f"path, compiled once into the user cache (default: {why}; README, \"Length-adaptive "
                        "tiny.en\")")
    source.add_argument("--bundle", type=Path, help="a bundle directory made by `edge-asr compile`")
    parser.set_defaults(default_model=FILE_MODEL if files else DEFAULT_MODEL)  # --model left out (cli.py, _bundle)
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                        help="precision when compiling --model on first use (default: %(default)s)")
    parser.add_argument("--beam", type=beam_size, default=1, metavar="N",
                        help=f"beam size, at most {MAX_BEAM}; 1 is greedy (default)")
    parser.add_argument("--language", metavar="xx", help="language code; detected when omitted (multilingual models)")
    parser.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    parser.add_argument("--threads", type=thread_count, metavar="N",
                        help="CPU threads, at most twice the cores (default: all cores of this process)")


def add_vad_arguments(parser: argparse.ArgumentParser, defaults) -> None:
    """The VAD's model and settings (a streaming.segmenter.VadOptions: ``defaults``), read back by vad_options."""
    vad = parser.add_argument_group("voice activity detection")
    vad.add_argument("--vad-model", type=Path, metavar="FILE",
                     help="Silero VAD ONNX file (default: $EDGE_ASR_VAD_MODEL, else the installed silero-vad)")
    for flag, name, kind, metavar, meaning in (
        ("--vad-threshold", "threshold", float, "P", "speech probability at which speech starts"),
        ("--min-speech-ms", "min_speech_ms", int, "MS", "shorter sounds are ignored"),
        ("--min-silence-ms", "min_silence_ms", int, "MS", "a pause this long ends an utterance"),
        ("--pad-before-ms", "pad_before_ms", int, "MS", "audio kept before the speech of each utterance"),
        ("--pad-after-ms", "pad_after_ms", int, "MS", "audio kept after the speech of each utterance"),
    ):
        vad.add_argument(flag, dest=f"vad_{name}", type=kind, default=getattr(defaults, name), metavar=metavar,
                         help=f"{meaning} (default: %(default)s)")


def vad_options(args: argparse.Namespace):
    """The VadOptions of add_vad_arguments' flags, validated (a bad value is one EdgeAsrError sentence)."""
    from edge_asr.runtime.streaming.segmenter import VadOptions

    names = ("threshold", "min_speech_ms", "min_silence_ms", "pad_before_ms", "pad_after_ms")
    return VadOptions(**{name: getattr(args, f"vad_{name}") for name in names}).validate()


def add_stream_options(parser: argparse.ArgumentParser) -> None:
    """VAD, partials and encoder context: how `stream` and `serve` turn audio into events."""
    from edge_asr.runtime.streaming.recognizer import StreamOptions
    from edge_asr.runtime.streaming.segmenter import VadOptions
    from edge_asr.runtime.windows import ENCODER_CONTEXTS, STOCK_MIN_CONTEXT_S

    defaults = StreamOptions()
    add_vad_arguments(parser, VadOptions())
    parser.add_argument("--partial-interval", type=float, default=defaults.partial_interval_s, metavar="S",
                        help="seconds of speech between partial results; 0 for finals only (default: %(default)s)")
    parser.add_argument("--encoder-context", choices=ENCODER_CONTEXTS, default=defaults.encoder_context,
                        help="utterance: encode the utterance plus the model's margin (stock Whisper: 1 s, at least "
                        f"{STOCK_MIN_CONTEXT_S:g} s); full: always 30 s (default: %(default)s)")
    parser.add_argument("--word-timestamps", action="store_true",
                        help="finals carry their words with stream times (jsonl and the server's events; "
                        "onnxruntime bundles)")


def decoding_options(args: argparse.Namespace, **more):
    """The TranscribeOptions of add_model_arguments' flags (and ``more``); what they leave unset (None) is the
    model's own, filled in from the bundle by Transcriber.with_model_facts."""
    from edge_asr.runtime.decoding.options import TranscribeOptions

    return TranscribeOptions(beam_size=args.beam, language=args.language, task=args.task, **more)
