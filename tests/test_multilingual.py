"""A multilingual model (Whisper base) detects the language and transcribes in it."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import run_cli
from edge_asr.models.wer import normalise
from edge_asr.models.clips import JFK_TEXT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def german_wav(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng (apt-get install espeak-ng) to synthesise German speech")
    path = tmp_path_factory.mktemp("speech") / "de.wav"
    text = "Guten Morgen. Heute ist das Wetter sehr schön, und wir gehen in den Park spazieren."
    subprocess.run(["espeak-ng", "-v", "de", "-w", str(path), text], check=True)
    return path


def test_language_is_detected_per_file(base_bundle, jfk_wav, german_wav):
    out = run_cli("transcribe", "--bundle", base_bundle, "--format", "json", "--no-progress", jfk_wav, german_wav)
    assert out.returncode == 0, out.stderr
    english, german = (json.loads(line) for line in out.stdout.splitlines())
    assert english["language"] == "en"
    assert normalise(english["text"]) == normalise(JFK_TEXT)
    assert german["language"] == "de"
    assert "guten morgen" in german["text"].lower()


def test_language_option_forces_the_language(base_bundle, german_wav):
    """Forced to English, the model writes English for German speech (it heard "Guten Morgen" above)."""
    out = run_cli("transcribe", "--bundle", base_bundle, "--format", "json", "--language", "en", german_wav)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["language"] == "en"
    assert "good morning" in result["text"].lower() and "guten" not in result["text"].lower()


def test_unknown_language_is_one_sentence(base_bundle, german_wav):
    out = run_cli("transcribe", "--bundle", base_bundle, "--language", "klingon", german_wav)
    assert out.returncode == 1
    assert "klingon" in out.stderr and "Traceback" not in out.stderr
