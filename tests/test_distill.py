"""Distillation and LoRA on tiny random-weight models: the loss by hand, student initialisation,
features shared by teacher and student, training, resuming, and adapters that merge and re-apply."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_asr.models.checkpoint import Checkpoint
from edge_asr.models.distill_data import BatchOrder, collate, example_from_audio
from edge_asr.models.distill_loss import IGNORE_INDEX, TemperatureSchedule, distillation_loss
from edge_asr.models.distill_train import TrainSettings, train
from edge_asr.models.openai_reader import read_openai
from edge_asr.models.student import evenly_spaced_layers, make_student, save_openai_checkpoint
from edge_asr.models.whisper_torch import WhisperModel
from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.errors import EdgeAsrError, ModelSourceError
from edge_asr.runtime.mel import N_FRAMES, N_SAMPLES, LogMelFrontend
from edge_asr.runtime.windows import WindowPolicy

from conftest import require

# 80 Mel bins and a 1500-position audio context as Whisper's, so real 30 s features fit; tiny elsewhere.
TINY = ModelDims(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=2, n_vocab=64,
                 n_text_ctx=16, n_text_state=32, n_text_head=2, n_text_layer=4)
PROMPT = 2


def tiny_model(seed: int) -> WhisperModel:
    torch.manual_seed(seed)
    return WhisperModel(TINY)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Models this small gain nothing from a second thread, and lose much to a busy machine's other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def examples():
    """Four clips of 0.8 to 2.5 s of noise with random token sequences of different lengths."""
    rng = np.random.default_rng(0)
    frontend = LogMelFrontend(80)
    clips = [rng.normal(0, 0.1, n).astype(np.float32) for n in (40000, 12800, 25000, 30000)]
    sequences = [rng.integers(0, TINY.n_vocab, n).tolist() for n in (9, 5, 7, 11)]
    return [example_from_audio(audio, tokens, PROMPT, frontend) for audio, tokens in zip(clips, sequences)]


# -- the loss ------------------------------------------------------------------------------------

def _softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(x / temperature) for x in row]
    return [e / sum(exps) for e in exps]


def test_loss_matches_hand_computation():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [9.0, -9.0, 0.0]]
    teacher = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0], [-9.0, 9.0, 0.0]]
    labels = [1, 2, IGNORE_INDEX]  # the third position is wildly off, and must count for nothing
    alpha, temperature = 0.3, 2.0
    ce = sum(-math.log(_softmax(s, 1.0)[y]) for s, y in zip(student[:2], labels)) / 2
    kl = sum(
        sum(p * math.log(p / q) for p, q in zip(_softmax(t, temperature), _softmax(s, temperature)))
        for s, t in zip(student[:2], teacher[:2])
    ) / 2
    loss = distillation_loss(torch.tensor([student]), torch.tensor([teacher]), torch.tensor([labels]),
                             alpha=alpha, temperature=temperature)
    assert float(loss.ce) == pytest.approx(ce, rel=1e-6)
    assert float(loss.kl) == pytest.approx(kl, rel=1e-6)
    assert float(loss.total) == pytest.approx(alpha * ce + (1 - alpha) * temperature**2 * kl, rel=1e-6)


def test_loss_extremes_of_alpha():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1, 4, IGNORE_INDEX], [0, 2, 3]])
    same = distillation_loss(logits, logits, labels, alpha=0.0, temperature=3.0)
    assert float(same.total) == pytest.approx(0.0, abs=1e-6)  # a student equal to its teacher has nothing to learn
    labels_only = distillation_loss(logits, None, labels, alpha=1.0, temperature=3.0)
    assert float(labels_only.total) == float(labels_only.ce) > 0
    with pytest.raises(EdgeAsrError, match="no teacher"):
        distillation_loss(logits, None, labels, alpha=0.5, temperature=3.0)
    with pytest.raises(EdgeAsrError, match="no labelled token"):
        distillation_loss(logits, logits, torch.full_like(labels, IGNORE_INDEX), alpha=0.5, temperature=1.0)


def test_temperature_schedule():
    cooling = TemperatureSchedule(start=4.0, end=1.0, steps=10)
    assert [cooling.at(step) for step in (0, 5, 10, 50)] == [4.0, 2.5, 1.0, 1.0]
    assert TemperatureSchedule(start=2.0).at(1000) == 2.0
    with pytest.raises(EdgeAsrError, match="positive"):
        TemperatureSchedule(start=2.0, end=0.0, steps=5).validate()


# -- the student ---------------------------------------------------------------------------------

def test_student_copies_the_kept_layers_exactly():
    teacher = tiny_model(0)
    student = make_student(teacher, decoder_layers=[0, 3])
    assert student.dims == replace(TINY, n_text_layer=2)
    theirs = teacher.state_dict()
    for name, tensor in student.state_dict().items():
        source = name.replace("decoder.blocks.1.", "decoder.blocks.3.")
        assert torch.equal(tensor, theirs[source]), name
    assert len(student.state_dict()) < len(theirs)
    with torch.no_grad():
        student.decoder.blocks[0].mlp[0].weight.add_(1.0)
    assert not torch.equal(student.decoder.blocks[0].mlp[0].weight, teacher.decoder.blocks[0].mlp[0].weight)


def test_same_size_student_is_a_copy():
    teacher = tiny_model(0)
    student = make_student(teacher)
    mel, tokens = torch.randn(1, 80, 200), torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(student.logits(mel, tokens), teacher.logits(mel, tokens))


@pytest.mark.parametrize("layers", [[], [1, 0], [0, 0], [0, 4], [-1]])
def test_student_refuses_layers_the_teacher_lacks(layers):
    with pytest.raises(EdgeAsrError, match="distinct increasing indices"):
        make_student(tiny_model(0), decoder_layers=layers)


def test_evenly_spaced_layers():
    assert evenly_spaced_layers(4, 2) == [0, 3]  # distil-whisper's first and last
    assert evenly_spaced_layers(4, 1) == [3]
    assert evenly_spaced_layers(5, 3) == [0, 2, 4]
    assert evenly_spaced_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(EdgeAsrError):
        evenly_spaced_layers(4, 5)


def test_saved_student_reads_back_as_a_checkpoint(tmp_path):
    student = make_student(tiny_model(0), decoder_layers=[0, 3])
    path = save_openai_checkpoint(student, tmp_path / "student.pt")
    checkpoint = read_openai(path, tokenizer_json=tmp_path / "tokenizer.json")
    assert checkpoint.dims == student.dims
    for name, tensor in student.state_dict().items():
        assert np.array_equal(checkpoint.tensors[name], tensor.numpy()), name


# -- features and batches ------------------------------------------------------------------------

def test_teacher_and_student_windows_are_the_features_of_padded_audio():
    """The teacher's 30 s window is the audio's features then zeros, as the runtime pads stock Whisper; the
    student's is the audio plus one second, padded with the features of silent audio as the runtime pads it."""
    rng = np.random.default_rng(0)
    frontend = LogMelFrontend(80)
    audio = rng.normal(0, 0.1, 33333).astype(np.float32)
    example = example_from_audio(audio, [1, 2, 3], PROMPT, frontend)
    batch = collate([example], margin_s=1.0, teacher_window=True)
    content = frontend(audio, padding=N_SAMPLES)[:, : 33333 // 160]
    teacher = batch.teacher_mel[0].numpy()
    assert np.array_equal(teacher[:, :208], content) and not teacher[:, 208:].any() and teacher.shape[1] == N_FRAMES
    assert batch.student_mel.shape[2] == 33333 // 160 + 100  # the audio's 208 frames and one second
    margin = frontend(audio, padding=16000)[:, : batch.student_mel.shape[2]]
    assert np.array_equal(batch.student_mel[0].numpy(), margin)
    assert collate([example], margin_s=1.0).teacher_mel is None  # only a live teacher needs its window
    with torch.no_grad():
        assert tiny_model(0).encoder(batch.student_mel).shape == (1, batch.student_mel.shape[2] // 2, 32)


def test_collate_shifts_labels_and_hides_prompt_and_padding(examples):
    batch = collate(examples[:2], margin_s=None)
    assert batch.student_mel.shape[2] == N_FRAMES
    long, short = examples[0].tokens, examples[1].tokens
    assert batch.tokens[0].tolist() == list(long[:-1])
    assert batch.labels[0].tolist() == [IGNORE_INDEX] * (PROMPT - 1) + list(long[PROMPT:])
    assert batch.labels[1].tolist() == [IGNORE_INDEX] * (PROMPT - 1) + list(short[PROMPT:]) + [IGNORE_INDEX] * 4


def test_batch_order_covers_every_example_each_epoch_groups_lengths_and_repeats():
    lengths = np.random.default_rng(0).integers(50, 3000, 450)
    order = BatchOrder(lengths, batch_size=2, seed=1)  # length-sorting pools of 50 batches: 4 and a half
    assert order.n_batches == 225
    epochs = [[order[e * order.n_batches + i] for i in range(order.n_batches)] for e in range(2)]
    for epoch in epochs:
        assert sorted(i for batch in epoch for i in batch) == list(range(450))
    assert epochs[0] != epochs[1]
    assert [BatchOrder(lengths, 2, seed=1)[i] for i in range(300)] == [order[i] for i in range(300)]
    # Batch mates have similar lengths: far closer than random pairs.
    gaps = [abs(lengths[a] - lengths[b]) for a, b in epochs[0]]
    assert np.mean(gaps) < 0.1 * np.mean(np.abs(lengths[::2] - lengths[1::2]))


# -- training ------------------------------------------------------------------------------------

SETTINGS = TrainSettings(steps=8, batch_size=2, accumulation=2, learning_rate=3e-3, warmup_steps=2, alpha=0.5,
                         temperature=TemperatureSchedule(2.0), checkpoint_every=2, log_every=4)


def test_training_lowers_the_loss(examples, tmp_path):
    student = make_student(tiny_model(1), decoder_layers=[0, 3])
    lines = []
    history = train(student, examples, SETTINGS, tmp_path, teacher=tiny_model(2), log=lines.append)
    assert [record.step for record in history] == list(range(1, 9))
    first, last = history[0], history[-1]
    assert last.loss < 0.7 * first.loss and last.kl < first.kl and last.ce < first.ce
    assert len(lines) == 2 and lines[-1].startswith("step 8/8  loss")


def test_resumed_run_continues_identically(examples, tmp_path):
    settings = replace(SETTINGS, steps=4, evaluate_every=1)
    teacher = tiny_model(2)
    whole = train(tiny_model(1), examples, settings, tmp_path / "whole", teacher, log=lambda line: None)

    def crash_at_step_3(model, step):
        if step == 3:
            raise KeyboardInterrupt
        return {"tokens": 1.0}

    with pytest.raises(KeyboardInterrupt):  # while evaluating step 3, between the checkpoints of steps 2 and 4
        train(tiny_model(1), examples, settings, tmp_path / "cut", teacher, crash_at_step_3, log=lambda line: None)
    # Step 3 itself was done: the interruption saved it rather than losing it.
    assert len(torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["history"]) == 3
    # A fresh student: everything it continues from must come out of the checkpoint.
    resumed = train(tiny_model(3), examples, settings, tmp_path / "cut", teacher, log=lambda line: None)
    assert [r.loss for r in resumed] == [r.loss for r in whole]
    assert resumed[1].evaluation == {"tokens": 1.0} and resumed[2].evaluation is None and resumed[3].evaluation is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda_under_autocast(examples, tmp_path):
    history = train(make_student(tiny_model(1), [0, 3]), examples, replace(SETTINGS, device="cuda"), tmp_path,
                    teacher=tiny_model(2), log=lambda line: None)
    assert all(math.isfinite(record.loss) for record in history)
    assert history[-1].loss < 0.7 * history[0].loss


def test_training_refuses_what_cannot_work(examples, tmp_path):
    with pytest.raises(EdgeAsrError, match="give one, cache its logits"):
        train(tiny_model(1), examples, SETTINGS, tmp_path)
    with pytest.raises(EdgeAsrError, match="alpha"):
        train(tiny_model(1), examples, replace(SETTINGS, alpha=1.5), tmp_path, tiny_model(2))
    too_long = replace(examples[0], tokens=tuple(range(TINY.n_text_ctx + 2)))
    with pytest.raises(EdgeAsrError, match="reads at most 17"):
        train(tiny_model(1), [too_long], SETTINGS, tmp_path, tiny_model(2))
    train(tiny_model(1), examples, replace(SETTINGS, steps=1), tmp_path, tiny_model(2), log=lambda line: None)
    with pytest.raises(EdgeAsrError, match="another model"):
        train(make_student(tiny_model(1), [0]), examples, replace(SETTINGS, steps=2), tmp_path, tiny_model(2))


# -- LoRA ----------------------------------------------------------------------------------------

def tiny_checkpoint(model: WhisperModel, sha256: str) -> Checkpoint:
    tensors = {name: tensor.numpy().copy() for name, tensor in model.state_dict().items()}
    return Checkpoint("tiny-random", model.dims, tensors, Path("tokenizer.json"), "test", sha256)


@pytest.fixture
def adapter():
    require("peft")
    from edge_asr.models.lora import LoraAdapter, LoraSettings

    adapter = LoraAdapter(tiny_model(0), LoraSettings(rank=4, dropout=0.0))
    # peft starts B at zero (no change to the model); random tensors make the adapter matter.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in adapter.model.parameters():
            if parameter.requires_grad:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    adapter.model.eval()
    return adapter


def _logits(model: WhisperModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    mel = torch.randn(2, 80, 300, generator=generator)
    with torch.no_grad():
        return model.logits(mel, torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]))


def test_lora_trains_only_the_attention_adapters(adapter):
    trainable = [name for name, p in adapter.model.named_parameters() if p.requires_grad]
    # Encoder: 2 layers x 4 projections; decoder: 4 layers x 8 (self and cross); an A and a B each.
    assert len(trainable) == 2 * (2 * 4 + 4 * 8)
    assert all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert any(".cross_attn.out." in name for name in trainable)


def test_lora_fine_tuning_on_labels_changes_the_adapter_alone(examples, tmp_path):
    require("peft")
    from edge_asr.models.lora import LoraAdapter, LoraSettings

    adapter = LoraAdapter(tiny_model(0), LoraSettings(rank=4))
    frozen = {name: t.clone() for name, t in adapter.model.state_dict().items() if "lora_" not in name}
    settings = replace(SETTINGS, steps=4, alpha=1.0, learning_rate=1e-2)  # labels alone: no teacher
    history = train(adapter.model, examples, settings, tmp_path, log=lambda line: None)
    assert history[-1].ce < 0.9 * history[0].ce and history[-1].kl == 0
    state = adapter.model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in frozen.items())
    assert not all(torch.count_nonzero(t) == 0 for name, t in adapter.tensors().items() if ".lora_B." in name)


