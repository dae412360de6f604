"""`edge-asr`: transcribe files or live audio with a bundle, compile one, or benchmark one.

Commands are registered by name (COMMANDS); a command's module, and what its parser's defaults come from, are
imported only when that command runs, so `edge-asr --help` loads neither onnxruntime nor the compile, train or
benchmark stages."""
from __future__ import annotations

import argparse
import errno
import importlib
import importlib.util
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_asr.runtime.cli_args import (add_model_arguments, add_stream_options, add_vad_arguments, decoding_options,
                                       positive_int, vad_options)
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.threads import Threads


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of `edge-asr COMMAND`: only ``command``'s own arguments are built (importing what they need);
    the other commands are listed by name and help line, so `edge-asr --help` imports no command's module."""
    parser = argparse.ArgumentParser(
        prog="edge-asr",
        description="Whisper-family speech recognition for edge boards. "
        "`edge-asr transcribe FILE` transcribes with tiny.en-adaptive (tiny.en reading only the audio against a cached "
        "padding), `edge-asr --mic` with tiny.en; each compiled on first use.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    built = set()
    if command in COMMANDS:
        COMMANDS[command].add_parser(commands)
        built = {command, *COMMANDS[command].siblings}
    for name, entry in COMMANDS.items():
        if name not in built:  # never parsed: argv names another command
            commands.add_parser(name, help=entry.help, add_help=False)
    return parser


def add_transcribe_parser(commands) -> None:
    from edge_asr.runtime.formats import FORMATS
    from edge_asr.runtime.speech_windows import OFFLINE_VAD
    from edge_asr.runtime.windows import ENCODER_CONTEXTS, STOCK_MIN_CONTEXT_S

    tr = commands.add_parser("transcribe", help="transcribe audio files",
                             description="Transcribe audio files (any format soundfile reads, any sample rate).")
    tr.add_argument("files", nargs="+", type=Path, metavar="FILE")
    add_model_arguments(tr, files=True)
    tr.add_argument("--format", choices=FORMATS, default="txt", help="output format (default: %(default)s)")
    tr.add_argument("--output", type=Path, metavar="DIR", help="write FILE's stem + .FORMAT into DIR instead of stdout")
    tr.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    tr.add_argument("--encoder-context", choices=ENCODER_CONTEXTS,
                    help="utterance: encode each window's audio plus the model's margin (stock Whisper: at least "
                    f"{STOCK_MIN_CONTEXT_S:g} s); full: pad every window to 30 s (default: full for stock Whisper, "
                    "utterance for a model that needs no padding)")
    tr.add_argument("--vad", action=argparse.BooleanOptionalAction, default=False,
                    help="transcribe only the speech the Silero VAD finds: silence is never encoded, the speech is "
                    "packed into windows of up to 30 s cut at pauses, times stay the file's (default: off; needs "
                    "silero-vad: pip install --no-deps silero-vad==6.2.3)")
    add_vad_arguments(tr, OFFLINE_VAD)
    words = tr.add_argument_group("word timestamps")
    words.add_argument("--word-timestamps", action="store_true",
                       help="time every word (the alignment heads' cross-attention, as openai-whisper does): json "
                       "gets words per segment, srt and vtt can cut cues at words (onnxruntime bundles)")
    words.add_argument("--max-line-width", type=positive_int, metavar="N",
                       help="srt, vtt: wrap cue lines at N characters")
    words.add_argument("--max-line-count", type=positive_int, metavar="N",
                       help="srt, vtt with --word-timestamps and --max-line-width: cues of at most N lines, cut at "
                       "words (and after pauses over 3 s) rather than one per segment")


def add_compile_parser(commands) -> None:
    from edge_asr.runtime.bundle import PRECISIONS, TARGETS
    from edge_asr.runtime.bundle_cache import DEFAULT_MODEL

    co = commands.add_parser(
        "compile", help="compile a checkpoint into a bundle",
        description="Compile a checkpoint into a bundle for one target (needs edge-asr[compile]; TVM targets "
        "also edge-asr[tvm], Jetson targets JetPack's TensorRT on the Jetson itself).")
    co.add_argument("--model", default=DEFAULT_MODEL,
                    help="zoo name (tiny.en, base, tiny.en-adaptive), student delta or checkpoint path "
                    "(default: %(default)s)")
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
    tvm.add_argument("--rpc-key", default="rpi4", metavar="KEY",
                     help="the board's key at the tracker (default: %(default)s)")
    tvm.add_argument("--tuning-db", type=Path, metavar="DIR",
                     help="the tuning database (default: OUTPUT.tuning beside the bundle)")


def add_stream_parser(commands) -> None:
    from edge_asr.runtime.audio import SAMPLE_RATE

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
    add_model_arguments(st)
    add_stream_options(st)


def _expand_shorthands(argv: list[str]) -> list[str]:
    """`edge-asr --mic ...` and `edge-asr --list-devices` mean `edge-asr stream ...`."""
    if argv and argv[0] in ("--mic", "--list-devices"):
        return ["stream", *argv]
    return argv


def main(argv: list[str] | None = None) -> int:
    argv = _expand_shorthands(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS and COMMANDS[argv[0]].runs_engine:
        Threads.hold_blas_from_the_start()  # before the parser imports numpy
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
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
    from edge_asr.runtime.bundle import TARGETS
    from edge_asr.runtime.bundle_cache import require_compile_tools

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


def _bundle(args) -> Path:
    """--bundle, else --model compiled into the user cache on first use."""
    from edge_asr.runtime.bundle_cache import cached_bundle

    return args.bundle or cached_bundle(args.model or args.default_model, args.precision)


def _transcribe(args) -> int:
    from edge_asr.runtime.transcribe_files import FileOutput, SpeechOnly, transcribe_files

    interrupt_on_termination()
    from edge_asr.runtime.formats import SubtitleLayout

    if args.max_line_count is not None and not (args.word_timestamps and args.max_line_width):
        raise EdgeAsrError("--max-line-count cuts cues at words: give it with --word-timestamps and --max-line-width.")
    decoding = decoding_options(args, encoder_context=args.encoder_context, word_timestamps=args.word_timestamps)
    layout = SubtitleLayout(args.max_line_width, args.max_line_count)
    output = FileOutput(args.format, args.output, progress=not args.no_progress, layout=layout)
    speech = SpeechOnly(vad_options(args), args.vad_model) if args.vad else None
    return transcribe_files(_bundle(args), args.files, decoding, output, args.threads, speech)


def _stream(args) -> int:
    from edge_asr.runtime.streaming import microphone, stream_command

    if args.list_devices:
        print("\n".join(microphone.list_input_devices()) or "No audio input devices.")
        return 0
    interrupt_on_termination()
    return stream_command.stream(_bundle(args), args)


def _serve(args) -> int:
    from edge_asr.runtime.serving import serve_command

    return serve_command.serve(args, lambda: _bundle(args))


def _bench(args) -> int:
    from edge_asr.benchmarks import bench_command

    return bench_command.run(_bundle(args), args)


def _module(name: str):
    return importlib.import_module(f"edge_asr.{name}")


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, what adds its parser (importing what that needs), and what runs it."""

    help: str
    add_parser: Callable[[argparse._SubParsersAction], None]
    run: Callable[[argparse.Namespace], int]
    siblings: tuple[str, ...] = ()  # other commands whose parsers add_parser adds too
    runs_engine: bool = True  # numpy's BLAS is then held to one thread from the start (Threads)


COMMANDS: dict[str, Command] = {
    "transcribe": Command("transcribe audio files", add_transcribe_parser, _transcribe),
    "stream": Command("live transcription of a microphone, a file or stdin", add_stream_parser, _stream),
    "serve": Command("live transcription for many clients over WebSocket",
                     lambda c: _module("runtime.serving.serve_command").add_serve_parser(c, add_model_arguments,
                                                                                       add_stream_options), _serve),
    "bench": Command("measure RTF, latency, memory, watts and WER",
                     lambda c: _module("benchmarks.bench_command").add_bench_parser(c, add_model_arguments), _bench),
    "loadtest": Command("concurrent real-time streams against `edge-asr serve`",
                        lambda c: _module("benchmarks.loadtest_command").add_loadtest_parser(c, add_model_arguments),
                        lambda args: _module("benchmarks.loadtest").run(args)),
    "corpus": Command("build a speech corpus for distillation and fine-tuning",
                      lambda c: _module("models.corpus_command").add_corpus_parser(c),
                      lambda args: _module("models.corpus_command").run(args), runs_engine=False),
    "compile": Command("compile a checkpoint into a bundle", add_compile_parser, _compile, runs_engine=False),
    "distill": Command("distil a length-adaptive student from a teacher",
                       lambda c: _module("models.distill_command").add_train_parsers(c), _train, ("finetune",),
                       runs_engine=False),
    "finetune": Command("LoRA fine-tuning saved as a small adapter",
                        lambda c: _module("models.distill_command").add_train_parsers(c), _train, ("distill",),
                        runs_engine=False),
}


if __name__ == "__main__":
    sys.exit(main())
