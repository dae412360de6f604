"""`edge-asr`: transcribe files or live audio with a bundle, compile one, or benchmark one (the compile
stage and the benchmark harness are imported lazily)."""
from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import signal
import sys
from pathlib import Path

from edge_asr.benchmarks.bench_command import add_bench_parser
from edge_asr.benchmarks.loadtest_command import add_loadtest_parser
from edge_asr.models import corpus_command
from edge_asr.models.distill_command import add_train_parsers
from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.bundle import PRECISIONS, TARGETS
from edge_asr.runtime.cli_args import MAX_BEAM, beam_size, positive_int, thread_count
from edge_asr.runtime.bundle_cache import DEFAULT_MODEL, DEFAULT_PRECISION, cached_bundle, require_compile_tools
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.formats import FORMATS
from edge_asr.runtime.serving.serve_command import add_serve_parser
from edge_asr.runtime.streaming.recognizer import StreamOptions
from edge_asr.runtime.streaming.segmenter import VadOptions
from edge_asr.runtime.windows import ENCODER_CONTEXTS, STOCK_MIN_CONTEXT_S


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-asr",
        description="Whisper-family speech recognition for edge boards. "
        "`edge-asr transcribe FILE` transcribes with tiny.en, compiled on first use.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tr = commands.add_parser("transcribe", help="transcribe audio files",
                             description="Transcribe audio files (any format soundfile reads, any sample rate).")
    tr.add_argument("files", nargs="+", type=Path, metavar="FILE")
    _add_model_arguments(tr)
    tr.add_argument("--format", choices=FORMATS, default="txt", help="output format (default: %(default)s)")
    tr.add_argument("--output", type=Path, metavar="DIR", help="write FILE's stem + .FORMAT into DIR instead of stdout")
    tr.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    tr.add_argument("--encoder-context", choices=ENCODER_CONTEXTS,
                    help="utterance: encode each window's audio plus the model's margin (stock Whisper: at least "
                    f"{STOCK_MIN_CONTEXT_S:g} s); full: pad every window to 30 s (default: full for stock Whisper, "
                    "utterance for a model that needs no padding)")

    add_stream_parser(commands)
    add_serve_parser(commands, _add_model_arguments, _add_stream_options)
    add_bench_parser(commands, _add_model_arguments)
    add_loadtest_parser(commands, _add_model_arguments)
    corpus_command.add_corpus_parser(commands)

    add_compile_parser(commands)
    add_train_parsers(commands)
    return parser


