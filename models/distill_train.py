"""The training loop for distillation and LoRA fine-tuning.

A student (a same-size copy, a student from ``make_student``, or a model carrying LoRA layers)
learns from labels and, when there is one, a teacher's logits. The teacher reads the 30 s padded
window it was trained on; the student reads the audio plus a margin (see ``distill_data``). On CUDA
when there is one, the forward passes under autocast (bfloat16, or float16 with a gradient scaler
where bfloat16 is missing); else on the CPU in float32. Checkpoints hold everything a restart needs
to take the same path: the weights, the optimizer, the scaler, the RNG state and the history; the
data order is a pure function of the step.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from edge_asr.models.distill_data import BatchOrder, Example, collate
from edge_asr.models.distill_loss import DistillLoss, TemperatureSchedule, distillation_loss, encoder_matching_loss
from edge_asr.models.whisper_torch import WhisperModel
from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.errors import EdgeAsrError

CHECKPOINT = "last.pt"

# Called every ``evaluate_every`` steps with the student (in eval mode) and the step; returns
# figures to log and keep, e.g. {"wer": 12.5} on a held-out folder.
Evaluate = Callable[[WhisperModel, int], dict[str, float]]


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1000  # optimizer steps
    batch_size: int = 8
    accumulation: int = 1  # batches whose gradients add up to one step
    learning_rate: float = 1e-4
    warmup_steps: int = 50  # linear warm-up, then linear decay to 0 at the last step
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    alpha: float = 0.5  # weight of the labels' cross-entropy; 1 - alpha goes to the teacher
    encoder_weight: float = 0.0  # beta: weight of matching the teacher's encoder output (needs it cached)
    temperature: TemperatureSchedule = TemperatureSchedule()
    margin_s: float | None = 1.0  # the student's window: the longest audio of the batch plus this; None: 30 s
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when there is one, else CPU
    checkpoint_every: int = 100
    evaluate_every: int = 0  # 0: only after the last step, and only with an evaluate hook
    log_every: int = 10

    def validate(self) -> "TrainSettings":
        """Raise EdgeAsrError naming the first setting that cannot work; else self, as every validate() does."""
        counts = {"steps": self.steps, "batch_size": self.batch_size, "accumulation": self.accumulation,
                  "checkpoint_every": self.checkpoint_every, "log_every": self.log_every}
        for name, value in counts.items():
            if value < 1:
                raise EdgeAsrError(f"{name} must be at least 1, not {value}.")
        if self.learning_rate <= 0 or self.warmup_steps < 0 or self.evaluate_every < 0:
            raise EdgeAsrError("learning_rate must be positive; warmup_steps and evaluate_every at least 0.")
        if not 0 <= self.alpha <= 1:
            raise EdgeAsrError(f"alpha weighs the labels against the teacher: between 0 and 1, not {self.alpha}.")
        if self.encoder_weight < 0:
            raise EdgeAsrError(f"the encoder-matching weight must be at least 0, not {self.encoder_weight}.")
        if self.margin_s is not None and self.margin_s < 0:
            raise EdgeAsrError(f"margin_s is the silence after the audio: at least 0, not {self.margin_s}.")
        self.temperature.validate()
        return self

    def learning_rate_at(self, step: int) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return self.learning_rate * warmup * (1 - step / self.steps)


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step: its number (from 1), the loss averaged over its batches, and its settings."""

    step: int
    loss: float
    ce: float
    kl: float
    temperature: float
    learning_rate: float
    evaluation: dict[str, float] | None = None
    encoder: float = 0.0  # the encoder-matching part, before its weight


def train(
    student: WhisperModel,
    examples: Sequence[Example],
    settings: TrainSettings,
    run_dir: Path,
    teacher: WhisperModel | None = None,
    evaluate: Evaluate | None = None,
    log: Callable[[str], None] = print,
) -> list[StepRecord]:
    """Train ``student`` in place up to ``settings.steps``, resuming from ``run_dir`` when it holds a
    checkpoint; returns every step's record, those of earlier runs included."""
    return _Trainer(student, teacher, examples, settings, Path(run_dir), evaluate, log).run()


