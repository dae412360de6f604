"""One system measured over a clip set, in a process of its own, so that its peak memory is its own.

`edge-asr bench` starts `python -m edge_asr.benchmarks.bench_run` once per system with a JSON
`BenchSpec` on stdin. The child loads the system (timed), warms it up, times `repeats` passes over the
clips with the power samplers recording, and prints one run of the result document (a `BenchRun`, see
benchmarks/report.py) as JSON on stdout with its own peak memory; the parent adds the GPU's, and the
child's rusage where the child could not tell. Progress goes to stderr.

Offline mode transcribes each clip as `edge-asr transcribe` does; with `streams` above 1, that many
threads share the one engine. Stream mode plays `streams` real-time streams of the clips, joined by
short silences, into one StreamRecognizer each (benchmarks/realtime_play.py).
"""
from __future__ import annotations

import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from edge_asr.models.clips import Clip
from edge_asr.benchmarks.power import PowerRecording, PowerSummary, choose
from edge_asr.benchmarks.report import LatencyFigures, latency_figures
from edge_asr.models.wer import corpus_wer
from edge_asr.runtime.audio import SAMPLE_RATE, load_audio
from edge_asr.runtime.errors import EdgeAsrError


@dataclass
class BenchSpec:
    system: str
    mode: str
    clips: list[Clip]
    bundle: str | None = None
    peer_model: str | None = None  # the CTranslate2 model folder faster-whisper loads
    precision: str = "int8"
    threads: int = 1
    warmup: int = 1
    repeats: int = 3
    streams: int = 1
    beam: int = 1
    language: str | None = None
    task: str = "transcribe"
    power: str = "auto"
    power_interval_s: float = 0.1
    config: str = ""
    vad: bool = False  # offline: only the speech the VAD finds (`transcribe --vad`; faster-whisper's vad_filter)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> "BenchSpec":
        fields = json.loads(text)
        fields["clips"] = [Clip(c["name"], c["path"], c["reference"]) for c in fields["clips"]]
        return cls(**fields)


@dataclass
class Pass:
    seconds: float  # wall time of the whole pass
    clip_seconds: list[float]
    texts: list[str]
    tokens: int
    latencies: list[float] = field(default_factory=list)
    kept_up: bool = True


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def edge_asr_transcriber(spec: BenchSpec, threads=None):
    """The Transcriber of the bundle, its engine wrapped to time the encoder and decoder calls; ``threads``: the
    caller's runtime.threads.Threads when it has made helpers (VADs) already, else spec.threads."""
    from edge_asr.runtime.engines.timed import TimedEngine
    from edge_asr.runtime.threads import Threads
    from edge_asr.runtime.transcriber import Transcriber

    vad, threads = None, Threads.of(threads or spec.threads)
    if spec.vad:
        from edge_asr.runtime.streaming.vad import SileroVad

        vad = SileroVad(threads=threads)  # before the engine, as `transcribe --vad` makes it
    transcriber = Transcriber(spec.bundle, threads=threads, vad=vad)
    transcriber.engine = TimedEngine(transcriber.engine)
    options = transcriber.options(beam_size=spec.beam, language=spec.language, task=spec.task)
    return transcriber, options


def edge_asr_offline(spec: BenchSpec):
    from edge_asr.runtime.speech_windows import OFFLINE_VAD

    transcriber, options = edge_asr_transcriber(spec)

    def run(audio: np.ndarray) -> tuple[str, int]:
        transcript = transcriber.transcribe(audio, options, OFFLINE_VAD if spec.vad else None)
        return transcript.text, sum(len(s.tokens) for s in transcript.segments)

    return run, transcriber.engine


def faster_whisper_offline(spec: BenchSpec):
    from faster_whisper import WhisperModel

    from edge_asr.runtime.decoding.options import TranscribeOptions
    from edge_asr.runtime.threads import Threads

    Threads.hold_blas()  # as edge-asr's engine does: faster-whisper's Mel also runs on numpy's BLAS (10-20 % faster)
    compute_type = "int8" if spec.precision == "int8" else "float32"  # CTranslate2 has no fp16 on a CPU
    model = WhisperModel(spec.peer_model, device="cpu", compute_type=compute_type, cpu_threads=spec.threads,
                         num_workers=spec.streams)

    def run(audio: np.ndarray) -> tuple[str, int]:
        segments, _ = model.transcribe(audio, language=spec.language, task=spec.task, beam_size=spec.beam,
                                       best_of=TranscribeOptions().best_of, vad_filter=spec.vad)  # as edge-asr's fallback
        segments = list(segments)
        return "".join(s.text for s in segments).strip(), sum(len(s.tokens) for s in segments)

    return run, None


