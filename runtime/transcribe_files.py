"""`edge-asr transcribe`: many files, one bundle; a bad file costs only itself, partial work is kept."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from edge_asr.runtime.audio import SAMPLE_RATE, AudioFile, damage_report
from edge_asr.runtime.decoding.options import TranscribeOptions
from edge_asr.runtime.errors import AudioError, EdgeAsrError
from edge_asr.runtime.formats import SubtitleLayout, render
from edge_asr.runtime.streaming.segmenter import VadOptions
from edge_asr.runtime.threads import Threads
from edge_asr.runtime.transcriber import Transcriber
from edge_asr.runtime.transcript import Transcript


class Progress:
    """One self-rewriting stderr line per file, only on a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()

    def update(self, name: str, done: float, total: float) -> None:
        if self.enabled:
            print(f"\r{name}: {min(done, total):6.1f} / {total:.1f} s ({100 * min(done / total, 1):3.0f}%)",
                  end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def output_names(files: list[Path], fmt: str) -> dict[Path, str]:
    """Each input's output file name in --output: its stem and the format, numbered where stems repeat
    (a/good.wav and b/good.wav write good.txt and good-2.txt), so no transcript overwrites another."""
    names, used = {}, set()
    for path in files:
        name, number = f"{path.stem}.{fmt}", 1
        while name in used:
            number += 1
            name = f"{path.stem}-{number}.{fmt}"
        used.add(name)
        names[path] = name
    return names


def check_output(directory: Path) -> None:
    """--output must be a directory this process can write, checked before any audio is transcribed."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EdgeAsrError(f"cannot make the output directory {directory}: {err.strerror or err}.") from None
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise EdgeAsrError(f"the output directory {directory} is not a directory this user can write to.")


@dataclass(frozen=True)
class FileOutput:
    """Where `edge-asr transcribe` puts each transcript: stdout, or one file per input in ``directory``."""

    format: str = "txt"
    directory: Path | None = None
    progress: bool = True  # a progress line on stderr, on a terminal
    layout: SubtitleLayout = SubtitleLayout()  # srt and vtt line width and cue length
    names: dict[Path, str] = field(default_factory=dict)  # input -> file name in directory (output_names)


@dataclass(frozen=True)
class SpeechOnly:
    """`transcribe --vad`: only the speech the VAD finds is transcribed (runtime/speech_windows.py)."""

    vad: VadOptions
    model: Path | None = None  # the Silero ONNX file; None: the installed silero-vad


def transcribe_files(bundle: Path, files: list[Path], decoding: TranscribeOptions, output: FileOutput,
                     threads: int | Threads | None = None, speech_only: SpeechOnly | None = None) -> int:
    """Transcribes ``files`` one by one with the bundle's model facts filled into ``decoding``; returns the exit
    status (1 when any file failed or was damaged)."""
    if output.directory is not None:
        check_output(output.directory)
        output = replace(output, names=output_names(files, output.format))
        renamed = [f"{path} -> {name}" for path, name in output.names.items() if name != f"{path.stem}.{output.format}"]
        if renamed:
            print(f"edge-asr: inputs share a name; numbered outputs: {', '.join(renamed)}", file=sys.stderr)
    vad, threads = None, Threads.of(threads)
    if speech_only is not None:
        from edge_asr.runtime.streaming.vad import SileroVad

        vad = SileroVad(speech_only.model, threads=threads)  # before the engine; a missing VAD is refused now
    transcriber = Transcriber(bundle, threads=threads, vad=vad)
    options = transcriber.with_model_facts(decoding).validate()
    progress = Progress(output.progress)
    failures = 0
    for path in files:
        transcript = Transcript(file=str(path), language=decoding.language or "", duration=0.0)
        ok, audio = True, None
        try:
            audio = AudioFile(path)
            speech = transcriber.speech(audio, speech_only.vad) if speech_only else None  # a pass to find speech
            mel = transcriber.features(audio, speech)  # a first pass over the file: its length, its peak, any damage
            samples = speech.file_samples if speech is not None else mel.samples
            transcript.duration, transcript.complete = samples / SAMPLE_RATE, not audio.damage
            for window in transcriber.windows(mel, options, speech):
                transcript.language = window.language
                transcript.segments.extend(window.segments)
                progress.update(path.name, window.end, transcript.duration)
        except EdgeAsrError as err:
            ok, transcript.complete = _report(err), False
        except KeyboardInterrupt:
            progress.finish()
            transcript.complete = False
            _keep(transcript, output)
            print(f"edge-asr: interrupted; {path} is transcribed up to {_last_end(transcript):.1f} s", file=sys.stderr)
            return 130
        progress.finish()
        if ok or transcript.segments:  # a file that failed midway keeps the text already heard
            ok = _keep(transcript, output) and ok
        if ok and audio is not None and audio.damage:  # what decoded is kept; the exit status says it was not all
            ok = _report(AudioError(damage_report(audio)))
        failures += not ok
    return 1 if failures else 0


def _report(err: EdgeAsrError) -> bool:
    print(f"edge-asr: {err}", file=sys.stderr)
    return False


def _keep(transcript: Transcript, output: FileOutput) -> bool:
    try:
        _emit(transcript, output)
        return True
    except EdgeAsrError as err:
        return _report(err)


def _last_end(transcript: Transcript) -> float:
    return transcript.segments[-1].end if transcript.segments else 0.0


def _emit(transcript: Transcript, output: FileOutput) -> None:
    text = render(transcript, output.format, output.layout)
    if text and not text.endswith("\n"):
        text += "\n"
    if output.directory is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = output.directory / output.names[Path(transcript.file)]
    try:
        target.write_text(text)
    except OSError as err:  # the text is not lost: it goes to stdout instead
        sys.stdout.write(text)
        sys.stdout.flush()
        raise EdgeAsrError(f"cannot write {target} ({err.strerror or err}): its text went to stdout instead.") from None
