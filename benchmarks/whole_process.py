"""Whole processes, as a user runs them: `edge-asr transcribe` over the clips against a faster-whisper script on the
same weights, each a fresh process, in alternating order (ABBA), with the wall time and CPU time of each.

`edge-asr bench` times passes over clips in a loaded process; a user also waits for the interpreter, the imports,
the sessions and the exit. This runs both systems as a user would: `edge-asr transcribe --bundle B --threads N
--format json CLIPS` and a faster-whisper script of a few lines (the model loaded, each clip transcribed greedily,
with edge-asr's best_of for the temperature fallback), round after round, the order of the two reversed every other
round so that neither always runs on a machine the other has just warmed. It reports each system's median and
fastest wall time, its median CPU time, the ratio edge-asr / faster-whisper per round (median and range), each
system's WER over the clips with references and the words it wrote on the clips without speech.

Before timing, each system runs once untimed with Python's bytecode cache allowed (PYTHONDONTWRITEBYTECODE unset),
so that both start as they would after `pip install`, which compiles bytecode; the timed runs then keep the caller's
environment. faster-whisper starts as it ships (numpy's BLAS as the machine gives it) unless `--peer-blas held`,
which gives it the one BLAS thread edge-asr's engine commands start with (runtime/threads.py).

    python3 -m edge_asr.benchmarks.whole_process [--bundle DIR | --model NAME] [--threads 2] [--rounds 10]
                                                 [--set developer|speech|real] [--peer-blas as-shipped|held]
                                                 [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_asr.models.clips import Clip, developer_clips
from edge_asr.runtime.cli_args import positive_int
from edge_asr.runtime.errors import EdgeAsrError

# What a user of faster-whisper writes: argv = model folder, compute type, threads, language, best_of, clips. Greedy,
# with edge-asr's best_of: the samples each temperature fallback draws (faster-whisper's default beam is 5).
PEER_SCRIPT = """\
import json, sys
from faster_whisper import WhisperModel
model = WhisperModel(sys.argv[1], device="cpu", compute_type=sys.argv[2], cpu_threads=int(sys.argv[3]))
for path in sys.argv[6:]:
    segments, _ = model.transcribe(path, beam_size=1, best_of=int(sys.argv[5]), language=sys.argv[4] or None)
    print(json.dumps({"file": path, "text": "".join(s.text for s in segments).strip()}), flush=True)