@dataclass
class Subject:
    """A loaded system ready to time: what warms it up, what one pass runs, what the results are
    scored against. Rows are the clips (offline) or the streams (stream)."""

    warm: Callable[[], object]
    run_pass: Callable[[], Pass]
    engine: object | None  # a TimedEngine when the system is edge-asr
    names: list[str]
    audio_s: list[float]
    references: list[str | None]


def offline_subject(spec: BenchSpec) -> Subject:
    audio = [load_audio(c.path) for c in spec.clips]
    run, engine = (edge_asr_offline if spec.system == "edge-asr" else faster_whisper_offline)(spec)
    return Subject(partial(run, audio[0]), partial(offline_pass, run, audio, spec.streams), engine,
                   [c.name for c in spec.clips], [len(a) / SAMPLE_RATE for a in audio],
                   [c.reference for c in spec.clips])


def offline_pass(run, audio: list[np.ndarray], streams: int) -> Pass:
    """Every clip once; with several streams, that many clips at a time on threads sharing the engine."""
    def timed(samples):
        started = time.perf_counter()
        text, tokens = run(samples)
        return time.perf_counter() - started, text, tokens

    started = time.perf_counter()
    if streams == 1:
        results = [timed(a) for a in audio]
    else:
        with ThreadPoolExecutor(streams) as pool:
            results = list(pool.map(timed, audio))
    seconds = time.perf_counter() - started
    return Pass(seconds, [r[0] for r in results], [r[1] for r in results], sum(r[2] for r in results))


def stream_subject(spec: BenchSpec) -> Subject:
    """`streams` real-time streams of the clips, each starting at a different clip so that their pauses
    do not all fall at once; one VAD and one recognizer per stream, one engine for all."""
    from edge_asr.benchmarks.realtime_play import rotated_streams
    from edge_asr.runtime.streaming.vad import SileroVad
    from edge_asr.runtime.threads import Threads

    if spec.system != "edge-asr":
        raise EdgeAsrError(f"{spec.system} has no streaming mode.")
    threads = Threads(spec.threads)  # the VADs before the engine, as `edge-asr stream` makes them
    vads = SileroVad.for_streams(spec.streams, threads=threads)
    audio, references = zip(*rotated_streams(spec.clips, spec.streams, np.random.default_rng(0)), strict=True)
    transcriber, options = edge_asr_transcriber(spec, threads)
    return Subject(partial(transcriber.transcribe, load_audio(spec.clips[0].path), options),
                   partial(stream_pass, transcriber, options, vads, list(audio)), transcriber.engine,
                   [f"stream-{i}" for i in range(spec.streams)], [len(a) / SAMPLE_RATE for a in audio], list(references))


def stream_pass(transcriber, options, vads: list, audio: list[np.ndarray]) -> Pass:
    from edge_asr.benchmarks.realtime_play import play
    from edge_asr.runtime.streaming.recognizer import StreamOptions, StreamRecognizer

    for vad in vads:
        vad.reset()
    recognizers = [StreamRecognizer(transcriber.engine, transcriber.tokenizer, vad, options, StreamOptions())
                   for vad in vads]
    playback = play(recognizers, audio)
    return Pass(sum(playback.busy_s), playback.busy_s, playback.texts, 0,
                [f.latency_s for f in playback.finals], playback.kept_up)


@dataclass(frozen=True)
class ClipFigures:
    """One row of a run: a clip (offline) or a stream (stream mode), its median time and its last words."""

    name: str
    audio_s: float
    seconds: float
    rtf: float
    text: str
    reference: str | None
    wer: float | None


@dataclass
class RunPower(PowerSummary):
    """A power source's summary over the timed passes, with the joules it took per second of audio."""

    joules_per_audio_s: float | None


