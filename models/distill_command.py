"""`edge-asr distill` and `edge-asr finetune`: a corpus (made by `edge-asr corpus`) into a student
checkpoint or a LoRA adapter. Parsers only at import time; torch is imported when a command runs."""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from edge_asr.runtime.cli_args import positive_int, thread_count
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.mel import FRAMES_PER_SECOND

STUDENT_FILE = "student.pt"
DELTA_DIR = "delta"
# The recipe `edge-asr distill` runs by default, chosen on a tune corpus (README, "Distil and fine-tune").
DISTILL_RECIPE = {"alpha": 0.0, "temperature": 1.0, "learning_rate": 1e-5, "steps": 600, "encoder_weight": 1.0}
# The student's own silence gate (runtime/windows.py, WindowPolicy.silence_logprob), written into its checkpoint:
# on the tune corpus the tiny.en students wrote "You" and "Thank you." on noise at average log-probabilities of
# -0.88 to -1.10 (the no-speech probability over 0.6), where openai's gate of -1 let 2 of 60 clips through; -0.8
# silenced them at the same WER (README, "Distil and fine-tune").
SILENCE_LOGPROB = -0.8
ADAPTER_DIR = "adapter"  # beside the run's state, so the directory to ship holds the adapter alone
REPORT_FILE = "report.json"

DISTILL = (
    "Distil a length-adaptive student from a teacher: the student reads each utterance's audio plus a margin "
    "instead of 30 s of padding, so its encoder's cost follows the audio. Its labels are the teacher's own: the "
    "teacher decodes every example as the runtime would (30 s window, timestamps for most), and the student learns "
    "(1 - alpha) * T^2 * KL(teacher || student) over the teacher's top-k logits at every position, alpha * "
    "cross-entropy on the teacher's tokens, and --encoder-weight times the distance to the teacher's encoder output "
    "on the audio's frames. Teacher labels are cached once per corpus. Writes OUT/student.pt, which `edge-asr "
    "compile --model` reads, and OUT/report.json; rerunning with the same OUT resumes.")
FINETUNE = (
    "Fine-tune a model with LoRA on the attention projections and save the adapter alone (about 1 MB) in "
    "OUT/adapter, which `edge-asr compile --model BASE --adapter OUT/adapter` merges into the base weights. "
    "Labels only by default (--alpha 1); rerunning with the same OUT resumes.")


def add_train_parsers(commands) -> None:
    di = commands.add_parser("distill", help="distil a length-adaptive student from a teacher", description=DISTILL)
    di.add_argument("--teacher", default="tiny.en", help="zoo name or checkpoint path (default: %(default)s)")
    di.add_argument("--decoder-layers", type=_layers, metavar="I,J,...",
                    help="teacher decoder layers the student keeps, e.g. 0,3 (default: all: a same-size student)")
    di.add_argument("--encoder-layers", type=_layers, metavar="I,J,...",
                    help="teacher encoder layers the student keeps (default: all)")
    di.add_argument("--margin", type=float, default=1.0, metavar="S",
                    help="seconds of silence after the longest audio of a batch in the student's window "
                    "(default: %(default)s)")
    di.add_argument("--silence-logprob", type=float, default=SILENCE_LOGPROB, metavar="LP",
                    help="the student's silence gate, kept in its checkpoint: a window it calls silent (no-speech "
                    "probability over 0.6) is skipped unless its words average a log-probability over LP "
                    "(default: %(default)s; stock Whisper's is -1)")
    di.add_argument("--freeze", choices=("none", "encoder", "decoder"),
                    help="keep this stack as the teacher's and train the rest (default: decoder when the student "
                    "keeps the teacher's whole decoder: the encoder learns to end where the audio ends and the "
                    "teacher's decoder, language model and all, stays as it is; none for a cut decoder)")
    di.add_argument("--teacher-eval", action=argparse.BooleanOptionalAction, default=True,
                    help="also evaluate the teacher at 30 s windows on the evaluation sets, for comparison "
                    "(default: yes)")
    di.add_argument("--encoder-weight", type=float, default=DISTILL_RECIPE["encoder_weight"], metavar="BETA",
                    help="weight of matching the teacher's encoder output on the audio's frames (default: %(default)s)")
    _add_common(di, **{name: DISTILL_RECIPE[name] for name in ("alpha", "learning_rate", "steps", "temperature")})

    ft = commands.add_parser("finetune", help="LoRA fine-tuning saved as a small adapter", description=FINETUNE)
    ft.add_argument("--base", default="tiny.en", help="zoo name or checkpoint path (default: %(default)s)")
    ft.add_argument("--rank", type=positive_int, default=8, help="LoRA rank (default: %(default)s)")
    ft.add_argument("--stacks", type=_names, default=("encoder", "decoder"), metavar="encoder,decoder",
                    help="where LoRA goes (default: both; decoder alone trains several times faster)")
    ft.add_argument("--margin", type=float, metavar="S",
                    help="train a length-adaptive adapter, as distill trains a student: the model reads the "
                    "longest audio of a batch plus S seconds, and the adapter records that window policy "
                    "(default: Whisper's 30 s windows)")
    _add_common(ft, alpha=1.0, learning_rate=1e-3, steps=1000, temperature=2.0)


