"""A PyTorch model judged the way users meet it: the runtime's own transcription over the PyTorch engine
(models/set_eval.py), on sets of clips, with no export."""
from __future__ import annotations

from typing import Sequence

import torch

from edge_asr.models.clips import Clip
from edge_asr.models.set_eval import ClipSets, SetResult
from edge_asr.runtime.decoding.options import TranscribeOptions
from edge_asr.runtime.engines.torch_engine import TorchEngine
from edge_asr.runtime.tokenizer import WhisperTokenizer
from edge_asr.runtime.windows import WindowPolicy


class StudentEvaluator:
    """Named sets of clips, read once; ``evaluate`` transcribes them all with a model and its window policy."""

    def __init__(self, sets: dict[str, Sequence[Clip]], tokenizer: WhisperTokenizer, suppress_tokens: tuple[int, ...],
                 n_mels: int = 80):
        self.clip_sets = ClipSets(sets, n_mels)
        self.sets = self.clip_sets.sets
        self.tokenizer, self.suppress_tokens = tokenizer, suppress_tokens

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, window: WindowPolicy, encoder_context: str | None = None
                 ) -> dict[str, SetResult]:
        training = model.training
        options = TranscribeOptions(suppress_tokens=self.suppress_tokens, window_policy=window,
                                    encoder_context=encoder_context)
        results = self.clip_sets.evaluate(TorchEngine(model), self.tokenizer, options)
        model.train(training)
        return results