def add_compile_parser(commands) -> None:
    co = commands.add_parser(
        "compile", help="compile a checkpoint into a bundle",
        description="Compile a checkpoint into a bundle for one target (needs edge-asr[compile]; TVM targets "
        "also edge-asr[tvm], Jetson targets JetPack's TensorRT on the Jetson itself).")
    co.add_argument("--model", default=DEFAULT_MODEL,
                    help="zoo name (tiny.en, base, tiny.en-adaptive) or checkpoint path (default: %(default)s)")
    co.add_argument("--target", choices=list(TARGETS), default="cpu",
                    help="cpu: onnxruntime on any CPU; rpi4: TVM for the Raspberry Pi 4's Cortex-A72, cross-linked "
                    "with aarch64-linux-gnu-g++; tvm-x86: TVM for this x86 host's CPU; jetson-orin, jetson-xavier: "
                    "TensorRT engines, built on the Jetson (default: %(default)s)")
    co.add_argument("--precision", choices=PRECISIONS,
                    help="cpu: int8 (default), fp16 or fp32; rpi4 and tvm-x86: fp32; jetson-*: fp16")
    co.add_argument("--adapter", type=Path, metavar="DIR",
                    help="a LoRA adapter directory (adapter.json, adapter.safetensors) trained on --model, merged "
                    "into its weights before export (needs edge-asr[train])")
    co.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="bundle directory to write")
    tvm = co.add_argument_group("TVM tuning (rpi4, tvm-x86)", "Tuned schedules in the database are applied to "
                                "every later build of the same model and target; untuned modules are many times "
                                "slower than onnxruntime.")
    tvm.add_argument("--tune", action="store_true",
                     help="tune with MetaSchedule before building: on this host for tvm-x86, on the board "
                     "behind --rpc for rpi4")
    tvm.add_argument("--trials", type=positive_int, default=1000, metavar="N",
                     help="measurements per graph (encoder, decoder) (default: %(default)s)")
    tvm.add_argument("--rpc", metavar="HOST:PORT", help="a TVM RPC tracker the board is registered with")
    tvm.add_argument("--rpc-key", default="rpi4", metavar="KEY", help="the board's key at the tracker (default: %(default)s)")
    tvm.add_argument("--tuning-db", type=Path, metavar="DIR",
                     help="the tuning database (default: OUTPUT.tuning beside the bundle)")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help=f"zoo name (tiny.en, base, tiny.en-adaptive) or checkpoint path, compiled "
                        f"once into the user cache (default: {DEFAULT_MODEL}; the length-adaptive student "
                        "tiny.en-adaptive encodes a tenth of the work but still loses words on real speech)")
    source.add_argument("--bundle", type=Path, help="a bundle directory made by `edge-asr compile`")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                        help="precision when compiling --model on first use (default: %(default)s)")
    parser.add_argument("--beam", type=beam_size, default=1, metavar="N",
                        help=f"beam size, at most {MAX_BEAM}; 1 is greedy (default)")
    parser.add_argument("--language", metavar="xx", help="language code; detected when omitted (multilingual models)")
    parser.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    parser.add_argument("--threads", type=thread_count, metavar="N",
                        help="CPU threads, at most twice the cores (default: all cores of this process)")


def add_stream_parser(commands) -> None:
    st = commands.add_parser(
        "stream", help="live transcription of a microphone, a file or stdin",
        description="Transcribe live audio as it arrives: Silero VAD finds the speech, partial text appears "
        "while somebody speaks and final text when they pause. `edge-asr --mic` is short for "
        "`edge-asr stream --mic`. Ctrl-C ends the stream; the audio already heard still becomes text.")
    source = st.add_mutually_exclusive_group(required=True)
    source.add_argument("--mic", action="store_true", help="the microphone (see --device)")
    source.add_argument("--input", type=Path, metavar="FILE", help="an audio file, as fast as possible (see --realtime)")
    source.add_argument("--stdin", action="store_true",
                        help="raw 16-bit little-endian mono PCM on stdin (arecord -f S16_LE -r 16000 -c 1)")
    source.add_argument("--list-devices", action="store_true", help="list the audio input devices and exit")
    st.add_argument("--device", help="input device: index or part of its name (default: the system's default input)")
    st.add_argument("--realtime", action="store_true", help="with --input: play the file at real-time pace")
    st.add_argument("--stdin-rate", type=positive_int, default=SAMPLE_RATE, metavar="HZ",
                    help="sample rate of --stdin audio, resampled to 16 kHz (default: %(default)s)")
    st.add_argument("--format", choices=("text", "jsonl"), default="text",
                    help="text: finals as lines, with a live partial line on a terminal; jsonl: one "
                    '{"type": "partial"|"final", "start", "end", "text"} object a line (default: %(default)s)')
    _add_model_arguments(st)
    _add_stream_options(st)


def _add_stream_options(parser: argparse.ArgumentParser) -> None:
    """VAD, partials and encoder context: how `stream` and `serve` turn audio into events."""
    defaults_vad, defaults = VadOptions(), StreamOptions()
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
        vad.add_argument(flag, dest=f"vad_{name}", type=kind, default=getattr(defaults_vad, name), metavar=metavar,
                         help=f"{meaning} (default: %(default)s)")
    parser.add_argument("--partial-interval", type=float, default=defaults.partial_interval_s, metavar="S",
                        help="seconds of speech between partial results; 0 for finals only (default: %(default)s)")
    parser.add_argument("--encoder-context", choices=ENCODER_CONTEXTS, default=defaults.encoder_context,
                        help="utterance: encode the utterance plus the model's margin (stock Whisper: 1 s, at least "
                        f"{STOCK_MIN_CONTEXT_S:g} s); full: always 30 s (default: %(default)s)")


