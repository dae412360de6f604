"""Reader for OpenAI Whisper ``.pt`` checkpoints: ``{"dims": {...}, "model_state_dict": {...}}``.

Their state-dict names are already the canonical ones. They carry no tokenizer: the zoo model with the
same vocabulary lends its tokenizer.json. A student saved by edge-asr adds ``"edge_asr"``: its window
policy (runtime/windows.py); a checkpoint without it is stock Whisper's.
"""
from __future__ import annotations

from pathlib import Path

from edge_asr.models.checkpoint import Checkpoint, sinusoids
from edge_asr.runtime.file_stamps import sha256_of
from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.errors import EdgeAsrError, ModelSourceError
from edge_asr.runtime.windows import WindowPolicy


def read_openai(path: Path, name: str | None = None, tokenizer_json: Path | None = None) -> Checkpoint:
    """An OpenAI ``.pt`` checkpoint as a Checkpoint (needs torch, from the compile extra)."""
    path = Path(path)
    try:
        import torch
    except ImportError:
        raise ModelSourceError(f"reading {path} needs torch: pip install 'edge-asr[compile]'.") from None
    if not path.is_file():
        raise ModelSourceError(f"{path} does not exist.")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        dims = ModelDims.from_dict(raw["dims"])
        tensors = {k: v.float().numpy() for k, v in raw["model_state_dict"].items() if v.is_floating_point()}
    # torch.load fails in many ways on a damaged file (zip, pickle, storage errors); all mean the same.
    except Exception:
        raise ModelSourceError(f"{path} is not a readable OpenAI Whisper checkpoint "
                               "(truncated, corrupt, or another format).") from None
    try:
        window_policy = WindowPolicy.from_dict(raw.get("edge_asr", {}))
    except (EdgeAsrError, AttributeError) as err:
        raise ModelSourceError(f"{path} has a broken \"edge_asr\" entry: {err}") from None
    tensors.setdefault("encoder.positional_embedding", sinusoids(dims.n_audio_ctx, dims.n_audio_state))
    if tokenizer_json is None:
        from edge_asr.models.zoo import tokenizer_for_vocab  # the zoo imports this module

        tokenizer_json = tokenizer_for_vocab(dims.n_vocab)
    return Checkpoint(
        name=name or path.stem,
        dims=dims,
        tensors=tensors,
        tokenizer_json=Path(tokenizer_json),
        source=str(path),
        source_sha256=sha256_of([path]),
        window_policy=window_policy,
    )
