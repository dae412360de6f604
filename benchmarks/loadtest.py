"""`edge-asr loadtest`: N concurrent real-time clients against an `edge-asr serve` WebSocket server.

Each client plays the clips, joined by 1.5 s of faint noise (benchmarks/realtime_play.py), as a
microphone would: one chunk of S16_LE PCM every chunk duration, each due at its place in real time
from the stream's start, so that a late send does not push the later ones back. The streams start up
to STAGGER_S apart (seeded) so that their pauses, and so their finals, do not all fall at once.

A final's latency is its arrival less the moment its speech ended: the stream's start plus the
event's speech_end. A stream kept up when its `closed` event came within CLOSE_WITHIN_S of its last
audio and the client itself never sent a chunk more than KEPT_UP_LAG_S after it was due; the second
is reported apart ("client lag") so that a client starved of CPU on a saturated machine is not blamed
on the server. `--find-max` searches the largest N whose p90 stays within --max-p90 with every stream
kept up.

Without --url the server is started here as a child (`edge-asr serve` with the model options, --workers and
--partial-interval) and stopped with SIGTERM at the end. With --alone each stream's audio then goes once more through
`edge-asr stream` with the same options, alone (benchmarks/alone_words.py): the words a stream got under load are
compared with its own words alone, which its clip order, not load, decides.

    python3 -m edge_asr.benchmarks.loadtest --find-max --bundle DIR [--workers N] [--seconds 30]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import errno
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from edge_asr.benchmarks.alone_words import alone_texts, as_sent
from edge_asr.benchmarks.bench_command import require_scoring
from edge_asr.models.clips import Clip, developer_clips, folder_clips
from edge_asr.benchmarks.engine_split import EngineSplit, engine_split, scrape_engine
from edge_asr.benchmarks.loadtest_command import DESCRIPTION, add_arguments
from edge_asr.benchmarks.machine import machine_record
from edge_asr.benchmarks.realtime_play import KEPT_UP_LAG_S, rotated_streams
from edge_asr.benchmarks.report import (LATENCY_COLUMNS, MISSING, Column, LatencyFigures, format_number, latency_figures,
                                        markdown_table, write_json)
from edge_asr.models.wer import corpus_wer
from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.engines.timed import ENGINE_OPS
from edge_asr.runtime.errors import EdgeAsrError

SCHEMA = "edge-asr-loadtest/1"
STAGGER_S = 1.0  # streams start at seeded random offsets within this
SEED = 0
CLOSE_WITHIN_S = 2.0  # the server flushes its last finals and says `closed` within this after the last audio
DRAIN_TIMEOUT_S = 60.0  # after that, a stream that never got `closed` is given up
OPEN_TIMEOUT_S = 10.0
START_TIMEOUT_S = 900.0  # the first use of a --model compiles it
STOP_TIMEOUT_S = 10.0
WARM_UP_S = 6.0


class LoadtestError(EdgeAsrError):
    pass


@dataclass(frozen=True)
class ServerPlan:
    """The `edge-asr serve` a load test starts (its model options), or None fields for a server at --url."""

    bundle: str | None = None
    model: str | None = None
    precision: str | None = None
    threads: int | None = None
    workers: int | None = None
    beam: int | None = None
    language: str | None = None
    task: str | None = None
    partial_interval: float | None = None  # 0: a finals-only server

    def options(self, server: bool = True) -> list[str]:
        """The server's command-line options; with ``server`` False the same for `edge-asr stream`, which serves
        one stream (no --workers)."""
        pairs = (("--bundle", self.bundle), ("--model", self.model), ("--precision", self.precision),
                 ("--threads", self.threads), ("--beam", self.beam), ("--language", self.language),
                 ("--task", self.task), ("--workers", self.workers if server else None),
                 ("--partial-interval", self.partial_interval))
        return [text for flag, value in pairs if value is not None for text in (flag, str(value))]


@dataclass(frozen=True)
class LoadtestPlan:
    """One load test: the clips, the server (``url``, or one started here as ``server`` says), and the trials."""

    clips: list[Clip]
    clip_set: str
    url: str | None
    token: str | None
    server: ServerPlan
    streams: int = 1
    find_max: bool = False
    max_streams_to_try: int = 32
    max_p90_s: float = 1.0
    seconds: float | None = None
    chunk_ms: int = 32
    alone: bool = False  # each stream's words alone, to judge the words under load against

    def validate(self) -> "LoadtestPlan":
        require_scoring(self.clips)
        if self.alone and self.url:
            raise LoadtestError("--alone runs each stream through `edge-asr stream` with the server's model options, "
                                "which a server at --url does not tell: run it without --url.")
        if self.seconds is not None and self.seconds <= 0:
            raise LoadtestError(f"--seconds must be above 0, got {self.seconds}.")
        return self


def plan_from_args(args) -> LoadtestPlan:
    """The command line's plan (its flags are loadtest_command.py's)."""
    server = ServerPlan(str(args.bundle) if args.bundle else None, args.model, args.precision, args.threads,
                        args.workers, args.beam, args.language, args.task, args.partial_interval)
    clips = folder_clips(args.input, args.references) if args.input else developer_clips()
    return LoadtestPlan(clips, str(args.input) if args.input else "developer", args.url, args.token, server,
                        args.streams, args.find_max, args.max_streams_to_try, args.max_p90, args.seconds,
                        args.chunk_ms, args.alone).validate()


def run(args) -> int:
    """`edge-asr loadtest`: its flags made into a plan, run, and reported."""
    if importlib.util.find_spec("websockets") is None:
        raise LoadtestError("the load test needs websockets: pip install 'edge-asr[serve]'.")
    plan = plan_from_args(args)
    doc = loadtest(plan)
    print(markdown(doc))
    if args.json:
        write_json(doc, args.json)
    return 1 if doc.get("alone_error") else 0


def loadtest(plan: LoadtestPlan) -> dict:
    """The load test's document (SCHEMA): its settings, every trial's figures, and the largest passing N."""
    most = plan.max_streams_to_try if plan.find_max else plan.streams
    chunk = plan.chunk_ms * SAMPLE_RATE // 1000
    with _server(plan, most) as url:
        # A fresh server's first calls pay for loading kernels (and, on a GPU, recording graphs): not a load.
        print(f"loadtest: warming the server up with one stream of {WARM_UP_S:g} s (not measured)", file=sys.stderr)
        play_trial(url, plan.token, stream_plan(plan.clips, 1, WARM_UP_S), chunk)

        def measure(count: int) -> Trial:
            before, started = scrape_engine(url, plan.token), time.monotonic()
            streams = play_trial(url, plan.token, stream_plan(plan.clips, count, plan.seconds), chunk)
            engine = engine_split(before, scrape_engine(url, plan.token), time.monotonic() - started)
            trial = trial_figures(streams, plan.max_p90_s, engine)
            print(f"loadtest: {_trial_line(trial)}", file=sys.stderr, flush=True)
            return trial

        trials, found = find_max(measure, most) if plan.find_max else ([measure(plan.streams)], None)
    alone_error = None
    if plan.alone:  # after the server has stopped: nothing runs beside each stream
        try:
            trials = against_alone(trials, alone_texts(
                [audio for audio, _ in stream_plan(plan.clips, max(t.streams for t in trials), plan.seconds)],
                plan.server.options(server=False),
                lambda i, n: print(f"loadtest: stream {i + 1} of {n} alone (edge-asr stream)", file=sys.stderr,
                                   flush=True)))
        except EdgeAsrError as err:  # the trials, minutes of them, are still reported
            alone_error = str(err)
            print(f"edge-asr: {err} The trials are reported without the words alone.", file=sys.stderr)
        else:
            for trial in trials:
                print(f"loadtest: {_alone_line(trial)}", file=sys.stderr)
    return document(plan, url, trials, found, alone_error)


# --- the streams ---------------------------------------------------------------------------------------

@dataclass
class StreamRun:
    """What one client saw."""

    index: int
    audio_s: float
    reference: str | None
    latencies: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    partials: int = 0
    errors: list[str] = field(default_factory=list)
    client_lag_s: float = 0.0  # the latest a chunk was sent after it was due
    closed_after_s: float | None = None  # from the last audio sent to `closed`; None: it never came
    closed_reason: str | None = None

    @property
    def text(self) -> str:
        return " ".join(t for t in self.texts if t)

    @property
    def client_kept_up(self) -> bool:
        return self.client_lag_s <= KEPT_UP_LAG_S

    @property
    def kept_up(self) -> bool:
        return self.client_kept_up and self.closed_after_s is not None and self.closed_after_s <= CLOSE_WITHIN_S


def stream_plan(clips: list[Clip], count: int, seconds: float | None) -> list[tuple[np.ndarray, str | None]]:
    """Each stream's audio and reference, as `edge-asr bench --mode stream` plays them (stream i starts at
    clip i mod n); a stream cut by --seconds has no reference, as its last words are not played."""
    plan = rotated_streams(clips, count, np.random.default_rng(SEED))
    if seconds is None:
        return plan
    cut = round(seconds * SAMPLE_RATE)
    return [(audio, reference) if len(audio) <= cut else (audio[:cut], None) for audio, reference in plan]


def play_trial(url: str, token: str | None, plan: list[tuple[np.ndarray, str | None]], chunk: int) -> list[StreamRun]:
    offsets = np.random.default_rng(SEED).uniform(0.0, STAGGER_S, len(plan))
    return asyncio.run(_play_all(url, token, plan, offsets, chunk))


async def _play_all(url: str, token: str | None, plan: list[tuple[np.ndarray, str | None]], offsets: np.ndarray,
                    chunk: int) -> list[StreamRun]:
    """All streams in this one event loop; the first that fails to connect ends the others."""
    tasks = [asyncio.create_task(_play(url, token, i, audio, reference, offset, chunk))
             for i, ((audio, reference), offset) in enumerate(zip(plan, offsets, strict=True))]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _play(url: str, token: str | None, index: int, audio: np.ndarray, reference: str | None,
                offset_s: float, chunk: int) -> StreamRun:
    from websockets.exceptions import ConnectionClosed

    await asyncio.sleep(offset_s)
    pcm = as_sent(audio)
    stream = StreamRun(index, len(pcm) / SAMPLE_RATE, reference)
    async with await _connect(url, token) as ws:
        await _ready(ws, url, index)
        started = time.monotonic()  # audio time 0: each chunk is sent when its last sample would be heard
        receiving, last_sent = asyncio.create_task(_receive(ws, stream, started)), None
        try:
            for stop in range(chunk, len(pcm) + chunk, chunk):
                due = started + min(stop, len(pcm)) / SAMPLE_RATE
                await asyncio.sleep(due - time.monotonic())
                stream.client_lag_s = max(stream.client_lag_s, time.monotonic() - due)
                await ws.send(pcm[stop - chunk : stop].tobytes())
            last_sent = time.monotonic()
            await ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            stream.errors.append("the server closed the stream before the end of its audio")
        try:
            closed_at = await asyncio.wait_for(receiving, DRAIN_TIMEOUT_S)
        except asyncio.TimeoutError:
            stream.errors.append(f"no `closed` event within {DRAIN_TIMEOUT_S:.0f} s of the end")
            closed_at = None
        if closed_at is not None and last_sent is not None:
            stream.closed_after_s = closed_at - last_sent
    return stream


async def _connect(url: str, token: str | None):
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

    try:
        # No compression (PCM does not shrink, and it would cost CPU the server needs); no pings, no proxy.
        return await connect(url, additional_headers={"Authorization": f"Bearer {token}"} if token else None,
                             compression=None, ping_interval=None, proxy=None, open_timeout=OPEN_TIMEOUT_S)
    except InvalidURI:
        raise LoadtestError(f"{url} is not a WebSocket address; expected ws://HOST:PORT/.") from None
    except InvalidStatus as err:
        status = err.response.status_code
        hint = "; pass --token or set EDGE_ASR_TOKEN" if status in (401, 403) else ""
        raise LoadtestError(f"the server at {url} refused the connection (HTTP {status}){hint}.") from None
    except InvalidHandshake as err:
        raise LoadtestError(f"{url} did not answer as a WebSocket server ({err}).") from None
    except asyncio.TimeoutError:
        raise LoadtestError(f"no answer from {url} within {OPEN_TIMEOUT_S:.0f} s.") from None
    except OSError as err:
        # asyncio joins the errors of every address it tried (::1, 127.0.0.1) into one OSError.
        refused = isinstance(err, ConnectionRefusedError) or f"[Errno {errno.ECONNREFUSED}]" in str(err)
        raise LoadtestError(f"no edge-asr server at {url}: "
                            f"{'connection refused' if refused else err.strerror or err}.") from None


async def _ready(ws, url: str, index: int) -> None:
    """Waits for the server's first event, `ready`; a refusal (a `closed` event, then code 1013 when the
    server is full) as one sentence."""
    from websockets.exceptions import ConnectionClosed

    try:
        event = json.loads(await ws.recv())
    except ConnectionClosed:
        event = {"type": "closed"}
    if event.get("type") == "ready":
        return
    if event.get("type") != "closed":
        raise LoadtestError(f"the server at {url} began with {event.get('type')!r} instead of `ready`; "
                            "is it `edge-asr serve`?")
    await ws.wait_closed()
    reason = ws.close_reason or event.get("reason") or "no reason given"
    if ws.close_code == 1013:
        raise LoadtestError(f"the server at {url} refused stream {index + 1} ({reason}); run fewer --streams "
                            "or start it with a larger --max-streams.")
    raise LoadtestError(f"the server at {url} closed stream {index + 1} before it was ready "
                        f"(code {ws.close_code}: {reason}).")


async def _receive(ws, stream: StreamRun, started: float) -> float | None:
    """Records the stream's events until `closed`; returns when that came, or None when the connection
    ended without it."""
    from websockets.exceptions import ConnectionClosed

    try:
        async for message in ws:
            arrived, event = time.monotonic(), json.loads(message)
            kind = event.get("type")
            if kind == "final":
                stream.latencies.append(arrived - (started + event["speech_end"]))
                stream.texts.append(event["text"])
            elif kind == "partial":
                stream.partials += 1
            elif kind == "error":
                stream.errors.append(event.get("message", ""))
            elif kind == "closed":
                stream.closed_reason = event.get("reason")
                return arrived
    except ConnectionClosed as err:
        stream.errors.append(f"connection lost: {err}")
    return None


# --- figures -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamFigures:
    """What one stream of a trial got: its finals' latency, its words and their WER, and whether it kept up."""

    stream: int
    audio_s: float
    finals: int
    latency: LatencyFigures | None
    wer: float | None
    text: str
    reference: str | None
    partials: int
    errors: list[str]
    closed_after_s: float | None
    closed_reason: str | None
    client_lag_s: float
    kept_up: bool
    text_alone: str | None = None  # --alone: its finals as the only stream (benchmarks/alone_words.py)
    wer_against_alone: float | None = None  # its words under load, scored against text_alone


