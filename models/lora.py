"""LoRA (with peft) on the reference model's attention projections, merged into plain weights for export.

A fine-tune ships as an adapter directory the repository can carry: ``adapter.safetensors`` holds
the LoRA tensors alone (about 1 MB for tiny.en at rank 8, against 150 MB of weights) and
``adapter.json`` names the base checkpoint by name and sha256. Compile time calls
``apply_adapter`` on the zoo's base weights and exports the merged model like any other.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from torch import Tensor

from edge_asr.models.checkpoint import Checkpoint, read_json
from edge_asr.models.whisper_torch import WhisperModel, from_checkpoint
from edge_asr.runtime.file_stamps import sha256_of
from edge_asr.runtime.errors import EdgeAsrError, ModelSourceError
from edge_asr.runtime.windows import WindowPolicy

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_INFO = "adapter.json"
ADAPTER_FORMAT = "edge-asr-lora-1"
ADAPTER_NAME = "default"  # peft's name for the one adapter a model carries here
STACKS = ("encoder", "decoder")
ATTENTION = ("attn", "cross_attn")  # self-attention; cross-attention (decoder only)
PROJECTIONS = ("query", "key", "value", "out")  # MultiHeadAttention's nn.Linear names


@dataclass(frozen=True)
class LoraSettings:
    """Where LoRA goes and how large it is; the update added to a weight is (alpha / rank) * B @ A."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    stacks: tuple[str, ...] = STACKS
    attention: tuple[str, ...] = ATTENTION
    projections: tuple[str, ...] = PROJECTIONS

    def validate(self) -> None:
        """Raise EdgeAsrError naming the first setting that cannot work."""
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise EdgeAsrError(f"LoRA needs rank >= 1, alpha > 0 and dropout in [0, 1), not rank {self.rank}, "
                               f"alpha {self.alpha}, dropout {self.dropout}.")
        for name, chosen, known in (("stacks", self.stacks, STACKS), ("attention", self.attention, ATTENTION),
                                    ("projections", self.projections, PROJECTIONS)):
            if not chosen or not set(chosen) <= set(known):
                raise EdgeAsrError(f"LoRA {name} must be some of {', '.join(known)}, not {list(chosen)}.")
        if set(self.stacks) == {"encoder"} and set(self.attention) == {"cross_attn"}:
            raise EdgeAsrError("The encoder has no cross-attention: LoRA there needs attention 'attn'.")

    def target_modules(self) -> str:
        """A regular expression peft matches against whole module names."""
        return (rf"({'|'.join(self.stacks)})\.blocks\.\d+\."
                rf"({'|'.join(self.attention)})\.({'|'.join(self.projections)})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LoraSettings":
        return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in data.items()})


class LoraAdapter:
    """LoRA layers put into ``model``'s attention projections, in place. The model's own weights are
    frozen, so training ``adapter.model`` trains the LoRA tensors alone."""

    def __init__(self, model: WhisperModel, settings: LoraSettings = LoraSettings()):
        settings.validate()
        peft = _peft()
        config = peft.LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                                 target_modules=settings.target_modules())
        self.settings = settings
        self.model = model
        self._tuner = peft.LoraModel(model, config, ADAPTER_NAME)

    def tensors(self) -> dict[str, Tensor]:
        """The LoRA tensors alone, on the CPU, under peft's names."""
        state = _peft().get_peft_model_state_dict(self._tuner, adapter_name=ADAPTER_NAME)
        return {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}

    def load_tensors(self, tensors: dict[str, Tensor], source: Path) -> None:
        """Set the LoRA tensors from ``tensors`` (read from ``source``, named in errors)."""
        expected = {name: tensor.shape for name, tensor in self.tensors().items()}
        if {name: tensor.shape for name, tensor in tensors.items()} != expected:
            raise ModelSourceError(f"{source} does not fit this model: its LoRA tensors differ in names or shapes.")
        _peft().set_peft_model_state_dict(self._tuner, tensors, adapter_name=ADAPTER_NAME)

    def save(self, directory: Path, base: Checkpoint, window: WindowPolicy | None = None) -> Path:
        """Write the adapter directory for a model fine-tuned from ``base``; ``window``: the encoder
        input it was trained on, when not the base's (a length-adaptive adapter)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.tensors(), directory / ADAPTER_WEIGHTS)
        info = {
            "format": ADAPTER_FORMAT,
            "base_model": base.name,
            "base_sha256": base.source_sha256,
            "lora": self.settings.to_dict(),
            "weights_sha256": sha256_of([directory / ADAPTER_WEIGHTS]),
        }
        if window is not None:
            info["window"] = window.validate().to_dict()
        (directory / ADAPTER_INFO).write_text(json.dumps(info, indent=2) + "\n")
        return directory

    def merge(self) -> WhisperModel:
        """The model with every LoRA update added into its projection's weight and plain nn.Linear
        layers again, as export expects. Spends the adapter: use the returned model from then on."""
        return self._tuner.merge_and_unload()


def apply_adapter(base: Checkpoint, directory: Path) -> Checkpoint:
    """``base`` with the adapter in ``directory`` merged into its weights.

    The result names both: its source sha256 is the digest of the base's and the adapter's, so a
    bundle made from it is told apart from one made from the base alone.
    """
    directory = Path(directory)
    info = read_adapter_info(directory)
    if info["base_sha256"] != base.source_sha256:
        raise ModelSourceError(f"The adapter {directory} was trained on {info['base_model']} "
                               f"(sha256 {info['base_sha256'][:12]}), not on {base.name} "
                               f"(sha256 {base.source_sha256[:12]}).")
    from safetensors.torch import load_file

    adapter = LoraAdapter(from_checkpoint(base), LoraSettings.from_dict(info["lora"]))
    adapter.load_tensors(load_file(directory / ADAPTER_WEIGHTS), directory / ADAPTER_WEIGHTS)
    merged = adapter.merge()
    both = hashlib.sha256(f"{base.source_sha256} {info['weights_sha256']}".encode()).hexdigest()
    return replace(
        base,
        name=f"{base.name}+{directory.name}",
        tensors={name: tensor.detach().numpy() for name, tensor in merged.state_dict().items()},
        source=f"{base.source} + LoRA adapter {directory}",
        source_sha256=both,
        window_policy=WindowPolicy.from_dict(info["window"]) if "window" in info else base.window_policy,
    )


def read_adapter_info(directory: Path) -> dict:
    """The adapter's adapter.json, checked against its weights file."""
    info = read_json(Path(directory) / ADAPTER_INFO)
    keys = {"base_model", "base_sha256", "lora", "weights_sha256"}
    if (info.get("format") != ADAPTER_FORMAT or not keys <= set(info)
            or set(info["lora"]) != {f.name for f in fields(LoraSettings)}
            or not isinstance(info.get("window", {}), dict)):
        raise ModelSourceError(f"{directory} is not an edge-asr LoRA adapter ({ADAPTER_FORMAT}).")
    if "window" in info:  # checked here, before compile does any work, not only when the adapter is merged
        WindowPolicy.from_dict(info["window"])
    weights = Path(directory) / ADAPTER_WEIGHTS
    if not weights.is_file() or sha256_of([weights]) != info["weights_sha256"]:
        raise ModelSourceError(f"{weights} is missing or does not match the sha256 in {ADAPTER_INFO}.")
    return info


def _peft():
    try:
        import peft
    except ImportError:
        raise EdgeAsrError("LoRA needs peft: pip install 'edge-asr[train]'.") from None
    return peft
