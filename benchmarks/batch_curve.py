"""What a row costs at each batch size, per kind of engine call: the measurement that says whether
batching streams can pay on this machine before any load test is run.

Each kind of call runs alone, timed (median of --repeats), at batch 1 and up:
- encode: windows of --seconds (15 s: the stock model's streaming window);
- prompt: a prompt pass of --prompt-tokens a row over those windows;
- step: one-token decoder steps, each row --prompt-tokens into its text.
The peer is batch 1 in the same run: a row's cost is its share of a batched call over a lone row's
call. Batching saves where that is well below 1; on a CPU whose matrix products are already compute
bound at batch 1 it is not (an encoder row costs as much at any batch).

Given a load test's JSON (`edge-asr loadtest --json`), its busiest trial's engine split (the share of
engine time that was steps) turns the step curve into a bound: had every step carried B rows, the
engine time would have shrunk by at most step share x (1 - a step row's cost at B). Encoder and prompt
calls count as unbatched, as a server runs them where their rows cost no less in a batch.

    python3 -m edge_asr.benchmarks.batch_curve --bundle DIR [--threads 2] [--loadtest LOADTEST.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_asr.benchmarks.loadtest import SCHEMA as LOADTEST_SCHEMA
from edge_asr.benchmarks.machine import machine_record
from edge_asr.benchmarks.report import format_number, write_json
from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.cli_args import positive_int
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.mel import HOP_LENGTH, N_FRAMES
from edge_asr.runtime.windows import STOCK_MIN_CONTEXT_S

SCHEMA = "edge-asr-batch-curve/1"
BATCHES = {"encode": (1, 2, 4), "prompt": (1, 2, 4, 8), "step": (1, 2, 4, 8, 16)}
WARMUP = 2


@dataclass(frozen=True)
class CurvePoint:
    """One kind of engine call (encode, prompt, step) at one batch size: the median milliseconds a call and a
    row, and a row's cost against a lone row's call (below 1: batching pays)."""

    op: str
    batch: int
    ms_per_call: float
    ms_per_row: float
    row_cost: float


def measure(engine, frames: int, prompt_tokens: int, batches: dict[str, tuple[int, ...]], repeats: int,
            progress: Callable[[str], None] = lambda line: None) -> list[CurvePoint]:
    """One CurvePoint per (kind, batch); each kind's sizes include 1, which its row costs are against.

    The points are timed in rounds, one call of each per round, so that a slow spell of the machine
    (a shared VM's neighbours) spreads over every point instead of skewing the few timed during it."""
    rng = np.random.default_rng(0)
    mel = rng.normal(size=(1, engine.dims.n_mels, frames)).astype(np.float32)
    lone = engine.encode(mel)
    tokens = rng.integers(0, engine.dims.n_vocab // 2, size=(max(max(b) for b in batches.values()), prompt_tokens))
    points = [(op, batch, _call(engine, op, batch, mel, lone, tokens))
              for op, sizes in batches.items() for batch in sizes]
    times: dict[tuple[str, int], list[float]] = {(op, batch): [] for op, batch, _ in points}
    for round_ in range(WARMUP + repeats):
        for op, batch, call in points:
            if op == "encode" and round_ >= WARMUP + encoder_repeats(repeats):
                continue
            started = time.perf_counter()
            call()
            if round_ >= WARMUP:
                times[op, batch].append(time.perf_counter() - started)
        progress(f"round {round_ + 1} of {WARMUP + repeats}")
    ms = {point: 1000 * statistics.median(seconds) for point, seconds in times.items()}
    return [CurvePoint(op, batch, ms[op, batch], ms[op, batch] / batch, ms[op, batch] / batch / ms[op, 1])
            for op, batch in ms]


def encoder_repeats(repeats: int) -> int:
    """Encoder calls are long, and fewer suffice; but a median of under 5 once showed a batch of 4 at 0.62
    of a lone row's cost, where 8 calls each gave 0.95-1.0."""
    return min(repeats, max(5, repeats // 2))


def _call(engine, op: str, batch: int, mel: np.ndarray, lone, tokens: np.ndarray) -> Callable[[], object]:
    rows = np.zeros(batch, np.int64)
    if op == "encode":
        windows = np.repeat(mel, batch, axis=0)
        return lambda: engine.encode(windows)
    audio = lone.take(rows)
    width = tokens.shape[1]
    offsets = np.zeros(batch, np.int64)
    if op == "prompt":
        select = np.tile(np.array([[0, width - 1]], np.int64), (batch, 1))
        return lambda: engine.decode(tokens[:batch], offsets, engine.new_cache(batch), audio, select)
    cache = engine.new_cache(batch)
    engine.decode(tokens[:batch], offsets, cache, audio, np.zeros((batch, 1), np.int64))  # the text so far
    step_tokens, at = tokens[:batch, :1], np.full(batch, width, np.int64)
    return lambda: engine.decode(step_tokens, at, cache, audio, np.zeros((batch, 1), np.int64))


def serving_bound(results: list[CurvePoint], loadtest: dict) -> dict | None:
    """The load test's busiest trial with an engine split, and what steps of each batch size would save."""
    trials = [t for t in loadtest.get("trials", []) if t.get("engine")]
    if not trials:
        return None
    trial = max(trials, key=lambda t: t["streams"])
    share = trial["engine"]["share"]["step"]
    steps = [r for r in results if r.op == "step"]
    return {"streams": trial["streams"], "step_share": share, "rows_per_step": trial["engine"]["rows_per_step"],
            "saving_at": {r.batch: share * (1 - r.row_cost) for r in steps}}


def markdown(doc: dict) -> str:
    s = doc["settings"]
    lines = [f"# edge-asr batch curve, {doc['created']}",
             f"{s['bundle']}, {s['threads'] or 'all'} threads; windows of {s['seconds']:g} s ({s['frames']} frames), "
             f"prompts of {s['prompt_tokens']} tokens, medians of {s['repeats']} rounds "
             f"(the encoder: {encoder_repeats(s['repeats'])}). "
             "Row cost: a row's share of the batched call over a lone row's call (below 1: batching pays).", "",
             "| call | batch | ms a call | ms a row | row cost |", "|---|---|---|---|---|"]
    lines += [f"| {r['op']} | {r['batch']} | {r['ms_per_call']:.2f} | {r['ms_per_row']:.2f} | {r['row_cost']:.2f} |"
              for r in doc["results"]]
    bound = doc.get("serving_bound")
    if bound:
        savings = ", ".join(f"{b} rows: {100 * v:.0f} %" for b, v in bound["saving_at"].items())
        share, rows = format_number(bound["step_share"], ".0f", 100.0), format_number(bound["rows_per_step"], ".2f")
        lines += ["", f"Load test at {bound['streams']} streams: steps were {share} % of the engine time, at {rows} "
                      "rows a step. Had every step carried "
                      f"B rows, the engine time would have shrunk by at most: {savings}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_asr.benchmarks.batch_curve",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle directory made by `edge-asr compile`")
    parser.add_argument("--threads", type=positive_int, help="CPU threads (default: all cores of this process)")
    parser.add_argument("--seconds", type=float, default=STOCK_MIN_CONTEXT_S,
                        help="encoder window, seconds (default: %(default)g, the stock model's streaming window)")
    parser.add_argument("--prompt-tokens", type=positive_int, default=64,
                        help="tokens a row before the steps (default: %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=20, help="timed calls a point (default: %(default)s)")
    parser.add_argument("--max-batch", type=positive_int, default=16, help="largest batch tried (default: %(default)s)")
    parser.add_argument("--loadtest", type=Path,
                        help="a loadtest --json result: bound what batched steps could have saved there")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args(argv)
    try:
        frames = _frames(args.seconds)
        loadtest = _read_loadtest(args.loadtest) if args.loadtest else None
        from edge_asr.runtime.transcriber import Transcriber

        engine = Transcriber(args.bundle, threads=args.threads).engine
        if args.prompt_tokens + 1 > engine.dims.n_text_ctx:
            raise EdgeAsrError(f"--prompt-tokens must leave room for a step in {engine.dims.n_text_ctx} positions.")
        batches = {op: tuple(b for b in sizes if b <= args.max_batch) for op, sizes in BATCHES.items()}
        results = measure(engine, frames, args.prompt_tokens, batches, args.repeats,
                          lambda line: print(f"batch curve: {line}", file=sys.stderr, flush=True))
    except EdgeAsrError as err:
        print(f"edge-asr: {err}", file=sys.stderr)
        return 1
    doc = {"schema": SCHEMA, "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "machine": machine_record(),
           "settings": {"bundle": str(args.bundle), "threads": args.threads, "seconds": args.seconds, "frames": frames,
                        "prompt_tokens": args.prompt_tokens, "repeats": args.repeats},
           "results": [asdict(r) for r in results], "serving_bound": serving_bound(results, loadtest) if loadtest else None}
    print(markdown(doc))
    if args.json:
        write_json(doc, args.json)
    return 0


def _frames(seconds: float) -> int:
    frames = 2 * round(seconds * SAMPLE_RATE / HOP_LENGTH / 2)  # the encoder takes an even number of frames
    if not 2 <= frames <= N_FRAMES:
        raise EdgeAsrError(f"--seconds must be within (0, 30], not {seconds:g}.")
    return frames


def _read_loadtest(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EdgeAsrError(f"cannot read the load test result {path}: {err}.") from None
    if not isinstance(doc, dict) or doc.get("schema") != LOADTEST_SCHEMA:
        raise EdgeAsrError(f"{path} is not an `edge-asr loadtest --json` result.")
    return doc


if __name__ == "__main__":
    sys.exit(main())
