"""Whisper's tokenizer on the `tokenizers` library: special tokens, languages, timestamps.

Behaviour follows openai-whisper's tokenizer.py (MIT). The tokenizer.json files that ship with
CTranslate2 checkpoints end at <|notimestamps|>; the 1501 timestamp tokens (0.00 s to 30.00 s in
steps of 0.02 s) follow it in the model's vocabulary, so they are derived here, not looked up.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import tokenizers

from edge_asr.runtime.errors import EdgeAsrError

TIMESTAMP_SECONDS = 0.02
N_TIMESTAMPS = 1501

# openai-whisper's language table; the order is the order of the language tokens after <|startoftranscript|>.
LANGUAGES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian",
    "ko": "korean", "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish",
    "pl": "polish", "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish",
    "it": "italian", "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese",
    "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech",
    "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian",
    "la": "latin", "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak",
    "te": "telugu", "fa": "persian", "lv": "latvian", "bn": "bengali", "sr": "serbian",
    "az": "azerbaijani", "sl": "slovenian", "kn": "kannada", "et": "estonian", "mk": "macedonian",
    "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian", "ne": "nepali",
    "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer",
    "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan",
    "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi", "gu": "gujarati",
    "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek", "fo": "faroese",
    "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk", "mt": "maltese",
    "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala",
    "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}

# language code by name, with openai-whisper's aliases
TO_LANGUAGE_CODE = {
    **{name: code for code, name in LANGUAGES.items()},
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb",
    "pushto": "ps", "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si",
    "castilian": "es", "mandarin": "zh",
}

TASKS = ("transcribe", "translate")


def language_code(language: str) -> str:
    """The code of a language given by code or English name ("de", "German", "castilian")."""
    key = language.strip().lower()
    if key in LANGUAGES:
        return key
    if key in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[key]
    raise EdgeAsrError(f"Unknown language {language!r}: give a code such as 'en' or a name such as 'english'.")


class WhisperTokenizer:
    """Text <-> token ids for one Whisper model, with its special tokens as attributes."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, multilingual: bool, num_languages: int = 99):
        self._tokenizer = tokenizer
        self.multilingual = multilingual
        self.eot = self._special("<|endoftext|>")
        self.sot = self._special("<|startoftranscript|>")
        self.translate = self._special("<|translate|>")
        self.transcribe = self._special("<|transcribe|>")
        self.sot_lm = self._special("<|startoflm|>")
        self.sot_prev = self._special("<|startofprev|>")
        self.no_speech = self._special("<|nospeech|>", "<|nocaptions|>")
        self.no_timestamps = self._special("<|notimestamps|>")
        self.timestamp_begin = self.no_timestamps + 1
        # Language tokens lie between <|startoftranscript|> and <|translate|> in openai's order. Some
        # files name them differently (<|iw|> for Hebrew), so they are found by position.
        if self.translate != self.sot + 1 + num_languages:
            raise EdgeAsrError(
                f"The tokenizer has {self.translate - self.sot - 1} language tokens, not {num_languages}: "
                "pass the model's num_languages."
            )
        self.language_codes = tuple(LANGUAGES)[:num_languages]
        self.language_tokens = tuple(range(self.sot + 1, self.translate))

    @classmethod
    def from_file(cls, path: str | Path, multilingual: bool, num_languages: int = 99) -> "WhisperTokenizer":
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises bare Exceptions for missing or malformed files
            raise EdgeAsrError(f"Cannot read the tokenizer file {path}: {err}.") from err
        return cls(tokenizer, multilingual, num_languages)

    @property
    def n_vocab(self) -> int:
        """Size of the model's vocabulary: the file's tokens plus the derived timestamp tokens."""
        return self.timestamp_begin + N_TIMESTAMPS

    def _special(self, *names: str) -> int:
        for name in names:
            token = self._tokenizer.token_to_id(name)
            if token is not None:
                return token
        raise EdgeAsrError(f"The tokenizer file lacks the special token {names[0]}: it is not a Whisper tokenizer.")

    def language_token(self, language: str) -> int:
        code = language_code(language)
        if code not in self.language_codes:
            raise EdgeAsrError(f"This model has no language {code!r}; it knows {len(self.language_codes)} languages.")
        return self.language_tokens[self.language_codes.index(code)]

    def sot_sequence(self, language: str | None = "en", task: str = "transcribe") -> tuple[int, ...]:
        """The tokens that start a transcript: <|startoftranscript|>, then language and task on
        multilingual models. English-only models take only <|startoftranscript|>."""
        if task not in TASKS:
            raise EdgeAsrError(f"Unknown task {task!r}: use one of {', '.join(TASKS)}.")
        if not self.multilingual:
            if language is not None and language_code(language) != "en":
                raise EdgeAsrError(f"This model is English-only and cannot take language {language!r}.")
            if task == "translate":
                raise EdgeAsrError("This model is English-only and cannot translate.")
            return (self.sot,)
        task_token = self.transcribe if task == "transcribe" else self.translate
        return (self.sot, self.language_token(language or "en"), task_token)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, tokens) -> str:
        """Text of the text tokens; special and timestamp tokens are dropped."""
        return self._tokenizer.decode([int(t) for t in tokens if t < self.eot], skip_special_tokens=False)

    @cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens of speaker tags and non-speech annotations ("♪♪♪", "( SPEAKING FOREIGN LANGUAGE )",
        "[DAVID] Hey there"), suppressed so that text not actually spoken is not sampled; basic
        punctuation stays allowed. Computed exactly as openai-whisper does."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        # These symbols may take several tokens; their first token is safe to suppress, because
        # everything in U+2640..U+267F shares its first two UTF-8 bytes.
        miscellaneous = set("♩♪♫♬♭♮♯")
        # hyphens and single quotes stay allowed between words, not at the start of one
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return tuple(sorted(result))

