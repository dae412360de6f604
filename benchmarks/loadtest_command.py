"""The `edge-asr loadtest` command line, apart from the load test itself (benchmarks/loadtest.py), so
that every `edge-asr` command does not import the WebSocket client, the report and the samplers."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from edge_asr.runtime.cli_args import positive_int

CHUNK_MS = (32, 100)  # one VAD window, or what many capture APIs deliver

DESCRIPTION = (
    "Play clips at real-time pace over N concurrent WebSocket connections to `edge-asr serve` and report "
    "each stream's latency from end of speech to final text (p50/p90/p99), the WER when references are "
    "given, fairness between streams, and whether every stream kept up with real time. --find-max searches "
    "the largest N that keeps up with a p90 within --max-p90. Without --url an `edge-asr serve` is started "
    "with the model options and stopped at the end.")


def add_loadtest_parser(commands, add_model_arguments) -> None:
    lt = commands.add_parser("loadtest", help="concurrent real-time streams against `edge-asr serve`",
                             description=DESCRIPTION)
    add_arguments(lt, add_model_arguments)


def add_arguments(parser: argparse.ArgumentParser, add_model_arguments) -> None:
    parser.add_argument("--streams", type=positive_int, default=1, metavar="N",
                        help="concurrent streams (default: %(default)s; --find-max picks its own)")
    parser.add_argument("--input", type=Path, metavar="DIR",
                        help="a folder of audio clips (default: the developer clips)")
    parser.add_argument("--references", type=Path, metavar="TSV",
                        help="references, `name<TAB>text` per line (default: DIR/references.tsv)")
    parser.add_argument("--url", metavar="ws://HOST:PORT/", help="a running server (default: start one here)")
    parser.add_argument("--token", default=os.environ.get("EDGE_ASR_TOKEN"),
                        help="bearer token for the server (default: $EDGE_ASR_TOKEN)")
    parser.add_argument("--find-max", action="store_true",
                        help="search the largest N with p90 within --max-p90 and every stream kept up")
    parser.add_argument("--max-p90", type=float, default=1.0, metavar="S",
                        help="the p90 latency a passing run stays within, seconds (default: %(default)s)")
    parser.add_argument("--max-streams-to-try", type=positive_int, default=32, metavar="N",
                        help="--find-max tries no more streams than this (default: %(default)s)")
    parser.add_argument("--seconds", type=float, metavar="S", help="cut each stream's audio to S seconds "
                        "(no WER then, unless the stream is shorter)")
    parser.add_argument("--chunk-ms", type=int, choices=CHUNK_MS, default=32,
                        help="audio per message (default: %(default)s)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="start the server with --workers N: 1 serves one utterance at a time, more batch "
                        "the decoder steps of that many streams (not with --url; default: the server's)")
    parser.add_argument("--partial-interval", type=float, metavar="S",
                        help="start the server with --partial-interval S: seconds of speech between partials, 0 for "
                        "finals only (not with --url; default: the server's)")
    parser.add_argument("--alone", action="store_true",
                        help="after the trials, play each stream's audio alone through `edge-asr stream` with the "
                        "same model options, and score the words under load against each stream's own words alone "
                        "(its clip order, not load, sets its WER; not with --url; about 3 s a stream)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure to FILE")
    add_model_arguments(parser)