def _add_common(parser: argparse.ArgumentParser, alpha: float, learning_rate: float, steps: int,
                temperature: float) -> None:
    parser.add_argument("--corpus", type=Path, nargs="+", required=True, metavar="DIR",
                        help="one or more corpora made by `edge-asr corpus`, trained on together (e.g. a domain's "
                        "phrases and general sentences, so that a fine-tune keeps the rest of the language)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="run directory")
    parser.add_argument("--steps", type=positive_int, default=steps, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="examples per batch (default: %(default)s)")
    parser.add_argument("--accumulation", type=positive_int, default=1, help="batches per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=learning_rate, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=alpha,
                        help="weight of the labels' cross-entropy; the teacher gets 1 - alpha (default: %(default)s)")
    parser.add_argument("--temperature", type=_temperature, default=(temperature, None, 0), metavar="T[:END:STEPS]",
                        help=f"KD temperature, optionally moving to END over STEPS steps (default: {temperature:g})")
    parser.add_argument("--join", type=positive_int, default=3, metavar="N",
                        help="also train on every N corpus utterances read as one, with pauses, so short "
                        "sentences teach long windows too; 1: never (default: %(default)s)")
    parser.add_argument("--top-k", type=positive_int, default=32,
                        help="teacher logits cached per position (default: %(default)s)")
    parser.add_argument("--eval-every", type=int, default=250, metavar="N",
                        help="evaluate every N steps, 0: at the end only (default: %(default)s)")
    parser.add_argument("--eval-corpus", type=Path, nargs="+", default=[], metavar="DIR",
                        help="corpora to evaluate on, e.g. one built with `edge-asr corpus --split tune`: WER on their "
                        "speech, words written on their non-speech, loops, through the runtime's own decoding. Choose "
                        "a recipe on these; judge it on clips no choice was made on (benchmarks/heldout.py)")
    parser.add_argument("--eval-folder", type=Path, metavar="DIR",
                        help="more audio to evaluate on, with DIR/references.tsv or a pocketsphinx transcription file")
    parser.add_argument("--checkpoint-every", type=positive_int, default=100, metavar="N",
                        help="save the run's state every N steps, for a rerun to resume from (default: %(default)s)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="build the corpora's example caches (the teacher's labels: the long part on a CPU) and stop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--threads", type=thread_count, help="CPU threads for PyTorch (default: all cores)")


def run_distill(args) -> int:
    from edge_asr.models.student import freeze, make_student, save_openai_checkpoint
    from edge_asr.models.whisper_torch import from_checkpoint
    from edge_asr.models.zoo import ZOO, resolve_model
    from edge_asr.runtime.windows import WindowPolicy

    _threads(args.threads)
    checkpoint = resolve_model(args.teacher)
    teacher = from_checkpoint(checkpoint)
    examples, evaluator = _data(args, checkpoint, teacher, teacher_labels=True)
    if args.prepare_only:
        return _prepared(examples)
    student = make_student(teacher, args.decoder_layers, args.encoder_layers)
    frozen = freeze(student, args.freeze, args.decoder_layers)
    if frozen != "none":
        print(f"the student's {frozen} stays the teacher's (--freeze {frozen}); the rest is trained", flush=True)
    window = WindowPolicy(needs_30s_padding=False, margin_s=args.margin, silence_logprob=args.silence_logprob).validate()
    evaluations = {}
    if evaluator is not None and args.teacher_eval:
        evaluations["teacher_padded"] = evaluator.evaluate(teacher, WindowPolicy())
        _print_evaluation(f"teacher {checkpoint.name}, 30 s windows", evaluations["teacher_padded"])
    started = time.monotonic()
    history, last = _train(args, student, examples, evaluator, window, args.encoder_weight)
    minutes = (time.monotonic() - started) / 60
    path = save_openai_checkpoint(student, args.output / STUDENT_FILE, window)
    if evaluator is not None:
        evaluations["student_audio_length"] = last or evaluator.evaluate(student, window)
    if frozen == "decoder" and args.teacher in ZOO:  # the student is the zoo model plus its encoder
        from edge_asr.models.student_delta import save_delta

        card = _card(args, examples, minutes, evaluations)
        delta = save_delta(student.state_dict(), checkpoint, args.teacher, window, args.output / DELTA_DIR, card)
        print(f"wrote {delta} (the student as a delta on {args.teacher}: `--model {delta}` reads it)")
    _report(args, history, evaluations, path)
    return 0


def run_finetune(args) -> int:
    from edge_asr.models.lora import LoraAdapter, LoraSettings
    from edge_asr.models.whisper_torch import from_checkpoint
    from edge_asr.models.zoo import resolve_model
    from edge_asr.runtime.windows import WindowPolicy

    _threads(args.threads)
    base = resolve_model(args.base)
    teacher = from_checkpoint(base) if args.alpha < 1 else None
    examples, evaluator = _data(args, base, teacher, teacher_labels=False)
    if args.prepare_only:
        return _prepared(examples)
    adapter = LoraAdapter(from_checkpoint(base), LoraSettings(rank=args.rank, stacks=args.stacks))
    window = None if args.margin is None else WindowPolicy(needs_30s_padding=False, margin_s=args.margin)
    evaluations = {}
    if evaluator is not None:
        evaluations["before"] = evaluator.evaluate(adapter.model, WindowPolicy())
        _print_evaluation(f"{base.name} before fine-tuning, 30 s windows", evaluations["before"])
    history, last = _train(args, adapter.model, examples, evaluator, window or WindowPolicy(), 0.0)
    if evaluator is not None:
        evaluations["after"] = last or evaluator.evaluate(adapter.model, window or WindowPolicy())
    path = adapter.save(args.output / ADAPTER_DIR, base, window)
    _report(args, history, evaluations, path)
    return 0


def _data(args, checkpoint, teacher, teacher_labels: bool):
    """The corpus as cached examples (labelled by the teacher, or by the corpus text with the teacher's
    top-k when it has a share), and the evaluation sets (None when none was asked for)."""
    from edge_asr.models.clips import Clip, folder_clips, sphinx_clips
    from edge_asr.models.corpus import read_manifest
    from edge_asr.models.real_speech import REAL_SETS
    from edge_asr.models.student_eval import StudentEvaluator
    from edge_asr.models.teacher_cache import (LabelledAudio, TeacherLabelling, cache_directory, cached_examples,
                                               joined)
    from edge_asr.runtime.tokenizer import WhisperTokenizer

    tokenizer = WhisperTokenizer.from_file(checkpoint.tokenizer_json, multilingual=checkpoint.dims.n_vocab >= 51865)
    suppress = tuple(checkpoint.suppress_tokens) if checkpoint.suppress_tokens is not None else (-1,)
    k = args.top_k if teacher is not None else 0
    labelling = TeacherLabelling(suppress_tokens=suppress) if teacher_labels else None
    examples = []
    for corpus_dir in args.corpus:  # each corpus joins its own utterances and keeps its own teacher cache
        corpus = read_manifest(corpus_dir)
        entries = [LabelledAudio(e.id, corpus_dir / e.audio, e.text) for e in corpus]
        if args.join > 1:
            entries += joined(entries, [e.duration_s for e in corpus], args.join, seed=0)  # one cache for every --seed
        directory = cache_directory(corpus_dir, checkpoint.source_sha256, k, teacher_labels)
        examples += cached_examples(entries, directory, tokenizer, teacher, k, checkpoint.dims.n_mels,
                                    log=lambda line: print(line, flush=True), labelling=labelling)
    sets = {}
    for corpus_dir in args.eval_corpus:  # a set per kind of clip: speech read by voices, real speech, non-speech
        for entry in read_manifest(corpus_dir):
            kind = "nonspeech" if not entry.text else "real" if entry.source in (*REAL_SETS, "folder") else "synthetic"
            sets.setdefault(f"{corpus_dir.name}:{kind}", []).append(Clip(entry.id, corpus_dir / entry.audio, entry.text))
    if args.eval_folder is not None:  # a pocketsphinx test folder (a transcription file), or audio with references.tsv
        sets[args.eval_folder.name] = sphinx_clips(args.eval_folder) or folder_clips(args.eval_folder, None)
    if not sets:
        return examples, None
    evaluator = StudentEvaluator(sets, tokenizer, suppress, checkpoint.dims.n_mels)
    if not any(evaluator.sets.values()):
        raise EdgeAsrError("The evaluation clips have no references to score against.")
    return examples, evaluator


def _train(args, model, examples, evaluator, window, encoder_weight: float):
    """The training run's history, and the evaluation after its last step (None when this run did not make one:
    no evaluator, or a finished run resumed)."""
    from edge_asr.models.distill_loss import TemperatureSchedule
    from edge_asr.models.distill_train import TrainSettings, train

    start, end, steps = args.temperature
    settings = TrainSettings(
        steps=args.steps, batch_size=args.batch_size, accumulation=args.accumulation, learning_rate=args.lr,
        alpha=args.alpha, encoder_weight=encoder_weight, temperature=TemperatureSchedule(start, end, steps),
        margin_s=None if window.needs_30s_padding else window.margin_s, seed=args.seed, device=args.device,
        evaluate_every=args.eval_every, warmup_steps=min(50, args.steps // 10), checkpoint_every=args.checkpoint_every,
    )

    last = {}  # the final step's evaluation, which the run's report reuses rather than evaluating again

    def evaluate(model, step):
        results = last[step] = evaluator.evaluate(model, window)
        return {f"{name}_{figure}": value for name, result in results.items() for figure, value in result.figures().items()}

    history = train(model, examples, settings, args.output, evaluate=None if evaluator is None else evaluate,
                    log=lambda line: print(line, flush=True))
    return history, last.get(args.steps)


def _card(args, examples, minutes: float, evaluations: dict) -> str:
    """The model card of a distilled student: its data, recipe, training time and evaluations."""
    from edge_asr.models.set_eval import results_table

    hours = sum(e.audio_frames for e in examples) / FRAMES_PER_SECOND / 3600
    lines = [f"# Student of {args.teacher}", "",
             f"Distilled by `edge-asr distill` from {', '.join(str(c) for c in args.corpus)}: {len(examples)} examples "
             f"({hours:.2f} h of audio, joined utterances included), labelled by the teacher itself.", "",
             f"Recipe: {args.steps} steps of {args.batch_size} examples, lr {args.lr:g}, alpha {args.alpha:g}, T "
             f"{args.temperature[0]:g}, encoder weight {args.encoder_weight:g}, margin {args.margin:g} s, seed "
             f"{args.seed}; silence gate {args.silence_logprob:g}; the decoder is the teacher's. "
             f"Training took {minutes:.0f} min in this run.", ""]
    if evaluations:
        lines += ["Evaluation (tune sets: the recipe was chosen on these):", "", *results_table(evaluations), ""]
    return "\n".join(lines)


def _prepared(examples) -> int:
    seconds = sum(e.audio_frames for e in examples) / FRAMES_PER_SECOND
    print(f"{len(examples)} examples cached, {seconds / 3600:.2f} h of audio")
    return 0


def _print_evaluation(title: str, results) -> None:
    parts = [f"{name}: " + (f"WER {r.wer:.2f} %" if r.wer is not None else "") +
             (f", {r.words_on_nonspeech} words on non-speech" if r.words_on_nonspeech or r.wer is None else "") +
             f", {r.fallbacks} fallbacks" for name, r in results.items()]
    print(f"{title}: " + "; ".join(parts), flush=True)


def _report(args, history, evaluations: dict, written: Path) -> None:
    from edge_asr.models.set_eval import as_dict

    report = {
        "command": {name: str(value) if isinstance(value, Path) else value for name, value in vars(args).items()}
        | {"corpus": [str(c) for c in args.corpus], "eval_corpus": [str(c) for c in args.eval_corpus]},
        "written": str(written),
        "history": [asdict(record) for record in history],
        "evaluations": {name: as_dict(results) for name, results in evaluations.items()},
    }
    (args.output / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
    for name, results in evaluations.items():
        _print_evaluation(name, results)
    print(f"wrote {written}")


def _threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected layer numbers like 0,3, not {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _temperature(text: str) -> tuple[float, float | None, int]:
    try:
        parts = text.split(":")
        if len(parts) == 1:
            return float(parts[0]), None, 0
        start, end, steps = parts
        return float(start), float(end), int(steps)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T or T:END:STEPS, like 2 or 4:1:500, not {text!r}") from None