@dataclass(frozen=True)
class Trial:
    """One run of N streams: the latency of all finals, the worst stream, fairness, WER, who kept up, why it
    failed, and where the server's engine time went (None from a server that does not publish it).
    asdict() gives the trial as the document (SCHEMA) states it."""

    streams: int
    audio_s: float
    finals: int
    latency: LatencyFigures | None
    worst_stream_p90_s: float | None
    # Jain's index: 1 when every stream waits as long as the others, 1/N when one stream gets all the delay.
    jain_mean_latency: float | None
    p90_max_over_min: float | None
    wer: float | None
    kept_up: int
    client_behind: int
    partials: int
    errors: int
    per_stream: list[StreamFigures]
    failures: list[str]
    passes: bool
    engine: EngineSplit | None
    # --alone: the same streams' WER each alone, and the words under load scored against the words alone (the
    # words load changed, in percent of the words alone).
    wer_alone: float | None = None
    wer_against_alone: float | None = None


def trial_figures(streams: list[StreamRun], max_p90_s: float, engine: EngineSplit | None) -> Trial:
    """The figures of one run of N streams, which passes with a p90 within max_p90_s and every stream kept up."""
    rows = [_stream_figures(s) for s in streams]
    latency = latency_figures([x for s in streams for x in s.latencies], all(s.kept_up for s in streams))
    p90s = [r.latency.p90_s for r in rows if r.latency]
    means = [statistics.fmean(s.latencies) for s in streams if s.latencies]
    scored = [(s.reference, s.text) for s in streams]
    kept_up, client_behind = sum(s.kept_up for s in streams), sum(not s.client_kept_up for s in streams)
    failures = _failures(len(streams), latency, kept_up, client_behind, max_p90_s)
    return Trial(
        streams=len(streams), audio_s=statistics.fmean(s.audio_s for s in streams),
        finals=sum(len(s.latencies) for s in streams), latency=latency, worst_stream_p90_s=max(p90s, default=None),
        jain_mean_latency=sum(means) ** 2 / (len(means) * sum(m * m for m in means)) if any(means) else None,
        p90_max_over_min=max(p90s) / min(p90s) if p90s and min(p90s) > 0 else None,
        wer=corpus_wer(scored) if all(reference for reference, _ in scored) else None,
        kept_up=kept_up, client_behind=client_behind,
        partials=sum(s.partials for s in streams), errors=sum(len(s.errors) for s in streams),
        per_stream=rows, failures=failures, passes=not failures, engine=engine,
    )


