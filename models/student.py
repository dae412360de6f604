"""Students made from a teacher by keeping some of its layers, and saved as checkpoints compile reads.

distil-whisper's recipe: keep the whole encoder (it carries most of the acoustics and runs once per
utterance) and build a shallow decoder from the teacher's first and last layers (the decoder runs
once per token, so its depth is what decoding time pays for). Kept layers start as exact copies.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edge_asr.models.whisper_torch import WhisperModel
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.windows import WindowPolicy


def evenly_spaced_layers(n_teacher: int, n_keep: int) -> list[int]:
    """``n_keep`` teacher layer indices spread from the first to the last (one: the last alone)."""
    if not 1 <= n_keep <= n_teacher:
        raise EdgeAsrError(f"A student keeps 1 to {n_teacher} of the teacher's layers, not {n_keep}.")
    if n_keep == 1:
        return [n_teacher - 1]
    return [int(i) for i in np.round(np.linspace(0, n_teacher - 1, n_keep))]


def make_student(
    teacher: WhisperModel,
    decoder_layers: Sequence[int] | None = None,
    encoder_layers: Sequence[int] | None = None,
) -> WhisperModel:
    """A new model holding copies of the teacher's weights with only the listed layers (teacher
    indices, increasing); None keeps every layer of that stack, so no lists at all is a same-size copy."""
    dims = teacher.dims
    encoder_keep = _checked_layers(encoder_layers, dims.n_audio_layer, "encoder")
    decoder_keep = _checked_layers(decoder_layers, dims.n_text_layer, "decoder")
    student = WhisperModel(replace(dims, n_audio_layer=len(encoder_keep), n_text_layer=len(decoder_keep)))
    teacher_state = teacher.state_dict()
    keep = {"encoder": encoder_keep, "decoder": decoder_keep}

    def teacher_name(name: str) -> str:
        stack, index, rest = re.fullmatch(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)", name).groups()
        return f"{stack}.blocks.{keep[stack][int(index)]}.{rest}"

    student.load_state_dict({
        name: teacher_state[teacher_name(name) if ".blocks." in name else name].clone()
        for name in student.state_dict()
    })
    return student.train(teacher.training)


def freeze(student: WhisperModel, stack: str | None, decoder_layers: Sequence[int] | None = None) -> str:
    """Stops training one stack (kept exactly as the teacher's) and returns which; None picks the
    default: the decoder when the student keeps the teacher's whole decoder, else none.

    Frozen decoder: the encoder alone learns to end where the audio ends, under the teacher's own
    decoder (its language model untouched by synthetic speech). On tiny.en this reached the teacher's
    30 s WER at audio + 1 s in 400 steps, where training both stacks stayed 3 words behind at 800.
    """
    stack = stack or ("decoder" if decoder_layers is None else "none")
    if stack not in ("none", "encoder", "decoder"):
        raise EdgeAsrError(f"The stack to freeze is none, encoder or decoder, not {stack!r}.")
    if stack != "none":
        getattr(student, stack).requires_grad_(False)
    return stack


def save_openai_checkpoint(model: WhisperModel, path: Path, window: WindowPolicy | None = None) -> Path:
    """Write ``model`` as an OpenAI Whisper ``.pt``, which ``resolve_model(path)`` and compile read.

    ``window``: the encoder input the model was trained on, kept in the file's "edge_asr" entry (e.g.
    ``WindowPolicy(needs_30s_padding=False)`` for a student trained on its audio plus 1 s); None
    writes a plain OpenAI checkpoint, which means stock Whisper's 30 s windows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    saved = {"dims": model.dims.to_dict(), "model_state_dict": state}
    if window is not None:
        saved["edge_asr"] = window.validate().to_dict()
    torch.save(saved, path)
    return path


def _checked_layers(layers: Sequence[int] | None, n_teacher: int, stack: str) -> list[int]:
    if layers is None:
        return list(range(n_teacher))
    layers = list(layers)
    if not layers or layers != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= n_teacher:
        raise EdgeAsrError(f"The {stack} layers to keep must be distinct increasing indices of the teacher's "
                           f"{n_teacher} layers (0 to {n_teacher - 1}), not {layers}.")
    return layers
