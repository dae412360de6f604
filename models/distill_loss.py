"""The knowledge-distillation loss: hard labels mixed with the teacher's softened distribution, plus the
teacher's encoder output to match.

loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))
       [+ beta * encoder matching, added by the training loop],
both token parts averaged over the scored token positions. The T^2 keeps the soft part's gradients the same
size whatever T is (Hinton et al., 2015), so alpha means the same thing at every temperature.

Encoder matching (``encoder_matching_loss``) is the squared distance between the student's encoder output
and the teacher's on the frames of the audio, relative to the teacher's own mean square: the student
reads the audio plus a margin, the teacher the audio padded to 30 s, and what the student must learn is
to give its decoder, from less input, what the teacher's encoder gave it.

The teacher is either its whole logits or, cached once per corpus, its k largest logits of each
scored position (top-k distillation): the teacher's distribution is then renormalised over those k
tokens, which at k = 32 hold nearly all of its mass for a confident speech model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from edge_asr.runtime.errors import EdgeAsrError

IGNORE_INDEX = -100  # a label that scores nothing: prompt tokens and padding


@dataclass(frozen=True)
class DistillLoss:
    """The loss to minimise and its parts; ``kl`` is before the T^2 scaling (0 without a teacher), ``encoder``
    the encoder matching before its weight (0 when not used)."""

    total: Tensor
    ce: Tensor
    kl: Tensor
    encoder: Tensor | float = 0.0


@dataclass(frozen=True)
class TeacherTopK:
    """A teacher's k largest logits at each scored position, in the order ``labels != ignore`` lists
    them (row by row, then position): ``indices`` int64 [M, k] and ``logits`` float [M, k]."""

    indices: Tensor
    logits: Tensor

    def to(self, device: torch.device) -> "TeacherTopK":
        return TeacherTopK(self.indices.to(device), self.logits.to(device))


@dataclass(frozen=True)
class TemperatureSchedule:
    """T moving linearly from ``start`` to ``end`` over the first ``steps`` steps, then held.

    Starting hot and cooling lets the student first learn the teacher's broad preferences, then its
    sharp ones. ``end`` None (or ``steps`` 0) keeps T at ``start``.
    """

    start: float = 2.0
    end: float | None = None
    steps: int = 0

    def at(self, step: int) -> float:
        if self.end is None or self.steps <= 0:
            return self.start
        return self.start + (self.end - self.start) * min(step / self.steps, 1.0)

    def validate(self) -> None:
        if self.start <= 0 or (self.end is not None and self.end <= 0):
            raise EdgeAsrError(f"A distillation temperature must be positive, not {self.start} -> {self.end}.")


def encoder_matching_loss(student: Tensor, teacher: Tensor, frames: Tensor) -> Tensor:
    """Mean squared difference over each row's first ``frames[b]`` frames of ``student`` [B, S, d] and
    ``teacher`` [B, T, d] (rows padded past their frames), divided by the teacher's mean square there."""
    width = int(frames.max())
    if student.shape[1] < width:
        raise EdgeAsrError(f"The student's window holds {student.shape[1]} encoder frames, the audio {width}.")
    mask = (torch.arange(width, device=frames.device)[None, :] < frames[:, None]).unsqueeze(-1).to(student.dtype)
    target = teacher[:, :width].to(student.dtype)
    error = ((student[:, :width].float() - target.float()).square() * mask).sum()
    return error / ((target.float().square() * mask).sum()).clamp_min(1e-12)


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | TeacherTopK | None,
    labels: Tensor,
    alpha: float,
    temperature: float,
    ignore_index: int = IGNORE_INDEX,
) -> DistillLoss:
    """The mixed loss of logits [B, N, V] against labels [B, N]; positions labelled ``ignore_index``
    count in neither part. ``teacher_logits`` is [B, N, V] or the scored positions' top k, and may be
    None only when ``alpha`` is 1 (labels alone)."""
    scored = labels != ignore_index
    n_scored = int(scored.sum())
    if n_scored == 0:
        raise EdgeAsrError("The batch has no labelled token positions to learn from.")
    # In float32 whatever autocast computed the logits in: a softmax over 50k tokens needs the precision.
    student = student_logits.float()[scored]
    ce = F.cross_entropy(student, labels[scored], reduction="sum") / n_scored
    if teacher_logits is None:
        if alpha != 1:
            raise EdgeAsrError(f"alpha {alpha} gives the teacher a share of the loss, but there is no teacher.")
        return DistillLoss(total=ce, ce=ce, kl=torch.zeros_like(ce))
    student_log_p = F.log_softmax(student / temperature, dim=-1)
    if isinstance(teacher_logits, TeacherTopK):
        if teacher_logits.indices.shape[0] != n_scored:
            raise EdgeAsrError(f"The teacher's top-k covers {teacher_logits.indices.shape[0]} positions, "
                               f"the labels score {n_scored}.")
        student_log_p = student_log_p.gather(1, teacher_logits.indices)
        teacher_log_p = F.log_softmax(teacher_logits.logits.float() / temperature, dim=-1)
    else:
        teacher_log_p = F.log_softmax(teacher_logits.float()[scored] / temperature, dim=-1)
    kl = F.kl_div(student_log_p, teacher_log_p, log_target=True, reduction="sum") / n_scored
    total = alpha * ce + (1 - alpha) * temperature**2 * kl
    return DistillLoss(total=total, ce=ce, kl=kl)
