"""The LoRA adapter the repository ships (models/adapters/tiny.en-cards, trained on synthetic speech alone
with `edge-asr finetune`), merged into tiny.en at compile time, measured on the real card clips of
Debian pocketsphinx-testdata that Whisper mishears ("clubs" as "clothes" or "close")."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge_asr.models.clips import CARDS, sphinx_clips

from conftest import compiled_bundle, require, run_cli

ADAPTER = Path(__file__).resolve().parent.parent / "models" / "adapters" / "tiny.en-cards"


def _card_wer(bundle: Path) -> float:
    from edge_asr.models.wer import corpus_wer

    clips = sphinx_clips(CARDS)
    done = run_cli("transcribe", "--bundle", bundle, "--no-progress", *(clip.path for clip in clips))
    assert done.returncode == 0, done.stderr
    texts = done.stdout.strip().splitlines()
    assert len(texts) == len(clips)
    return corpus_wer([(clip.reference, text) for clip, text in zip(clips, texts)])


@pytest.mark.slow
def test_shipped_card_adapter_lowers_wer_on_the_real_card_clips(tmp_path_factory, tiny_bundle):
    require("peft", "jiwer", "whisper_normalizer")
    if not sphinx_clips(CARDS):
        pytest.skip("needs the card clips: apt-get install pocketsphinx-testdata")
    tuned = compiled_bundle(tmp_path_factory, "cards", "--model", "tiny.en", "--adapter", ADAPTER)
    before, after = _card_wer(tiny_bundle), _card_wer(tuned)
    assert before >= 15.0  # tiny.en int8 hears "clubs" wrong in at least two of the five clips
    assert after <= 5.0 < before
