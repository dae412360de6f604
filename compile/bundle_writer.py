"""Compile a checkpoint into a bundle for one target: ONNX export, then the target's engine files
(onnxruntime graphs, TVM modules or TensorRT engines), the tokenizer and the manifest."""
from __future__ import annotations

import datetime
import json
import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from edge_asr.runtime.bundle import FORMAT, FORMAT_VERSION, MANIFEST, TARGETS
from edge_asr.runtime.file_stamps import sha256_of
from edge_asr.runtime.errors import EdgeAsrError, ModelSourceError
from edge_asr.runtime.tokenizer import WhisperTokenizer

if TYPE_CHECKING:
    from edge_asr.compile.tvm_tuning import TuningRequest

SPECIAL_TOKENS = ("eot", "sot", "translate", "transcribe", "sot_lm", "sot_prev", "no_speech", "no_timestamps",
                  "timestamp_begin")


# What each backend builds; the first precision is the target's default.
BACKEND_PRECISIONS = {"onnxruntime": ("int8", "fp16", "fp32"), "tvm": ("fp32",), "tensorrt": ("fp16",),
                      "torch": ("fp16", "fp32")}


def default_precision(target: str) -> str:
    return BACKEND_PRECISIONS[TARGETS[target].backend][0]


def compile_bundle(model: str, precision: str | None, out: Path, target: str = "cpu",
                   tuning: TuningRequest | None = None, database_dir: Path | None = None,
                   adapter: Path | None = None, log=lambda msg: print(msg, file=sys.stderr)) -> Path:
    """Build a bundle of ``model`` (a zoo name or a checkpoint path) for ``target`` into ``out``.

    ``adapter``, a LoRA adapter directory trained on ``model``, is merged into its weights first.
    TVM targets apply the tuned schedules in ``database_dir`` (default: OUT.tuning beside the bundle),
    after tuning into it when ``tuning`` is given. The bundle is assembled in a temporary sibling
    directory and moved into place at the end, so an interrupted compile never leaves a half-written
    bundle behind.
    """
    if target not in TARGETS:
        raise EdgeAsrError(f"target {target!r} is not one of {', '.join(TARGETS)}.")
    backend = TARGETS[target].backend
    precision = precision or default_precision(target)
    if precision not in BACKEND_PRECISIONS[backend]:
        raise EdgeAsrError(f"target {target} builds {' or '.join(BACKEND_PRECISIONS[backend])}, not {precision}.")
    if tuning is not None and backend != "tvm":
        raise EdgeAsrError(f"--tune tunes TVM modules; target {target} is built with {backend}.")
    if tuning is not None:
        tuning.check(target)
    from edge_asr.compile.onnx_export import alignment_heads, export_alignment, export_decoder, export_encoder
    from edge_asr.models.whisper_torch import from_checkpoint
    from edge_asr.models.zoo import resolve_model

    out = Path(out)
    _check_replaceable(out)
    adapter_entry = _adapter_entry(adapter) if adapter is not None else None  # a bad adapter fails before any work
    log(f"reading {model}")
    checkpoint = resolve_model(model)
    if adapter is not None:
        from edge_asr.models.lora import apply_adapter

        log(f"merging the LoRA adapter {adapter}")
        checkpoint = apply_adapter(checkpoint, adapter)
    if checkpoint.window_policy.cached_padding and backend in ("tvm", "tensorrt"):
        raise EdgeAsrError(f"{checkpoint.name} encodes its audio against a cached padding, which {backend} bundles "
                           "cannot run yet: compile it for onnxruntime (--target cpu) or --target cuda.")
    try:
        torch_model = from_checkpoint(checkpoint)
    except RuntimeError as err:  # load_state_dict: missing, unexpected or misshapen tensors
        raise ModelSourceError(f"{checkpoint.source} does not hold a complete Whisper model: "
                               f"{_first_detail(err)}.") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        work = Path(tmp)
        if backend == "torch":
            files, extra = {"weights": _torch_weights(torch_model, work / "model.pt", precision, log)}, {}
        else:
            log("exporting the encoder and the decoder to ONNX")
            graphs = {"encoder": export_encoder(torch_model, work / "encoder.fp32.onnx"),
                      "decoder": export_decoder(torch_model, work / "decoder.fp32.onnx", trim=backend == "onnxruntime")}
            files, extra = _build_engines(graphs, work, target, precision, checkpoint,
                                          database_dir or out.parent / f"{out.name}.tuning", tuning, log)
            if backend == "onnxruntime":  # word timestamps: the other backends do not run this graph yet
                dims = checkpoint.dims
                heads = alignment_heads(checkpoint.alignment_heads, dims.n_text_layer, dims.n_text_head)
                log("exporting the alignment graph (word timestamps)")
                fp32 = export_alignment(torch_model, work / "alignment.fp32.onnx", heads)
                files["alignment"] = _finish_graph(fp32, work / "alignment.onnx", precision, log)
        shutil.copyfile(checkpoint.tokenizer_json, work / "tokenizer.json")
        files["tokenizer"] = work / "tokenizer.json"
        manifest = _manifest(checkpoint, target, precision, files)
        if "alignment" in files:
            manifest["model"]["alignment_heads"] = [list(pair) for pair in heads]
        if adapter_entry is not None:
            manifest["source"]["adapter"] = adapter_entry
        shapes = extra.pop("shapes", {})
        manifest |= extra
        manifest["shapes"] |= shapes
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        staged = work / "bundle"
        staged.mkdir()
        for path in [*files.values(), work / MANIFEST]:
            path.rename(staged / path.name)
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    log(f"wrote bundle {out}")
    return out