def test_merged_lora_equals_the_adapter_forward(adapter):
    with_adapter = _logits(adapter.model)
    assert not torch.allclose(with_adapter, _logits(tiny_model(0)), atol=1e-3)  # the adapter changes outputs
    merged = adapter.merge()
    assert [type(m) for m in merged.modules()] == [type(m) for m in tiny_model(0).modules()]  # plain layers again
    assert merged.state_dict().keys() == tiny_model(0).state_dict().keys()
    assert torch.allclose(_logits(merged), with_adapter, atol=1e-4)


def test_saved_adapter_holds_the_lora_tensors_alone_and_reapplies_to_its_base(adapter, tmp_path):
    from safetensors.torch import load_file

    from edge_asr.models.lora import ADAPTER_WEIGHTS, apply_adapter

    base = tiny_checkpoint(tiny_model(0), sha256="a" * 64)
    directory = adapter.save(tmp_path / "cards", base)
    saved = load_file(directory / ADAPTER_WEIGHTS)
    trainable = {name for name, p in adapter.model.named_parameters() if p.requires_grad}
    assert len(saved) == len(trainable) and all(".lora_A." in name or ".lora_B." in name for name in saved)
    applied = apply_adapter(base, directory)
    assert applied.name == "tiny-random+cards" and applied.source_sha256 not in (base.source_sha256, "a" * 64)
    assert set(applied.tensors) == set(base.tensors)
    model = WhisperModel(applied.dims)
    model.load_state_dict({name: torch.from_numpy(t) for name, t in applied.tensors.items()})
    assert torch.allclose(_logits(model), _logits(adapter.model), atol=1e-4)
    assert applied.window_policy == WindowPolicy()  # trained on 30 s windows: the base's policy


