"""Model dimensions and special tokens: the facts about a Whisper model that every stage shares."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ModelDims:
    """Sizes of a Whisper model, with openai-whisper's field names."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @property
    def multilingual(self) -> bool:
        return self.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        """Language tokens between <|startoftranscript|> and <|translate|> (99, or 100 for v3)."""
        return self.n_vocab - 51765 - int(self.multilingual)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelDims":
        return cls(**{f.name: int(data[f.name]) for f in fields(cls)})