def _first_detail(err: RuntimeError) -> str:
    """load_state_dict's first line under its heading ("Missing key(s) ..."), or its only line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[1] if len(lines) > 1 else lines[0] if lines else "its tensors do not fit").rstrip(".")


def _check_replaceable(out: Path) -> None:
    """Writing over a directory is fine only when it is empty or an earlier bundle."""
    if not out.exists():
        return
    if not out.is_dir():
        raise EdgeAsrError(f"{out} is a file; give compile an output directory.")
    if any(out.iterdir()) and not _is_bundle(out):
        raise EdgeAsrError(f"{out} already holds files that are not an edge-asr bundle; choose another directory.")


def _is_bundle(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _build_engines(graphs: dict[str, Path], work: Path, target: str, precision: str, checkpoint,
                   database_dir: Path, tuning: TuningRequest | None, log) -> tuple[dict[str, Path], dict]:
    """The engine files for ``target`` from the exported fp32 graphs, and the manifest entries they add."""
    backend = TARGETS[target].backend
    if backend == "tvm":
        from edge_asr.compile.tvm_build import build_tvm

        return build_tvm(graphs, work, target, checkpoint.dims, checkpoint.window_policy, database_dir, tuning, log)
    if backend == "tensorrt":
        from edge_asr.compile.tensorrt_build import build_tensorrt

        return build_tensorrt(graphs["encoder"], graphs["decoder"], work, target, checkpoint.dims, log)
    files = {role: _finish_graph(path, work / f"{role}.onnx", precision, log) for role, path in graphs.items()}
    # int8, the default: fp32 graphs stay plain ONNX, which other tools read (TensorRT's parser holds the exports to
    # it in the tests); fp16 ones may run under another execution provider.
    if precision == "int8":
        for role in graphs:
            files[f"{role}_weights"] = _preoptimize(files[role])
    return files, {}


def _preoptimize(path: Path) -> Path:
    """onnxruntime's portable graph rewrites (ORT_ENABLE_EXTENDED: constant folding, fusions into its contrib ops),
    done once here instead of at every load: 0.08 s of a 0.43 s load of the tiny.en-adaptive int8 bundle. They
    leave the function as it was; the engine still applies, at load, the rewrites that depend on the CPU
    (ORT_ENABLE_ALL's layouts).

    The graph keeps its tensors in a file of their own beside it (returned: ``encoder.onnx`` -> ``encoder.weights``),
    which onnxruntime reads without parsing them as protobuf: the tiny.en-adaptive int8 encoder (52 MB, 41 of them
    the cached padding's constants) made its session in 0.08-0.10 s instead of 0.15-0.21, the decoder in 0.05-0.08
    instead of 0.13-0.15."""
    import onnxruntime as ort

    from edge_asr.runtime.threads import Threads

    options = Threads().helper_options()  # a process that made an engine first has onnxruntime's shared pool only
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    optimized = path.with_name(f"{path.stem}.optimized.onnx")
    weights = path.with_name(f"{path.stem}.weights")
    options.optimized_model_filepath = str(optimized)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", weights.name)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized.replace(path)
    return weights


def _torch_weights(model, path: Path, precision: str, log) -> Path:
    """The reference model's state dict for the PyTorch engine, in the bundle's precision."""
    import torch

    log(f"writing the PyTorch weights in {precision}")
    dtype = torch.float16 if precision == "fp16" else torch.float32
    torch.save({name: tensor.to(dtype) for name, tensor in model.state_dict().items()}, path)
    return path


def _finish_graph(fp32: Path, final: Path, precision: str, log) -> Path:
    if precision == "int8":
        from edge_asr.compile.quantize import quantize_int8

        log(f"quantizing {final.stem} to int8")
        quantize_int8(fp32, final)
    elif precision == "fp16":
        from edge_asr.compile.fp16 import convert_fp16

        log(f"converting {final.stem} to fp16")
        convert_fp16(fp32, final)
    else:
        fp32.rename(final)
    return final


def _adapter_entry(directory: Path) -> dict:
    """The manifest's record of a LoRA adapter, read (and checked against its weights) from adapter.json."""
    from edge_asr.models.lora import read_adapter_info

    info = read_adapter_info(directory)
    return {"name": Path(directory).name, "sha256": info["weights_sha256"], "base_model": info["base_model"],
            "base_sha256": info["base_sha256"]}


def _manifest(checkpoint, target: str, precision: str, files: dict[str, Path]) -> dict:
    dims = checkpoint.dims
    tokenizer = WhisperTokenizer.from_file(checkpoint.tokenizer_json, dims.multilingual, dims.num_languages)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_by": f"edge-asr {version('edge-asr')}",
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "name": checkpoint.name,
            "dims": dims.to_dict(),
            "multilingual": dims.multilingual,
            "special_tokens": {name: getattr(tokenizer, name) for name in SPECIAL_TOKENS},
            "suppress_tokens": checkpoint.suppress_tokens,
            "languages": list(tokenizer.language_codes) if dims.multilingual else ["en"],
            **checkpoint.window_policy.to_dict(),
        },
        "backend": TARGETS[target].backend,
        "target": target,
        "precision": precision,
        "shapes": {"batch": "dynamic", "n_mels": dims.n_mels, "audio_frames_max": 2 * dims.n_audio_ctx,
                   "n_audio_ctx": dims.n_audio_ctx, "n_text_ctx": dims.n_text_ctx},
        "files": {role: {"path": path.name, "sha256": sha256_of([path])} for role, path in files.items()},
        "source": {"checkpoint": checkpoint.source, "sha256": checkpoint.source_sha256},
    }