class _Trainer:
    def __init__(self, student, teacher, examples, settings: TrainSettings, run_dir: Path, evaluate, log):
        settings.validate()
        cached = all(e.teacher_top is not None for e in examples)
        if teacher is None and not cached and settings.alpha < 1:
            raise EdgeAsrError(f"alpha {settings.alpha} learns partly from a teacher: give one, cache its logits "
                               "with the examples, or set alpha to 1.")
        _check_examples(examples, student.dims)
        if settings.encoder_weight > 0 and any(e.teacher_encoded is None for e in examples):
            raise EdgeAsrError("matching the teacher's encoder needs its output cached with every example "
                               "(a corpus cached with teacher labels), or an encoder weight of 0.")
        self.settings, self.examples, self.evaluate, self.log = settings, examples, evaluate, log
        self.device = _device(settings.device)
        # CPU trains in float32: bfloat16 autocast pays only on cores with bfloat16 units, and on the
        # development VM (AMX advertised but not enabled) it killed the process with an illegal instruction.
        self.autocast_dtype = _cuda_autocast_dtype() if self.device.type == "cuda" else None
        self.student = student.to(self.device).train()
        # The teacher is only consulted while it has a share of the loss and its logits are not cached.
        live = settings.alpha < 1 and not cached
        self.teacher = teacher.to(self.device).eval().requires_grad_(False) if live else None
        self.trainable = [p for p in student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.order = BatchOrder([e.audio_frames for e in examples], settings.batch_size, settings.seed)
        self.checkpoint = run_dir / CHECKPOINT
        run_dir.mkdir(parents=True, exist_ok=True)

    def run(self) -> list[StepRecord]:
        history = self._resume() if self.checkpoint.exists() else self._start()
        started, first = time.monotonic(), len(history)
        for step in range(first, self.settings.steps):
            record = self._step(step)
            last = record.step == self.settings.steps
            if record.step % self.settings.log_every == 0 or last:
                seconds = (time.monotonic() - started) / (record.step - first)
                self._log_progress(record, seconds)
            if self.evaluate is not None and (last or _every(self.settings.evaluate_every, record.step)):
                try:
                    record = replace(record, evaluation=self._evaluation(record.step))
                except KeyboardInterrupt:  # the step is done: keep it, unevaluated, for the rerun to resume after
                    self._save([*history, record])
                    raise
            history.append(record)
            if record.step % self.settings.checkpoint_every == 0 or last:
                self._save(history)
        return history

    def _start(self) -> list[StepRecord]:
        torch.manual_seed(self.settings.seed)
        return []

    def _step(self, step: int) -> StepRecord:
        settings = self.settings
        temperature, learning_rate = settings.temperature.at(step), settings.learning_rate_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        losses = [self._backward(step * settings.accumulation + k, temperature) for k in range(settings.accumulation)]
        if settings.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, settings.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

        def mean(part: str) -> float:
            return sum(float(torch.as_tensor(getattr(loss, part)).detach()) for loss in losses) / len(losses)

        return StepRecord(step + 1, mean("total"), mean("ce"), mean("kl"), temperature, learning_rate,
                          encoder=mean("encoder"))

    def _backward(self, batch_index: int, temperature: float) -> DistillLoss:
        """Forward and backward one batch; its gradients add to those of the step's other batches."""
        members = self.order[batch_index]
        settings = self.settings
        batch = collate([self.examples[i] for i in members], settings.margin_s, self.teacher is not None)
        batch = batch.to(self.device)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            teacher_logits = batch.teacher_top if settings.alpha < 1 else None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher.logits(batch.teacher_mel, batch.tokens)
            encoded = self.student.encoder(batch.student_mel)
            student_logits = self.student.decoder.full(batch.tokens, cross=self.student.audio_context(encoded))
        loss = distillation_loss(student_logits, teacher_logits, batch.labels, settings.alpha, temperature)
        if settings.encoder_weight > 0:
            matching = encoder_matching_loss(encoded, batch.teacher_encoded, batch.encoded_frames)
            loss = DistillLoss(loss.total + settings.encoder_weight * matching, loss.ce, loss.kl, matching.detach())
        self.scaler.scale(loss.total / settings.accumulation).backward()
        return loss

    def _evaluation(self, step: int) -> dict[str, float]:
        """The hook's figures; its use of the RNG is undone, so evaluating never changes the training path."""
        self.student.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            figures = {name: float(value) for name, value in self.evaluate(self.student, step).items()}
        self.student.train()
        self.log(f"step {step} evaluation: " + ", ".join(f"{name} {value:.4g}" for name, value in figures.items()))
        return figures

    def _log_progress(self, record: StepRecord, seconds_per_step: float) -> None:
        remaining = (self.settings.steps - record.step) * seconds_per_step
        self.log(f"step {record.step}/{self.settings.steps}  loss {record.loss:.4f} (ce {record.ce:.4f}, "
                 f"kl {record.kl:.4f}, encoder {record.encoder:.4f})  T {record.temperature:.2f}  "
                 f"lr {record.learning_rate:.2e}  "
                 f"{seconds_per_step:.2f} s/step, {remaining / 60:.0f} min left")

    def _save(self, history: list[StepRecord]) -> None:
        state = {
            "model": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "history": [asdict(record) for record in history],
        }
        # Written beside, then renamed: a run killed while saving keeps its previous checkpoint.
        partial = self.checkpoint.with_suffix(".partial")
        torch.save(state, partial)
        os.replace(partial, self.checkpoint)

    def _resume(self) -> list[StepRecord]:
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        try:
            self.student.load_state_dict(state["model"])
        except RuntimeError:
            raise EdgeAsrError(f"{self.checkpoint} holds the training state of another model: "
                               "give a new run directory.") from None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError:  # another set of trainable parameters (a --freeze different from the run's)
            raise EdgeAsrError(f"{self.checkpoint} trained other parameters than this run would (another "
                               "--freeze or --stacks): give a new run directory.") from None
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history = [StepRecord(**record) for record in state["history"]]
        self.log(f"resuming {self.checkpoint} after step {len(history)}")
        return history


def _check_examples(examples: Sequence[Example], dims: ModelDims) -> None:
    if not examples:
        raise EdgeAsrError("There are no training examples.")
    longest = max(len(e.tokens) for e in examples)
    if longest - 1 > dims.n_text_ctx:
        raise EdgeAsrError(f"An example has {longest} tokens; the model reads at most {dims.n_text_ctx + 1}.")
    if {e.mel.shape[0] for e in examples} != {dims.n_mels}:
        raise EdgeAsrError(f"The examples' features must have the model's {dims.n_mels} Mel bins.")


def _every(interval: int, step: int) -> bool:
    return interval > 0 and step % interval == 0


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EdgeAsrError(f"device {name!r} asks for CUDA, which this machine's PyTorch cannot use.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise EdgeAsrError(f"{name!r} is not a device: give auto, cpu, cuda or cuda:N.") from None


def _cuda_autocast_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
