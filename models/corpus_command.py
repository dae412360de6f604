"""`edge-asr corpus`: the command line of models/corpus.py. Importing this module is cheap (no torch, no
voices): `edge-asr` builds every command's parser on each run."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edge_asr.runtime.bundle_cache import DEFAULT_MODEL, DEFAULT_PRECISION

DESCRIPTION = (
    "Build an offline speech corpus for distillation and fine-tuning: synthetic voices (Piper, eSpeak NG, "
    "Festival) read sentences from WordNet and fortunes (or --sentence-file), with speed perturbation, noise "
    "and level augmentation, plus --folder audio of your own, labelled by a teacher. Writes 16 kHz mono "
    "PCM16 WAVs and DIR/manifest.jsonl; a rerun skips the examples already written.")


def add_corpus_parser(commands) -> None:
    co = commands.add_parser("corpus", help="build a speech corpus for distillation and fine-tuning",
                             description=DESCRIPTION)
    co.add_argument("--out", type=Path, required=True, metavar="DIR", help="the corpus folder (made or resumed)")
    co.add_argument("--sentences", type=_at_least_zero(int), default=1000, metavar="N",
                    help="synthetic examples: sentences read, one voice each (default: %(default)s)")
    co.add_argument("--voices", type=_names, metavar="LIST",
                    help="comma-separated, from piper, espeak-ng, festival (default: every installed one)")
    co.add_argument("--sentence-file", type=Path, metavar="F", help="your sentences, one a line, instead of "
                    "WordNet's usage examples and fortunes")
    co.add_argument("--folder", type=Path, metavar="DIR", help="your own audio (any format, any rate), "
                    "labelled by the teacher")
    co.add_argument("--references", type=Path, metavar="TSV", help="transcripts of the --folder clips, "
                    "`name<TAB>text` per line: a pseudo-label further than --max-wer from its transcript is "
                    "dropped (default: DIR/references.tsv when there)")
    co.add_argument("--teacher", default=DEFAULT_MODEL, metavar="MODEL_OR_BUNDLE",
                    help="the model that makes pseudo-labels: a zoo name, a checkpoint or a bundle directory "
                    "(default: %(default)s)")
    co.add_argument("--pseudo-label", action="store_true",
                    help="label the synthetic examples with the teacher too, dropping those beyond --max-wer")
    co.add_argument("--max-wer", type=_at_least_zero(float), default=10.0, metavar="PERCENT",
                    help="the largest WER of a pseudo-label against its reference (default: %(default)s)")
    co.add_argument("--seed", type=int, default=0, help="sentences, voices and augmentation (default: %(default)s)")
    co.add_argument("--noise-probability", type=float, default=0.7, metavar="P",
                    help="share of synthetic examples with white or pink noise at 10-30 dB SNR (default: %(default)s)")


def run(args) -> int:
    from edge_asr.models.augment import AugmentOptions
    from edge_asr.models.corpus import DROPPED, CorpusOptions, build_corpus

    options = CorpusOptions(args.sentences, args.voices, args.sentence_file, args.folder, args.references,
                            args.pseudo_label, args.max_wer, args.seed,
                            AugmentOptions(noise_probability=args.noise_probability))
    options.validate()
    labeller = teacher(args.teacher) if options.needs_teacher() else None
    progress = ProgressLine()
    try:
        summary = build_corpus(args.out, options, labeller, log=_log, progress=progress)
    finally:  # an interruption is reported on a line of its own
        progress.finish()
    totals = summary.by_source()
    print(f"corpus: {len(summary.entries)} examples, {sum(h for _, h in totals.values()):.2f} h, in "
          f"{args.out}: {summary.written} written now, {summary.already_done} done before")
    for source, (count, hours) in sorted(totals.items()):
        print(f"  {source:10} {count:6} examples {hours:7.2f} h")
    if summary.dropped:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in summary.dropped.most_common())
        print(f"  dropped {sum(summary.dropped.values())} ({reasons}); their ids are in {args.out / DROPPED}")
    return 0


def teacher(model_or_bundle: str):
    """A labeller transcribing with a bundle directory, or with a model compiled once into the cache."""
    from edge_asr.runtime.bundle import MANIFEST
    from edge_asr.runtime.bundle_cache import cached_bundle
    from edge_asr.runtime.transcriber import Transcriber

    path = Path(model_or_bundle)
    bundle = path if (path / MANIFEST).is_file() else cached_bundle(model_or_bundle, DEFAULT_PRECISION)
    transcriber = Transcriber(bundle)
    options = transcriber.options()
    return lambda audio: transcriber.transcribe(audio, options).text


class ProgressLine:
    """Examples done, rate and ETA on stderr: rewritten in place on a terminal, a line every 30 s otherwise."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.start = self.shown = time.monotonic()
        self.rewriting = False  # a line without its newline is on the terminal

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == 0:  # the voices are loaded: the rate counts from here
            self.start = self.shown = now
            return
        if now - self.shown < (0.5 if self.tty else 30) and done < total:
            return
        self.shown = now
        rate = done / max(now - self.start, 1e-9)
        eta = time.strftime("%H:%M:%S", time.gmtime((total - done) / rate))
        line = f"corpus: {done}/{total} examples, {rate:.2f}/s, ETA {eta}"
        print("\r" + line if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
        self.rewriting = self.tty

    def finish(self) -> None:
        if self.rewriting:
            print(file=sys.stderr)


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _at_least_zero(kind):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
        return value

    return parse