def test_length_adaptive_adapter_gives_the_merged_model_its_window_policy(adapter, tmp_path):
    from edge_asr.models.lora import apply_adapter

    base = tiny_checkpoint(tiny_model(0), sha256="a" * 64)
    window = WindowPolicy(needs_30s_padding=False, margin_s=0.5)
    assert apply_adapter(base, adapter.save(tmp_path / "adaptive", base, window)).window_policy == window
    # A damaged window entry is refused when the adapter is read, before compile does any work.
    from edge_asr.models.lora import ADAPTER_INFO, read_adapter_info

    info_path = tmp_path / "adaptive" / ADAPTER_INFO
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps(info | {"window": {"needs_30s_padding": False, "window_margin_s": 99}}))
    with pytest.raises(EdgeAsrError, match="the window margin must be 0 to 30 seconds"):
        read_adapter_info(tmp_path / "adaptive")


def test_tiny_en_sized_adapter_is_about_a_megabyte(tmp_path):
    require("peft")
    from edge_asr.models.lora import ADAPTER_WEIGHTS, LoraAdapter

    tiny_en = ModelDims(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)
    model = WhisperModel(tiny_en)
    directory = LoraAdapter(model).save(tmp_path / "adapter", tiny_checkpoint(model, sha256="a" * 64))
    # Rank 8 on 48 projections of 384 x 384: 48 * 8 * (384 + 384) float32 numbers, 1.2 MB, plus names.
    assert 1.1e6 < (directory / ADAPTER_WEIGHTS).stat().st_size < 1.3e6