@dataclass(frozen=True)
class BenchRun:
    """One system's figures over the clip set; asdict() gives a run of the result document (report.py).
    The child states its own peak RSS where /proc tells it; the parent fills in the rest of the memory
    figures from outside (bench_command.measure_in_child)."""

    system: str
    config: str
    audio_s: float
    seconds: float
    rtf: float
    repeat_seconds: list[float]
    load_s: float
    encoder_s: float | None
    decoder_s: float | None
    tokens: int | None
    tokens_per_s: float | None
    peak_rss_mb: float | None
    gpu_peak_mb: float | None
    wer: float | None
    clips: list[ClipFigures]
    latency: LatencyFigures | None
    power: list[RunPower]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "BenchRun":
        fields = json.loads(text)
        fields["clips"] = [ClipFigures(**c) for c in fields["clips"]]
        fields["latency"] = LatencyFigures(**fields["latency"]) if fields["latency"] else None
        fields["power"] = [RunPower(**p) for p in fields["power"]]
        return cls(**fields)


def measure(spec: BenchSpec) -> BenchRun:
    """Load, warm up and time the system; the run's figures as the result document states them."""
    samplers, unavailable = choose(spec.power)
    log(f"{spec.system}: loading")
    started = time.perf_counter()
    subject = (stream_subject if spec.mode == "stream" else offline_subject)(spec)
    load_s = time.perf_counter() - started
    for number in range(spec.warmup):
        log(f"{spec.system}: warm-up {number + 1}/{spec.warmup}")
        subject.warm()
    if subject.engine is not None:
        subject.engine.reset()
    passes = []
    with PowerRecording(samplers, spec.power_interval_s) as power:
        for number in range(spec.repeats):
            passes.append(subject.run_pass())
            log(f"{spec.system}: pass {number + 1}/{spec.repeats}: {passes[-1].seconds:.2f} s")
    return figures(spec, subject, passes, load_s, power.summaries() + unavailable)


def figures(spec: BenchSpec, subject: Subject, passes: list[Pass], load_s: float, power: list) -> BenchRun:
    """The run as the result document states it: medians over the passes, texts of the last one."""
    audio_s, seconds, last = sum(subject.audio_s), statistics.median(p.seconds for p in passes), passes[-1]
    rows = []
    for i, (name, reference) in enumerate(zip(subject.names, subject.references, strict=True)):
        row_seconds = statistics.median(p.clip_seconds[i] for p in passes)
        rows.append(ClipFigures(name, subject.audio_s[i], row_seconds, row_seconds / subject.audio_s[i], last.texts[i],
                                reference, corpus_wer([(reference, last.texts[i])]) if reference else None))
    engine = subject.engine
    encoder_s = engine.encoder_seconds / len(passes) if engine is not None else None
    decoder_s = engine.decoder_seconds / len(passes) if engine is not None else None
    tokens = last.tokens or None  # stream passes do not count them
    latencies = [value for p in passes for value in p.latencies]
    return BenchRun(
        system=spec.system, config=spec.config, audio_s=audio_s, seconds=seconds,
        rtf=seconds / audio_s, repeat_seconds=[p.seconds for p in passes], load_s=load_s,
        encoder_s=encoder_s, decoder_s=decoder_s, tokens=tokens,
        tokens_per_s=tokens / decoder_s if tokens and decoder_s else None,
        peak_rss_mb=None, gpu_peak_mb=None,
        wer=corpus_wer(list(zip(subject.references, last.texts, strict=True))) if all(subject.references) else None,
        clips=rows,
        latency=latency_figures(latencies, all(p.kept_up for p in passes)) if spec.mode == "stream" else None,
        power=[RunPower(**summary.to_dict(), joules_per_audio_s=summary.per_audio_second(audio_s * len(passes)))
               for summary in power],
    )


def own_peak_rss_mb() -> float | None:
    """This process's peak resident memory since it started this program (Linux: VmHWM), or None elsewhere.

    Not getrusage: Linux carries the maximum RSS across exec, so a child of a parent that had just compiled a
    bundle (torch loaded, 1.4 GB) reported the parent's peak as its own."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def main() -> int:
    spec = BenchSpec.from_json(sys.stdin.read())
    try:
        print(replace(measure(spec), peak_rss_mb=own_peak_rss_mb()).to_json())
    except EdgeAsrError as err:
        print(f"edge-asr bench: {spec.system}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
