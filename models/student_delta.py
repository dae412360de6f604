"""A student shipped as what it changed: the tensors it trained, in fp16, against the zoo weights it was made from.

A length-adaptive student of tiny.en trains its encoder alone (the decoder stays the teacher's), so the
whole student is the zoo's tiny.en plus 14 MB of encoder weights. A delta directory holds
``weights.safetensors`` (the changed tensors, fp16), ``student.json`` (the base model's zoo name and
sha256, the window policy and the tensors' sha256) and ``MODEL_CARD.md``. ``read_delta`` refuses a base
with another sha256, in one sentence.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_asr.models.checkpoint import Checkpoint, read_json
from edge_asr.runtime.errors import ModelSourceError
from edge_asr.runtime.file_stamps import sha256_of
from edge_asr.runtime.windows import WindowPolicy

WEIGHTS = "weights.safetensors"
INFO = "student.json"
CARD = "MODEL_CARD.md"
FIXED = ("encoder.positional_embedding",)  # sinusoids, never trained: the base has them


def save_delta(student_state: dict, base: Checkpoint, base_name: str, window: WindowPolicy, out: Path,
               card: str = "") -> Path:
    """The tensors of ``student_state`` (name -> torch tensor) that differ from ``base``, in fp16, into ``out``."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    changed = {name: tensor.detach().cpu().float().numpy().astype(np.float16)
               for name, tensor in student_state.items()
               if name not in FIXED and (name not in base.tensors
                                         or not np.array_equal(tensor.detach().cpu().float().numpy(), base.tensors[name]))}
    if not changed:
        raise ModelSourceError("The student is its base: there is no delta to save.")
    save_file(changed, str(out / WEIGHTS))
    info = {"base_model": base_name, "base_sha256": base.source_sha256, "window": window.to_dict(),
            "tensors": sorted(changed), "weights_sha256": sha256_of([out / WEIGHTS])}
    (out / INFO).write_text(json.dumps(info, indent=2) + "\n")
    if card:
        (out / CARD).write_text(card)
    return out


def read_delta(directory: Path, base: Checkpoint, name: str) -> Checkpoint:
    """``base`` with the delta in ``directory`` applied: a checkpoint named ``name`` with the student's window policy."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    info = read_json(directory / INFO)
    if info.get("base_sha256") != base.source_sha256:
        raise ModelSourceError(f"The student {directory} was made from {info.get('base_model')} (sha256 "
                               f"{str(info.get('base_sha256'))[:12]}), not from these {base.name} weights "
                               f"(sha256 {base.source_sha256[:12]}).")
    weights = directory / WEIGHTS
    if not weights.is_file() or sha256_of([weights]) != info.get("weights_sha256"):
        raise ModelSourceError(f"The student {directory} is damaged: {WEIGHTS} is missing or does not match its sha256.")
    tensors = dict(base.tensors)
    for tensor_name, value in load_file(str(weights)).items():
        if tensor_name not in tensors or tensors[tensor_name].shape != value.shape:
            raise ModelSourceError(f"The student {directory} changes {tensor_name}, which {base.name} does not have "
                                   "in that shape.")
        tensors[tensor_name] = value.astype(np.float32)
    both = hashlib.sha256(f"{base.source_sha256} {info['weights_sha256']}".encode()).hexdigest()
    return replace(base, name=name, tensors=tensors, source=f"{base.source} + student {directory}",
                   source_sha256=both, window_policy=WindowPolicy.from_dict(info["window"]))

