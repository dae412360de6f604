"""Examples and batches for distillation: one Mel array serves the teacher and the student.

The teacher reads what the runtime gives stock Whisper: the audio's features, then zeros to 30 s (as
openai's ``pad_or_trim``). The student reads the audio plus a margin of silence, as the runtime pads a
length-adaptive model's window: the features of silent audio. Both come from the stored features of
the audio continued with silence frames: zeros add nothing to the peak the features are normalised
by, and a frame whose STFT window sees only zeros always has the same value. So an example stores its
audio's frames and one silence frame, and any longer student window repeats that last frame, exactly
equal to computing the features of the audio padded with silence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from edge_asr.models.distill_loss import IGNORE_INDEX, TeacherTopK
from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.mel import HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, LogMelFrontend
from edge_asr.runtime.windows import WindowPolicy, encoder_frames

# Zeros after the audio so the last frame's window (N_FFT wide, centred) lies wholly in them.
SILENCE_TAIL = N_FFT + HOP_LENGTH
BATCHES_PER_POOL = 50  # length-sorting pool: long enough to group similar lengths, short enough to stay random


@dataclass(frozen=True)
class Example:
    """One utterance: its features, how many frames hold audio, and its tokens.

    ``mel`` float32 [n_mels, frames] is Whisper's features of the audio followed by silence, ending
    in at least one frame of silence alone. ``tokens`` is the whole sequence (prompt, text,
    end-of-text); the first ``n_prompt`` (start of transcript, language, task, no-timestamps) are
    given to the model, never predicted. ``teacher_top`` is the teacher's top-k (indices int32,
    logits float16, each [len(tokens) - n_prompt, k]) at the predicted positions, when cached.
    """

    mel: np.ndarray
    audio_frames: int
    tokens: tuple[int, ...]
    n_prompt: int
    teacher_top: tuple[np.ndarray, np.ndarray] | None = None
    # The teacher's encoder output on the audio's frames (float16 [ceil(audio_frames / 2), d]), when cached.
    teacher_encoded: np.ndarray | None = None

    def window(self, frames: int, pad: float | None = None) -> np.ndarray:
        """``frames`` of features: the audio, then silence (``pad`` None: the features of silent audio, the
        stored last frame repeated; else the audio's frames alone, then this value)."""
        if pad is not None:
            window = np.full((self.mel.shape[0], frames), pad, dtype=np.float32)
            content = min(frames, self.audio_frames)
            window[:, :content] = self.mel[:, :content]
            return window
        silence = np.repeat(self.mel[:, -1:], max(0, frames - self.mel.shape[1]), axis=1)
        return np.concatenate([self.mel[:, :frames], silence], axis=1)


def example_from_audio(audio: np.ndarray, tokens: Sequence[int], n_prompt: int, frontend: LogMelFrontend) -> Example:
    """An Example from 16 kHz float32 audio of at most 30 s."""
    if len(audio) > N_SAMPLES:
        raise EdgeAsrError(f"A distillation example holds at most 30 s of audio, not {len(audio) / SAMPLE_RATE:.1f} s.")
    if not 0 < n_prompt < len(tokens):
        raise EdgeAsrError(f"An example needs a prompt and at least one token after it, not {n_prompt} of {len(tokens)}.")
    mel = frontend(audio, padding=SILENCE_TAIL)
    return Example(mel=mel, audio_frames=len(audio) // HOP_LENGTH, tokens=tuple(tokens), n_prompt=n_prompt)


@dataclass(frozen=True)
class DistillBatch:
    """Examples stacked for one forward pass.

    ``tokens`` [B, N] is each sequence less its last token, padded; ``labels`` [B, N] is the token
    each position must predict, IGNORE_INDEX on prompt positions and padding.
    """

    student_mel: Tensor  # [B, n_mels, frames]: the longest audio plus the margin, or 30 s for a stock-length model
    tokens: Tensor
    labels: Tensor
    teacher_top: TeacherTopK | None = None  # the examples' cached teacher top-k, when every one has it
    teacher_mel: Tensor | None = None  # [B, n_mels, N_FRAMES]: a live teacher's input, when asked for
    # The cached teacher encoder output [B, frames, d] (zeros past a row's audio) and each row's frames.
    teacher_encoded: Tensor | None = None
    encoded_frames: Tensor | None = None

    def to(self, device: torch.device) -> "DistillBatch":
        def moved(value):
            return None if value is None else value.to(device)

        return DistillBatch(self.student_mel.to(device), self.tokens.to(device), self.labels.to(device),
                            moved(self.teacher_top), moved(self.teacher_mel), moved(self.teacher_encoded),
                            moved(self.encoded_frames))


def collate(examples: Sequence[Example], margin_s: float | None, teacher_window: bool = False) -> DistillBatch:
    """One batch; the student reads the longest audio plus ``margin_s``, sized as the runtime sizes a
    window of a model that needs no padding; None gives it the whole 30 s window (a stock-length model,
    padded with zeros as the runtime pads one). ``teacher_window`` adds the teacher's 30 s window."""
    if margin_s is None:
        student_frames = N_FRAMES
    else:
        policy = WindowPolicy(needs_30s_padding=False, margin_s=margin_s)
        student_frames = encoder_frames(max(e.audio_frames for e in examples), policy)
    width = max(len(e.tokens) for e in examples) - 1
    # Padding comes after each row's tokens, where the causal mask hides it: its value never matters.
    tokens = torch.zeros((len(examples), width), dtype=torch.int64)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.int64)
    for row, example in enumerate(examples):
        sequence = torch.tensor(example.tokens, dtype=torch.int64)
        tokens[row, : len(sequence) - 1] = sequence[:-1]
        # Position i predicts token i + 1; the first prediction that counts is the first text token.
        labels[row, example.n_prompt - 1 : len(sequence) - 1] = sequence[example.n_prompt :]
    pad = 0.0 if margin_s is None else None
    student_mel = torch.from_numpy(np.stack([e.window(student_frames, pad) for e in examples]))
    teacher_mel = torch.from_numpy(np.stack([e.window(N_FRAMES, 0.0) for e in examples])) if teacher_window else None
    encoded, frames = _stacked_teacher_encoded(examples)
    return DistillBatch(student_mel, tokens, labels, _stacked_teacher_top(examples), teacher_mel, encoded, frames)


def _stacked_teacher_encoded(examples: Sequence[Example]) -> tuple[Tensor | None, Tensor | None]:
    """The rows' cached encoder outputs padded with zeros to the longest, and their lengths; None unless all have one."""
    if any(e.teacher_encoded is None for e in examples):
        return None, None
    lengths = [len(e.teacher_encoded) for e in examples]
    stacked = np.zeros((len(examples), max(lengths), examples[0].teacher_encoded.shape[1]), dtype=np.float32)
    for row, example in enumerate(examples):
        stacked[row, : lengths[row]] = example.teacher_encoded
    return torch.from_numpy(stacked), torch.tensor(lengths)


def _stacked_teacher_top(examples: Sequence[Example]) -> TeacherTopK | None:
    """The rows' cached top-k in label order (row by row, position by position), or None unless all have one."""
    if any(e.teacher_top is None for e in examples):
        return None
    indices = np.concatenate([e.teacher_top[0] for e in examples]).astype(np.int64)
    logits = np.concatenate([e.teacher_top[1] for e in examples]).astype(np.float32)
    return TeacherTopK(torch.from_numpy(indices), torch.from_numpy(logits))


class BatchOrder:
    """Which examples make batch number ``index``, a pure function of (lengths, batch size, seed).

    Each epoch shuffles, sorts pools of BATCHES_PER_POOL batches by length (so a batch's window is
    not stretched by one long outlier) and shuffles the batches. Being a function of the index, it
    needs no state to resume: batch ``step * accumulation + k`` is the same after a restart.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.n_batches = -(-len(self.lengths) // batch_size)
        self._epoch: tuple[int, list[list[int]]] | None = None

    def __getitem__(self, index: int) -> list[int]:
        epoch, position = divmod(index, self.n_batches)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self._epoch_batches(epoch))
        return self._epoch[1][position]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        pool = self.batch_size * BATCHES_PER_POOL
        batches = []
        for start in range(0, len(order), pool):
            members = order[start : start + pool]
            members = members[np.argsort(self.lengths[members], kind="stable")]
            batches += [members[i : i + self.batch_size].tolist() for i in range(0, len(members), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]