def against_alone(trials: list[Trial], alone: list[str]) -> list[Trial]:
    """Each trial with its streams' words alone (``alone[i]``: stream i's), their WER and the words under load
    scored against them."""
    judged = []
    for trial in trials:
        rows = [replace(row, text_alone=alone[row.stream],
                        wer_against_alone=corpus_wer([(alone[row.stream], row.text)]) if alone[row.stream] else None)
                for row in trial.per_stream]
        references = [row.reference for row in rows]
        wer_alone = (corpus_wer([(row.reference, row.text_alone) for row in rows])
                     if all(references) else None)
        scored = [(row.text_alone, row.text) for row in rows if row.text_alone]
        judged.append(replace(trial, per_stream=rows, wer_alone=wer_alone,
                              wer_against_alone=corpus_wer(scored) if scored else None))
    return judged


def _stream_figures(stream: StreamRun) -> StreamFigures:
    return StreamFigures(stream.index, stream.audio_s, len(stream.latencies),
                         latency_figures(stream.latencies, stream.kept_up),
                         corpus_wer([(stream.reference, stream.text)]) if stream.reference else None,
                         stream.text, stream.reference, stream.partials, stream.errors, stream.closed_after_s,
                         stream.closed_reason, stream.client_lag_s, stream.kept_up)


