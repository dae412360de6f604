"""WER of a PyTorch Whisper model on clips, at 30 s padded windows or audio-length windows.

This is the held-out check of distillation and the measurement behind its target: greedy decoding
with no guards (no token-rate cap short of the loop limit, no repetition check, no fallback), so a
model that never emits end-of-text shows it as a loop rather than being rescued by the runtime.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from edge_asr.benchmarks.clips import Clip
from edge_asr.benchmarks.wer import corpus_wer
from edge_asr.models.distill_data import example_from_audio
from edge_asr.models.teacher_cache import label_tokens
from edge_asr.models.whisper_torch import WhisperModel
from edge_asr.runtime.audio import load_audio
from edge_asr.runtime.mel import LogMelFrontend
from edge_asr.runtime.tokenizer import WhisperTokenizer
from edge_asr.runtime.windows import FRAMES_PER_SECOND, WindowPolicy, encoder_frames

LOOP_TOKENS_PER_SECOND = 12  # speech runs 2-5 tokens a second; three times that and more is a loop


@dataclass(frozen=True)
class ClipResult:
    name: str
    reference: str
    text: str
    window_frames: int
    looped: bool  # hit the token limit without end-of-text
    encoder_ms: float


@dataclass(frozen=True)
class WindowEvaluation:
    wer: float
    loops: int
    encoder_ms: float  # summed over the clips
    clips: tuple[ClipResult, ...]

    def figures(self) -> dict[str, float]:
        return {"wer": self.wer, "loops": float(self.loops), "encoder_ms": self.encoder_ms}


class WindowEvaluator:
    """Clips loaded once (features of audio followed by silence); ``evaluate`` decodes them with a model."""

    def __init__(self, clips: Sequence[Clip], tokenizer: WhisperTokenizer, n_mels: int = 80):
        frontend = LogMelFrontend(n_mels)
        self.tokenizer = tokenizer
        self.clips = [c for c in clips if c.reference is not None]
        tokens, self.n_prompt = label_tokens(tokenizer, "")
        self.prompt = tokens[: self.n_prompt]
        self.examples = [example_from_audio(load_audio(c.path), (*self.prompt, tokenizer.eot), self.n_prompt, frontend)
                         for c in self.clips]

    @torch.no_grad()
    def evaluate(self, model: WhisperModel, margin_s: float | None) -> WindowEvaluation:
        """``margin_s`` None: the 30 s padded window; else the audio plus this margin."""
        model.eval()
        results = []
        for clip, example in zip(self.clips, self.examples):
            policy = WindowPolicy() if margin_s is None else WindowPolicy(needs_30s_padding=False, margin_s=margin_s)
            frames = encoder_frames(example.audio_frames, policy)
            mel = torch.from_numpy(example.window(frames))[None]
            started = time.perf_counter()
            audio = model.encoder(mel)
            encoder_ms = 1000 * (time.perf_counter() - started)
            limit = math.ceil(example.audio_frames / FRAMES_PER_SECOND * LOOP_TOKENS_PER_SECOND) + 10
            tokens, looped = self._greedy(model, audio, limit)
            results.append(ClipResult(clip.name, clip.reference, self.tokenizer.decode(tokens).strip(), frames,
                                      looped, encoder_ms))
        wer = corpus_wer([(r.reference, r.text) for r in results])
        return WindowEvaluation(wer, sum(r.looped for r in results), sum(r.encoder_ms for r in results), tuple(results))

    def _greedy(self, model: WhisperModel, audio: torch.Tensor, limit: int) -> tuple[list[int], bool]:
        """Text tokens by argmax over text and end-of-text (never timestamps or other specials)."""
        eot = self.tokenizer.eot
        sequence = list(self.prompt)
        for _ in range(limit):
            logits = model.decoder.full(torch.tensor([sequence]), audio)[0, -1, : eot + 1]
            token = int(logits.argmax())
            if token == eot:
                return sequence[self.n_prompt :], False
            sequence.append(token)
        return sequence[self.n_prompt :], True


def stock_window_report(model: WhisperModel, evaluator: WindowEvaluator, margins: Sequence[float | None]) -> list[str]:
    """Lines comparing the model at each window: WER, loops, encoder time."""
    lines = []
    for margin in margins:
        result = evaluator.evaluate(model, margin)
        window = "30 s padded" if margin is None else f"audio + {margin:g} s"
        lines.append(f"{window:>16}: WER {result.wer:.2f} %, {result.loops} of {len(result.clips)} clips loop, "
                     f"encoder {result.encoder_ms:.0f} ms in all")
        lines += [f"{'':>18}{r.name}: {r.text[:100]!r}{' [loop]' if r.looped else ''}" for r in result.clips]
    return lines