def test_adapter_refuses_another_base_and_damaged_files(adapter, tmp_path):
    from edge_asr.models.lora import ADAPTER_WEIGHTS, apply_adapter

    directory = adapter.save(tmp_path / "cards", tiny_checkpoint(tiny_model(0), sha256="a" * 64))
    with pytest.raises(ModelSourceError, match="was trained on tiny-random"):
        apply_adapter(tiny_checkpoint(tiny_model(0), sha256="b" * 64), directory)
    (directory / ADAPTER_WEIGHTS).write_bytes(b"not tensors")
    with pytest.raises(ModelSourceError, match="does not match the sha256"):
        apply_adapter(tiny_checkpoint(tiny_model(0), sha256="a" * 64), directory)
    with pytest.raises(ModelSourceError, match="missing"):
        apply_adapter(tiny_checkpoint(tiny_model(0), sha256="a" * 64), tmp_path / "nothing")


def test_frozen_decoder_stays_the_teachers_while_the_encoder_learns(examples, tmp_path):
    from edge_asr.models.student import freeze

    teacher = tiny_model(2)
    student = make_student(teacher)
    assert freeze(student, None) == "decoder"  # the default for a student that keeps the whole decoder
    assert freeze(make_student(teacher, [0, 3]), None, decoder_layers=[0, 3]) == "none"
    train(student, examples, replace(SETTINGS, steps=2), tmp_path, teacher, log=lambda line: None)
    before, after = teacher.state_dict(), student.state_dict()
    assert all(torch.equal(after[name], before[name]) for name in after if name.startswith("decoder."))
    assert not all(torch.equal(after[name], before[name]) for name in after if name.startswith("encoder."))
    # Resuming that run with the decoder trained too would need optimizer state it never had.
    with pytest.raises(EdgeAsrError, match="other parameters"):
        train(make_student(teacher), examples, replace(SETTINGS, steps=3), tmp_path, teacher, log=lambda line: None)
    with pytest.raises(EdgeAsrError, match="none, encoder or decoder"):
        freeze(make_student(teacher), "both")


def test_train_commands_parse_several_corpora_and_default_to_the_measured_recipe():
    import argparse

    from edge_asr.models.distill_command import add_train_parsers

    parser = argparse.ArgumentParser()
    add_train_parsers(parser.add_subparsers(dest="command"))
    finetune = parser.parse_args(["finetune", "--corpus", "cards", "general", "-o", "run", "--margin", "1"])
    assert finetune.corpus == [Path("cards"), Path("general")] and finetune.margin == 1.0
    distill = parser.parse_args(["distill", "--corpus", "general", "-o", "run"])
    assert (distill.steps, distill.lr, distill.freeze, distill.margin) == (600, 1e-5, None, 1.0)
    assert (distill.alpha, distill.encoder_weight, distill.eval_corpus, distill.silence_logprob) == (0.0, 1.0, [], -0.8)
    with pytest.raises(SystemExit):
        parser.parse_args(["distill", "--corpus", "general", "-o", "run", "--freeze", "both"])