def _failures(n: int, latency: LatencyFigures | None, kept_up: int, client_behind: int, max_p90_s: float) -> list[str]:
    """Why a trial of n streams fails; none when it passes."""
    failures = []
    if latency is None:
        failures.append("no finals")
    elif latency.p90_s > max_p90_s:
        failures.append(f"p90 {latency.p90_s:.2f} s > {max_p90_s:g} s")
    if kept_up < n:
        failures.append(f"{n - kept_up}/{n} streams did not keep up")
    if client_behind:
        failures.append(f"the client itself fell behind on {client_behind} (machine saturated?)")
    return failures


def find_max(measure: Callable[[int], Trial], limit: int) -> tuple[list[Trial], int]:
    """The trials run and the largest N whose trial passes: N doubles from 1 until a trial fails or N
    reaches limit, then the gap between the last pass and the first failure is bisected. This assumes
    that more streams never do better, and runs each N once."""
    trials: list[Trial] = []

    def passes(n: int) -> bool:
        trials.append(measure(n))
        return trials[-1].passes

    good, bad = 0, None
    while bad is None and good < limit:
        n = min(max(2 * good, 1), limit)
        good, bad = (n, None) if passes(n) else (good, n)
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if passes(mid) else (good, mid)
    return trials, good


# --- the server ----------------------------------------------------------------------------------------

