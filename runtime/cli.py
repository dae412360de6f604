"""`edge-asr`: transcribe files with a bundle, or compile one (the compile stage is imported lazily)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_asr.runtime.bundle import PRECISIONS
from edge_asr.runtime.bundle_cache import DEFAULT_MODEL, DEFAULT_PRECISION, cached_bundle, require_compile_tools
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.formats import FORMATS


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


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
    source = tr.add_mutually_exclusive_group()
    source.add_argument("--model", help=f"zoo name (tiny.en, base) or checkpoint path, compiled once into the "
                        f"user cache (default: {DEFAULT_MODEL})")
    source.add_argument("--bundle", type=Path, help="a bundle directory made by `edge-asr compile`")
    tr.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                    help="precision when compiling --model on first use (default: %(default)s)")
    tr.add_argument("--beam", type=_positive, default=1, metavar="N", help="beam size; 1 is greedy (default)")
    tr.add_argument("--language", metavar="xx", help="language code; detected when omitted (multilingual models)")
    tr.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    tr.add_argument("--format", choices=FORMATS, default="txt", help="output format (default: %(default)s)")
    tr.add_argument("--output", type=Path, metavar="DIR", help="write FILE's stem + .FORMAT into DIR instead of stdout")
    tr.add_argument("--threads", type=_positive, metavar="N", help="CPU threads (default: all cores of this process)")
    tr.add_argument("--no-progress", action="store_true", help="no progress line on stderr")

    co = commands.add_parser("compile", help="compile a checkpoint into a bundle",
                             description="Compile a checkpoint into a bundle for one target (needs edge-asr[compile]).")
    co.add_argument("--model", default=DEFAULT_MODEL, help="zoo name (tiny.en, base) or checkpoint path")
    co.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION)
    co.add_argument("--target", choices=("cpu",), default="cpu", help="cpu: onnxruntime on any CPU")
    co.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="bundle directory to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "compile":
            return _compile(args)
        return _transcribe(args)
    except EdgeAsrError as err:
        print(f"edge-asr: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edge-asr: interrupted", file=sys.stderr)
        return 130


def _compile(args) -> int:
    require_compile_tools(f"compiling {args.model}")
    from edge_asr.compile.bundle_writer import compile_bundle

    compile_bundle(args.model, args.precision, args.output)
    return 0


def _transcribe(args) -> int:
    from edge_asr.runtime.transcribe_files import transcribe_files

    bundle = args.bundle or cached_bundle(args.model or DEFAULT_MODEL, args.precision)
    return transcribe_files(bundle, args)


if __name__ == "__main__":
    sys.exit(main())
