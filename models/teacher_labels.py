"""The teacher's own result on each training example, as the runtime would decode it, for a student to copy.

For each example the teacher reads the window the runtime gives stock Whisper (the audio, then zeros to
30 s), and we keep:
- its **tokens**: greedy decoding with the runtime's own rules (runtime/decoding/decode.py), with
  timestamps for most examples (offline windows and streaming finals decode with them) and without for
  the rest (streaming partials), some prompted with a previous sentence as long-form windows are. On
  non-speech these are whatever the teacher writes there, usually nothing;
- its **top-k logits** at every position from <|startoftranscript|> on, teacher-forced on those tokens.
  The first position carries the no-speech probability the runtime skips silent windows by, so
  <|nospeech|> is always among its k;
- its **encoder output** on the audio's frames, which the student's encoder learns to reproduce
  without the padding (the frames after the audio are the student's to shape: its decoder must read
  in a second of margin what the teacher read in the rest of 30 s).

An example whose decoding never ended (a loop) is left out: there is nothing sound to copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from edge_asr.models.distill_data import Example
from edge_asr.models.whisper_torch import WhisperModel
from edge_asr.runtime.decoding.decode import decode_window, initial_tokens
from edge_asr.runtime.decoding.options import DecodingOptions
from edge_asr.runtime.decoding.repetition import token_cap
from edge_asr.runtime.engines.torch_engine import TorchAudioContext, TorchEngine
from edge_asr.runtime.mel import N_FRAMES
from edge_asr.runtime.tokenizer import WhisperTokenizer
from edge_asr.runtime.mel import FRAMES_PER_SECOND

TIMESTAMP_SHARE = 0.6  # of the examples, decoded with timestamps
PROMPT_SHARE = 0.3  # of the examples, prompted with the text of another (as a long-form window is)
TEACHER_BATCH = 8
MAX_TOKENS_PER_SECOND = 10.0  # the runtime's token-rate cap (TranscribeOptions.max_tokens_per_second)


@dataclass(frozen=True)
class LabelPlan:
    """How one example is decoded: with timestamps or not, and the previous text it is prompted with."""

    timestamps: bool
    prompt: str


def label_plans(texts: Sequence[str], seed: int) -> list[LabelPlan]:
    """A plan per example (``texts`` are the corpus texts, of which prompts are drawn), a pure function of the seed."""
    rng = np.random.default_rng([seed, 11])
    plans = []
    for _ in texts:
        timestamps = bool(rng.random() < TIMESTAMP_SHARE)
        prompt = str(texts[int(rng.integers(len(texts)))]) if rng.random() < PROMPT_SHARE else ""
        plans.append(LabelPlan(timestamps, prompt))
    return plans


def teacher_labelled(examples: Sequence[Example], plans: Sequence[LabelPlan], teacher: WhisperModel,
                     tokenizer: WhisperTokenizer, k: int, suppress_tokens: tuple[int, ...]) -> list[Example | None]:
    """``examples`` (features only) with the teacher's tokens, top-k and encoder output; None where it looped."""
    engine = TorchEngine(teacher)
    out: list[Example | None] = [None] * len(examples)
    for timestamps in (True, False):
        members = [i for i, plan in enumerate(plans) if plan.timestamps == timestamps]
        for first in range(0, len(members), TEACHER_BATCH):
            batch = members[first : first + TEACHER_BATCH]
            labelled = _label_batch(engine, tokenizer, [examples[i] for i in batch], [plans[i] for i in batch], k,
                                    DecodingOptions(without_timestamps=not timestamps, suppress_tokens=suppress_tokens))
            for i, example in zip(batch, labelled, strict=True):
                out[i] = example
    return out


@torch.inference_mode()
def _label_batch(engine: TorchEngine, tokenizer: WhisperTokenizer, examples: Sequence[Example],
                 plans: Sequence[LabelPlan], k: int, options: DecodingOptions) -> list[Example | None]:
    model = engine.model
    windows = np.stack([e.window(N_FRAMES, pad=0.0) for e in examples])  # what the runtime gives stock Whisper
    encoded = model.encoder(torch.from_numpy(windows))
    prompts = [tokenizer.encode(" " + plan.prompt.strip()) if plan.prompt else [] for plan in plans]
    longest = max(e.audio_frames for e in examples) / FRAMES_PER_SECOND
    cap = token_cap(longest, MAX_TOKENS_PER_SECOND) or model.dims.n_text_ctx // 2
    context = engine.context(encoded)
    results = decode_window(engine, tokenizer, context, replace(options, sample_len=cap), prompts=prompts)
    sequences = [initial_tokens(tokenizer, options, "en", prompt, model.dims.n_text_ctx) + r.tokens + [tokenizer.eot]
                 for prompt, r in zip(prompts, results, strict=True)]
    starts = [sequence.index(tokenizer.sot) for sequence in sequences]
    tops = _top_k(model, context, sequences, starts, k, tokenizer.no_speech)
    labelled = []
    for example, result, sequence, start, top, row in zip(examples, results, sequences, starts, tops, encoded,
                                                          strict=True):
        own_cap = token_cap(example.audio_frames / FRAMES_PER_SECOND, MAX_TOKENS_PER_SECOND)
        if not result.finished or len(result.tokens) > own_cap:  # looped, within the batch's longer cap too
            labelled.append(None)
            continue
        frames = math.ceil(example.audio_frames / 2)
        labelled.append(Example(example.mel, example.audio_frames, tuple(sequence), start + 1, top,
                                row[:frames].numpy().astype(np.float16)))
    return labelled


def _top_k(model: WhisperModel, context: TorchAudioContext, sequences: list[list[int]], starts: list[int], k: int,
           forced: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sequence, the teacher's top-k logits (int32 indices, float16 logits) at positions start.. len - 2,
    with token ``forced`` (<|nospeech|>) among the first position's k."""
    width = max(len(s) for s in sequences) - 1
    tokens = torch.zeros((len(sequences), width), dtype=torch.int64)
    for row, sequence in enumerate(sequences):
        tokens[row, : len(sequence) - 1] = torch.tensor(sequence[:-1])
    logits = model.decoder.full(tokens, cross=(context.cross_k, context.cross_v)).float()
    out = []
    for row, (sequence, start) in enumerate(zip(sequences, starts, strict=True)):
        scored = logits[row, start : len(sequence) - 1]
        values, indices = scored.topk(k, dim=-1)
        if forced not in indices[0]:
            indices[0, -1], values[0, -1] = forced, scored[0, forced]
        out.append((indices.numpy().astype(np.int32), values.numpy().astype(np.float16)))
    return out