@contextmanager
def _server(plan: LoadtestPlan, max_streams: int) -> Iterator[str]:
    """The URL to test: --url, or an `edge-asr serve` started here and stopped with SIGTERM on the way out."""
    if plan.url:
        server = plan.server
        ignored = [flag for flag, value in (("--bundle", server.bundle), ("--model", server.model),
                                            ("--threads", server.threads), ("--workers", server.workers),
                                            ("--partial-interval", server.partial_interval)) if value is not None]
        if ignored:
            print(f"loadtest: {', '.join(ignored)} ignored: the server at {plan.url} is already running.",
                  file=sys.stderr)
        yield plan.url
        return
    command = [sys.executable, "-m", "edge_asr.runtime.cli", "serve", *plan.server.options(), "--host", "127.0.0.1",
               "--port", "0", "--max-streams", str(max_streams)]
    print("loadtest: starting edge-asr serve (the first use of a --model compiles it)", file=sys.stderr, flush=True)
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, **({"EDGE_ASR_TOKEN": plan.token} if plan.token else {})})
    log = _ServerLog(child)
    try:
        yield log.wait_ready()
    finally:
        child.terminate()
        try:
            child.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


class _ServerLog:
    """Reads the child's stderr to its end (so that the pipe never fills): the URL it serves on, which it
    prints once it listens (it picked a free port), and its last line, which says why when it dies at
    start-up."""

    def __init__(self, child: subprocess.Popen):
        self.child, self.url, self.last_line = child, None, "it printed nothing"
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.child.stderr:
            if line.strip():
                self.last_line = line.strip().removeprefix("edge-asr: ")
            match = re.search(r"serving (ws://\S+)", line)
            if match and self.url is None:
                self.url = match[1]

    def wait_ready(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.url:
                return self.url
            if self.child.poll() is not None:
                self._thread.join()
                raise LoadtestError(f"edge-asr serve stopped at start-up (exit status {self.child.returncode}): "
                                    f"{self.last_line}")
            time.sleep(0.25)
        raise LoadtestError(f"edge-asr serve was not ready within {START_TIMEOUT_S:.0f} s.")


# --- the report ----------------------------------------------------------------------------------------

def document(plan: LoadtestPlan, url: str, trials: list[Trial], found: int | None,
             alone_error: str | None = None) -> dict:
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_record(),
        "settings": {"url": url, "server": "external" if plan.url else "child",
                     **_server_settings(plan),
                     "clip_set": plan.clip_set, "clips": len(plan.clips),
                     "seconds": plan.seconds, "chunk_ms": plan.chunk_ms, "stagger_s": STAGGER_S,
                     "max_p90_s": plan.max_p90_s, "close_within_s": CLOSE_WITHIN_S, "client_lag_limit_s": KEPT_UP_LAG_S},
        "trials": [asdict(trial) for trial in trials],
        "find_max": {"streams": found, "max_streams_to_try": plan.max_streams_to_try} if found is not None else None,
        "alone_error": alone_error,  # --alone asked and failed: why (the trials stand without it)
    }