def _expand_shorthands(argv: list[str]) -> list[str]:
    """`edge-asr --mic ...` and `edge-asr --list-devices` mean `edge-asr stream ...`."""
    if argv and argv[0] in ("--mic", "--list-devices"):
        return ["stream", *argv]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_expand_shorthands(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "compile":
            return _compile(args)
        if args.command == "stream":
            return _stream(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "bench":
            return _bench(args)
        if args.command in ("distill", "finetune"):
            return _train(args)
        if args.command == "corpus":
            return corpus_command.run(args)
        if args.command == "loadtest":
            from edge_asr.benchmarks import loadtest

            return loadtest.run(args)
        return _transcribe(args)
    except EdgeAsrError as err:
        print(f"edge-asr: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edge-asr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): a quiet end, as SIGPIPE gives C tools
        _drop_stdout()
        return 141
    except OSError as err:  # stdout or a file that cannot take the output (a full disk, /dev/full)
        if err.errno not in (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG):
            raise
        _drop_stdout()
        print(f"edge-asr: cannot write {err.filename or 'the output'} ({err.strerror}).", file=sys.stderr)
        return 1


def _drop_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _compile(args) -> int:
    require_compile_tools(f"compiling {args.model}")
    from edge_asr.compile.bundle_writer import compile_bundle

    tuning = None
    if args.tune:
        from edge_asr.compile.tvm_tuning import RpcTracker, TuningRequest

        tuning = TuningRequest(args.trials, RpcTracker.parse(args.rpc, args.rpc_key) if args.rpc else None)
    elif args.rpc:
        raise EdgeAsrError("--rpc is where --tune measures; add --tune.")
    if TARGETS[args.target].backend == "tvm" and importlib.util.find_spec("tvm") is None:
        raise EdgeAsrError(f"target {args.target} is built with Apache TVM: pip install 'edge-asr[tvm]'.")
    compile_bundle(args.model, args.precision, args.output, args.target, tuning, args.tuning_db, args.adapter)
    return 0


def _train(args) -> int:
    missing = [m for m in ("torch", "peft", "jiwer", "whisper_normalizer") if importlib.util.find_spec(m) is None]
    if missing:
        raise EdgeAsrError(f"{args.command} needs {', '.join(missing)}: pip install 'edge-asr[train]'.")
    from edge_asr.models import distill_command

    return distill_command.run_distill(args) if args.command == "distill" else distill_command.run_finetune(args)


def interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP (what kill, timeout, systemd and docker stop send, and a closed terminal) end
    transcribe and stream the way Ctrl-C does: the text heard so far is printed or written first."""
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.default_int_handler)


def _transcribe(args) -> int:
    from edge_asr.runtime.transcribe_files import transcribe_files

    interrupt_on_termination()
    bundle = args.bundle or cached_bundle(args.model or DEFAULT_MODEL, args.precision)
    return transcribe_files(bundle, args)


def _stream(args) -> int:
    from edge_asr.runtime.streaming import microphone, stream_command

    if args.list_devices:
        print("\n".join(microphone.list_input_devices()) or "No audio input devices.")
        return 0
    interrupt_on_termination()
    bundle = args.bundle or cached_bundle(args.model or DEFAULT_MODEL, args.precision)
    return stream_command.stream(bundle, args)


def _serve(args) -> int:
    from edge_asr.runtime.serving import serve_command

    return serve_command.serve(args, lambda: args.bundle or cached_bundle(args.model or DEFAULT_MODEL, args.precision))


def _bench(args) -> int:
    from edge_asr.benchmarks import bench_command

    bundle = args.bundle or cached_bundle(args.model or DEFAULT_MODEL, args.precision)
    return bench_command.run(bundle, args)


if __name__ == "__main__":
    sys.exit(main())
