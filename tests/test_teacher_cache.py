"""The cached teacher: top-k distillation against the dense loss, shards that resume and refuse
another corpus, and training from the cache alone."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from edge_asr.models.distill_data import collate
from edge_asr.models.distill_loss import IGNORE_INDEX, TeacherTopK, distillation_loss
from edge_asr.models.distill_train import train
from edge_asr.models.teacher_cache import LabelledAudio, cached_examples
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.mel import N_FRAMES

from test_distill import SETTINGS, tiny_model

K = 8


class LetterTokenizer:
    """A stand-in for WhisperTokenizer on TINY's 64-token vocabulary: one token per letter."""

    eot, sot, no_timestamps = 60, 61, 62

    def sot_sequence(self, language, task):
        return (self.sot,)

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 50 for c in text.strip()]


@pytest.fixture()
def corpus(tmp_path) -> list[LabelledAudio]:
    rng = np.random.default_rng(1)
    entries = []
    for i, (seconds, text) in enumerate([(1.0, "abc"), (2.2, "hello"), (0.6, "hi"), (1.5, "seven")]):
        path = tmp_path / f"{i}.wav"
        sf.write(path, rng.normal(0, 0.1, int(seconds * 16000)).astype(np.float32), 16000, subtype="PCM_16")
        entries.append(LabelledAudio(str(i), path, text))
    return entries


def test_top_k_loss_equals_the_dense_loss_when_the_teacher_lives_in_its_top_k():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 20, generator=generator)
    teacher = torch.full((2, 3, 20), -1e4)  # no mass outside each position's top K
    indices = torch.stack([torch.randperm(20, generator=generator)[:K] for _ in range(6)]).view(2, 3, K)
    teacher.scatter_(2, indices, torch.randn(2, 3, K, generator=generator))
    labels = torch.tensor([[3, 4, IGNORE_INDEX], [1, IGNORE_INDEX, IGNORE_INDEX]])
    scored = labels != IGNORE_INDEX
    top = TeacherTopK(indices[scored], teacher.gather(2, indices)[scored])
    dense = distillation_loss(student, teacher, labels, alpha=0.25, temperature=2.0)
    sparse = distillation_loss(student, top, labels, alpha=0.25, temperature=2.0)
    assert float(sparse.kl) == pytest.approx(float(dense.kl), rel=1e-5)
    assert float(sparse.total) == pytest.approx(float(dense.total), rel=1e-5)
    with pytest.raises(EdgeAsrError, match="covers 2 positions"):
        distillation_loss(student, TeacherTopK(top.indices[:2], top.logits[:2]), labels, 0.5, 2.0)


def test_cache_holds_the_teachers_top_k_and_reads_back_without_it(corpus, tmp_path):
    teacher = tiny_model(2)
    lines = []
    made = cached_examples(corpus, tmp_path / "cache", LetterTokenizer(), teacher, K, log=lines.append)
    assert len(lines) == 1 and "4/4 examples" in lines[0]
    read = cached_examples(corpus, tmp_path / "cache", LetterTokenizer(), None, K)  # no teacher: from disk alone
    batch = collate(read, margin_s=None)
    with torch.no_grad():
        logits = teacher.logits(batch.student_mel, batch.tokens)[batch.labels != IGNORE_INDEX]
    values, indices = logits.topk(K, dim=-1)
    assert torch.equal(batch.teacher_top.indices, indices)
    assert torch.allclose(batch.teacher_top.logits, values, atol=2e-2)  # stored as float16
    for a, b in zip(made, read):
        assert a.tokens == b.tokens and np.array_equal(a.mel, b.mel)
    # Each example's share, against the teacher reading that example alone: rows are split at the right places.
    for example in read:
        with torch.no_grad():
            alone = teacher.logits(torch.from_numpy(example.window(N_FRAMES, pad=0.0))[None],
                                   torch.tensor([example.tokens[:-1]]))[0, example.n_prompt - 1 :]
        assert np.array_equal(example.teacher_top[0], alone.topk(K, dim=-1).indices.numpy())
    assert read[1].tokens == (LetterTokenizer.sot, LetterTokenizer.no_timestamps, *LetterTokenizer().encode("hello"),
                              LetterTokenizer.eot)


def test_cache_resumes_at_a_missing_shard_and_refuses_another_corpus(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr("edge_asr.models.teacher_cache.SHARD_SIZE", 2)
    directory = tmp_path / "cache"
    cached_examples(corpus, directory, LetterTokenizer(), tiny_model(2), K, log=lambda line: None)
    (directory / "shard-00001.npz").unlink()
    lines = []
    cached_examples(corpus, directory, LetterTokenizer(), tiny_model(2), K, log=lines.append)
    assert len(lines) == 1 and "4/4" in lines[0]  # only the second shard was computed again
    with pytest.raises(EdgeAsrError, match="another set of examples"):
        cached_examples(corpus[:3], directory, LetterTokenizer(), tiny_model(2), K)
    with pytest.raises(EdgeAsrError, match="needs the teacher"):
        cached_examples(corpus, tmp_path / "other", LetterTokenizer(), None, K)
    (directory / "shard-00000.npz").write_bytes(b"not a shard")
    with pytest.raises(EdgeAsrError, match="not a readable cache shard"):
        cached_examples(corpus, directory, LetterTokenizer(), None, K)


def test_training_from_the_cache_alone_lowers_the_loss(corpus, tmp_path):
    examples = cached_examples(corpus, tmp_path / "cache", LetterTokenizer(), tiny_model(2), K, log=lambda line: None)
    settings = replace(SETTINGS, steps=10, alpha=0.0)  # the teacher's share alone: only the cache teaches
    history = train(tiny_model(1), examples, settings, tmp_path / "run", log=lambda line: None)
    assert history[-1].kl < 0.7 * history[0].kl