def _server_settings(plan: LoadtestPlan) -> dict:
    """The options the server was started with; unknown (None) for a server at --url, which ignored them."""
    server = plan.server
    settings = {"workers": server.workers, "bundle": server.bundle, "model": server.model,
                "precision": server.precision, "threads": server.threads, "partial_interval": server.partial_interval}
    return dict.fromkeys(settings) if plan.url else settings


def _trial_line(trial: Trial) -> str:
    verdict = "pass" if trial.passes else "fail: " + "; ".join(trial.failures)
    return (f"{trial.streams} streams: p90 {_ms(trial.latency.p90_s if trial.latency else None)} ms, "
            f"{trial.kept_up}/{trial.streams} kept up: {verdict}")


def _alone_line(trial: Trial) -> str:
    return (f"{trial.streams} streams: WER {format_number(trial.wer, '.2f')} % under load, "
            f"{format_number(trial.wer_alone, '.2f')} % with each stream alone; the words under load against the "
            f"words alone: {format_number(trial.wer_against_alone, '.2f')} %")


def _ms(seconds: float | None) -> str:
    return format_number(seconds, ".0f", 1000.0)


def _engine(trial: dict, show: Callable[[dict], str]) -> str:
    """A figure of the trial's engine split, or MISSING for a server that does not publish it."""
    return show(trial["engine"]) if trial.get("engine") else MISSING