"""


@dataclass
class SystemRuns:
    name: str
    command: list[str]
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # the last round's text of each clip
    wer: float | None = None
    nonspeech_words: int | None = None  # words written on the clips whose reference is empty (sounds, noise)

    def summary(self) -> dict:
        return {"system": self.name, "wall_median_s": statistics.median(self.wall_s), "wall_min_s": min(self.wall_s),
                "cpu_median_s": statistics.median(self.cpu_s), "wer": self.wer,
                "nonspeech_words": self.nonspeech_words}


SETS = ("developer", "speech", "real")


def clip_set(name: str, work: Path) -> list[Clip]:
    """developer: JFK and the LibriVox clips; speech: every spoken recording the held-out judge has without a corpus
    (the developer clips, the card commands, alsa's channel names, the two joined long-form recordings); real: speech
    and the sounds that should get no words (benchmarks/heldout.py)."""
    if name == "developer":
        return developer_clips()
    from edge_asr.benchmarks.heldout import heldout_sets

    sets = heldout_sets(work, None, log=lambda line: print(line, file=sys.stderr))
    return [clip for set_name, clips in sets.items() if name == "real" or set_name != "sounds" for clip in clips]


def edge_command(bundle: Path, threads: int, paths: list[str]) -> list[str]:
    script = Path(sys.executable).with_name("edge-asr")  # the console script a user runs, when installed beside us
    start = [str(script)] if script.is_file() else [sys.executable, "-m", "edge_asr.runtime.cli"]
    return [*start, "transcribe", "--bundle", str(bundle), "--threads", str(threads), "--format", "json",
            "--no-progress", *paths]


def peer_command(model: Path, compute_type: str, threads: int, language: str | None, paths: list[str]) -> list[str]:
    from edge_asr.runtime.decoding.options import TranscribeOptions

    return [sys.executable, "-c", PEER_SCRIPT, str(model), compute_type, str(threads), language or "",
            str(TranscribeOptions().best_of), *paths]


def run_once(command: list[str], env: dict) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + system, the child's) of one process, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise EdgeAsrError(f"`{Path(command[0]).name} ...` failed (exit status {done.returncode}): {last}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, done.stdout


def texts_of(stdout: str) -> dict[str, str]:
    """file -> text from JSON lines (`--format json`, and the peer script's)."""
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return {entry["file"]: entry["text"] for entry in lines}


def alternate(systems: list[SystemRuns], envs: list[dict], rounds: int, log=print) -> None:
    """``rounds`` timed runs of each system, in ABBA order, after one untimed run each with bytecode caching allowed."""
    for system, env in zip(systems, envs, strict=True):
        run_once(system.command, {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"})
    for i in range(rounds):
        order = list(zip(systems, envs, strict=True))
        for system, env in order if i % 2 == 0 else order[::-1]:
            wall, cpu, stdout = run_once(system.command, env)
            system.wall_s.append(wall)
            system.cpu_s.append(cpu)
            system.texts = texts_of(stdout)
        log(f"round {i + 1}/{rounds}: " + ", ".join(f"{s.name} {s.wall_s[-1]:.3f} s" for s in systems))


def score(system: SystemRuns, clips: list[Clip]) -> None:
    from edge_asr.models.wer import corpus_wer

    pairs = [(c.reference, system.texts.get(str(c.path), "")) for c in clips if c.reference]
    system.wer = corpus_wer(pairs) if pairs else None
    silent = [system.texts.get(str(c.path), "") for c in clips if c.reference == ""]
    system.nonspeech_words = sum(len(text.split()) for text in silent) if silent else None


def report(edge: SystemRuns, peer: SystemRuns, settings: dict) -> dict:
    ratios = sorted(e / p for e, p in zip(edge.wall_s, peer.wall_s, strict=True))
    return {"settings": settings, "systems": [edge.summary(), peer.summary()],
            "ratio_per_round": {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1]},
            "rounds": {s.name: {"wall_s": s.wall_s, "cpu_s": s.cpu_s} for s in (edge, peer)}}


def markdown(doc: dict) -> str:
    s, r = doc["settings"], doc["ratio_per_round"]
    lines = [f"Whole processes over the {s['set']} clips ({s['clips']} files, {s['audio_s']:.1f} s), {s['threads']} "
             f"threads, {s['rounds']} rounds alternated (ABBA), faster-whisper's BLAS {s['peer_blas']}:", "",
             "| system | wall s, median | fastest | CPU s, median | WER % | words on non-speech |",
             "|---|---|---|---|---|---|"]
    for system in doc["systems"]:
        wer = "-" if system["wer"] is None else f"{system['wer']:.2f}"
        silent = "-" if system["nonspeech_words"] is None else str(system["nonspeech_words"])
        lines.append(f"| {system['system']} | {system['wall_median_s']:.3f} | {system['wall_min_s']:.3f} | "
                     f"{system['cpu_median_s']:.3f} | {wer} | {silent} |")
    lines += ["", f"edge-asr / faster-whisper per round: {r['median']:.3f}x at the median "
              f"({r['min']:.3f}-{r['max']:.3f})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m edge_asr.benchmarks.whole_process",
                                     description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--bundle", type=Path, help="an onnxruntime bundle made by `edge-asr compile`")
    which.add_argument("--model", default="tiny.en-adaptive",
                       help="a model compiled into the user cache on first use (default: %(default)s, transcribe's)")
    parser.add_argument("--precision", default="int8", choices=("fp32", "int8"), help="with --model (default: int8)")
    parser.add_argument("--threads", type=positive_int, default=2, help="for both systems (default: %(default)s)")
    parser.add_argument("--rounds", type=positive_int, default=10, help="timed runs of each (default: %(default)s)")
    parser.add_argument("--set", choices=SETS, default="developer",
                        help="developer: JFK and the LibriVox clips (35.7 s); speech: with the card commands, alsa's "
                        "channel names and two joined long-form recordings (21 files, 118.6 s); real: speech and 28 "
                        "non-speech sounds (default: %(default)s)")
    parser.add_argument("--peer-model", type=Path, help="the CTranslate2 folder (default: the bundle's source)")
    parser.add_argument("--peer-blas", choices=("as-shipped", "held"), default="as-shipped",
                        help="held: faster-whisper gets OPENBLAS_NUM_THREADS=1 as edge-asr's engine commands do "
                        "(default: %(default)s)")
    parser.add_argument("--json", type=Path, help="write the figures and every round's times here")
    args = parser.parse_args(argv)
    try:
        doc = measure(args)
    except EdgeAsrError as err:
        print(f"whole_process: {err}", file=sys.stderr)
        return 1
    print(markdown(doc))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


def measure(args) -> dict:
    from edge_asr.benchmarks.bench_command import require_scoring
    from edge_asr.runtime.audio import load_audio
    from edge_asr.runtime.bundle import load_bundle
    from edge_asr.runtime.bundle_cache import cached_bundle
    from edge_asr.runtime.threads import Threads

    if not _has("faster_whisper"):
        raise EdgeAsrError("faster-whisper is not installed: pip install 'edge-asr[peers]'.")
    bundle = args.bundle or cached_bundle(args.model, args.precision)
    manifest = load_bundle(bundle).manifest
    peer_model = args.peer_model or Path(manifest.get("source", {}).get("checkpoint", ""))
    if not (peer_model / "model.bin").is_file():
        raise EdgeAsrError(f"{peer_model} is not a CTranslate2 model folder (no model.bin); pass --peer-model DIR.")
    with tempfile.TemporaryDirectory() as work:
        clips = clip_set(args.set, Path(work))
        require_scoring(clips)
        paths = [str(c.path) for c in clips]
        language = None if manifest["model"].get("multilingual") else "en"
        compute = "int8" if manifest["precision"] == "int8" else "float32"
        edge = SystemRuns("edge-asr", edge_command(bundle, args.threads, paths))
        peer = SystemRuns("faster-whisper", peer_command(peer_model, compute, args.threads, language, paths))
        peer_env = Threads.environment_as_given()
        if args.peer_blas == "held":
            peer_env["OPENBLAS_NUM_THREADS"] = "1"
        alternate([edge, peer], [dict(os.environ), peer_env], args.rounds,
                  log=lambda line: print(f"whole_process: {line}", file=sys.stderr))
        for system in (edge, peer):
            score(system, clips)
        audio_s = sum(len(load_audio(c.path)) for c in clips) / 16000
    settings = {"bundle": str(bundle), "model": manifest["model"]["name"], "precision": manifest["precision"],
                "peer_model": str(peer_model), "set": args.set, "clips": len(clips), "audio_s": audio_s,
                "threads": args.threads, "rounds": args.rounds, "peer_blas": args.peer_blas}
    return report(edge, peer, settings)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