TRIAL_COLUMNS: list[Column] = [
    ("streams", lambda t: str(t["streams"])), ("kept up", lambda t: f"{t['kept_up']}/{t['streams']}"),
    ("client behind", lambda t: str(t["client_behind"])), ("finals", lambda t: str(t["finals"])),
    *LATENCY_COLUMNS, ("worst stream p90 ms", lambda t: _ms(t["worst_stream_p90_s"])),
    ("Jain", lambda t: format_number(t["jain_mean_latency"], ".3f")),
    ("p90 max/min", lambda t: format_number(t["p90_max_over_min"], ".2f")),
    ("WER %", lambda t: format_number(t["wer"], ".2f")),
    # --alone: the same streams each alone, and the words under load scored against those (absent otherwise).
    ("WER alone %", lambda t: format_number(t.get("wer_alone"), ".2f")),
    ("against alone %", lambda t: format_number(t.get("wer_against_alone"), ".2f")),
    ("partials", lambda t: str(t["partials"])),
    ("errors", lambda t: str(t["errors"])),
    # From the server's /metrics: how busy its engine was, the steps' share of that, the rows a step carried.
    ("engine busy %", lambda t: _engine(t, lambda e: format_number(e["busy"], ".0f", 100.0))),
    ("encode/prompt/step %", lambda t: _engine(t, lambda e: "/".join(format_number(e["share"][op], ".0f", 100.0)
                                                                 for op in ENGINE_OPS))),
    ("rows a step", lambda t: _engine(t, lambda e: format_number(e["rows_per_step"], ".2f"))),
    ("windows an encode", lambda t: _engine(t, lambda e: format_number(e.get("rows_per_encode"), ".2f"))),
    ("ms a step row", lambda t: _engine(t, lambda e: format_number(e["ms_per_step_row"], ".2f"))),
    ("passes", lambda t: "yes" if t["passes"] else "no"),
]


STREAM_COLUMNS: list[Column] = [
    ("stream", lambda r: str(r["stream"] + 1)), ("audio s", lambda r: format_number(r["audio_s"], ".1f")),
    ("finals", lambda r: str(r["finals"])), *LATENCY_COLUMNS,
    ("WER %", lambda r: format_number(r["wer"], ".2f")),
    ("against alone %", lambda r: format_number(r.get("wer_against_alone"), ".2f")),
    ("closed after s", lambda r: format_number(r["closed_after_s"], ".2f")),
    ("client lag ms", lambda r: _ms(r["client_lag_s"])), ("kept up", lambda r: "yes" if r["kept_up"] else "no"),
]


def markdown(doc: dict) -> str:
    """The trials as one table; the streams of a single run as another; --find-max's answer."""
    s, trials = doc["settings"], doc["trials"]
    workers = f"--workers {s['workers']}, " if s["workers"] else ""
    if s.get("partial_interval") is not None:  # absent from the documents of earlier versions
        workers += f"--partial-interval {s['partial_interval']:g}, "
    blocks = [
        f"# edge-asr loadtest, {doc['created']}",
        f"{s['url']} ({workers}{s['server']} server); {s['clips']} clips "
        f"({s['clip_set']}), {trials[0]['audio_s']:.1f} s a stream, {s['chunk_ms']} ms chunks, starts within "
        f"{s['stagger_s']:g} s. A run passes with p90 <= {s['max_p90_s']:g} s and every stream kept up: `closed` "
        f"within {s['close_within_s']:g} s of its last audio, and the client never {s['client_lag_limit_s']:g} s "
        "behind (client behind: the client fell behind, not the server).",
        "\n".join(markdown_table(TRIAL_COLUMNS, trials)),
    ]
    if doc["find_max"] is not None:
        blocks.append(_answer(doc["find_max"]["streams"], trials, s["max_p90_s"]))
    else:
        blocks.append("\n".join(markdown_table(STREAM_COLUMNS, trials[0]["per_stream"])))
    return "\n\n".join(blocks)


def _answer(found: int, trials: list[dict], max_p90_s: float) -> str:
    first_failure = min((t for t in trials if not t["passes"]), key=lambda t: t["streams"], default=None)
    answer = f"Largest number of real-time streams with p90 <= {max_p90_s:g} s and every stream kept up: **{found}**"
    if first_failure is None:
        return f"{answer} (the most tried; raise --max-streams-to-try to try more)."
    return f"{answer} ({first_failure['streams']}: {'; '.join(first_failure['failures'])})."


def main(argv: list[str] | None = None) -> int:
    from edge_asr.runtime.cli_args import add_model_arguments

    parser = argparse.ArgumentParser(prog="python -m edge_asr.benchmarks.loadtest", description=DESCRIPTION)
    add_arguments(parser, add_model_arguments)
    try:
        return run(parser.parse_args(argv))
    except EdgeAsrError as err:
        print(f"edge-asr: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
